"""Saliency maps of a fixed sample through captum: Grad-CAM of a convolution and input gradients.

:func:`attribute` runs one forward and one backward pass of the model on the sample, with gradients with
respect to the input (and the chosen layer's output) only: ``torch.autograd.grad``, so no parameter's
``.grad`` changes, and the parameters' ``requires_grad`` and every module's train/eval flag are as they were
afterwards. Maps come back on the host, one per example, at the input's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from lightning_viz.core import targets
from lightning_viz.core.hooks import eager, modes_kept
from lightning_viz.core.model_input import ModelInput

Method = Literal["gradcam", "input_gradient"]


def missing() -> str | None:
    """What saliency needs and is not installed, as one phrase, or ``None``."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        return "captum is not installed (pip install 'lightning-viz[saliency]')"
    return None


@dataclass
class Maps:
    """Saliency of each example for one class.

    Attributes:
        maps: ``[N, H, W]`` (image inputs) or ``[N, F]`` (flat inputs), float32, on the host: Grad-CAM
            (ReLU of the gradient-weighted channel sum, bilinearly upsampled to the input) or the largest
            absolute input gradient over channels.
        output: ``[N, C]`` the model's prediction for the sample (float32, host; one logit or value: C 1).
        target: ``[N]`` the class explained for each example (one logit: 0 or 1; one value: 0).
    """

    maps: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor


def _with_primary(inp: ModelInput, x: torch.Tensor) -> ModelInput:
    first = [True]

    def swap(t: torch.Tensor) -> torch.Tensor:
        if first[0]:
            first[0] = False
            return x
        return t

    return inp.apply(swap)


def attribute(
    model: nn.Module,
    inp: ModelInput,
    method: Method,
    layer: nn.Module | None,
    explain: Literal["predicted", "true"],
    y: torch.Tensor | None,
    forward_context: Any,
    *,
    value: bool = False,
) -> Maps:
    """Saliency of the sample ``inp`` (on the model's device) by ``method``; ``layer`` is the convolution of
    Grad-CAM. ``explain`` picks the class: the model's prediction, or the target ``y``. The model runs in
    eval mode, gradients on, compiled code eagerly (so captum's hooks fire). One logit (binary) is scored as
    two classes, ``(-logit, logit)``, so that a prediction of class 0 is explained by the evidence for class
    0; with ``value`` (regression) one output is explained as it is."""
    from captum.attr import LayerGradCam, Saliency

    x0 = inp.primary()
    assert x0 is not None
    x = x0.detach().clone().float().requires_grad_(True)

    def forward(t: torch.Tensor) -> torch.Tensor:
        with forward_context():
            p = targets.prediction_of(_with_primary(inp, t.to(x0.dtype))(model))
        if p is None:
            raise RuntimeError("the model's output holds no float tensor to explain")
        if p.ndim > 2:
            raise RuntimeError(
                f"the model's output is {tuple(p.shape)}; saliency explains [N, C] or [N] outputs"
            )
        return p.float().reshape(len(p), -1)

    def scores(t: torch.Tensor) -> torch.Tensor:
        p = forward(t)
        return torch.cat([-p, p], 1) if p.shape[1] == 1 and not value else p

    with torch.enable_grad(), eager(), modes_kept(model, eval_mode=True):
        with torch.no_grad():
            raw = forward(x)
        out = torch.cat([-raw, raw], 1) if raw.shape[1] == 1 and not value else raw
        if out.shape[1] == 1:  # one value: it is what is explained
            target = torch.zeros(len(out), dtype=torch.long, device=out.device)
        elif explain == "true" and y is not None:
            target = y.to(out.device).long().reshape(len(out), -1)[:, 0]
        else:
            target = out.argmax(1)
        if method == "gradcam":
            assert layer is not None
            cam = LayerGradCam(scores, layer).attribute(x, target=target, relu_attributions=True)
            maps = F.interpolate(cam.detach().float(), size=tuple(x.shape[2:]), mode="bilinear")[:, 0]
        else:
            grads = Saliency(scores).attribute(x, target=target, abs=True).detach().float()
            maps = grads.amax(1) if grads.ndim == 4 else grads.reshape(len(grads), -1)
    return Maps(maps.cpu(), raw.detach().cpu(), target.cpu())

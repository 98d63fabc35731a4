"""SaliencyCallback: where in each input of a fixed sample the model looks (Grad-CAM, input gradients)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.nn import functional as F

from lightning_viz.core import saliency
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int, step_stem
from lightning_viz.core.errors import check_names
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.layer_names import default_layers, named_layers, one_layer
from lightning_viz.core.model_input import ModelInput
from lightning_viz.core.records import Reduced, Sums
from lightning_viz.core.sample_batch import FixedSample, on_model, shrunk_images
from lightning_viz.core.schedule import Schedule
from lightning_viz.core.warn import VizWarning, short_error, warn_once
from lightning_viz.render.saliency import render_saliency

METHODS = ("auto", "gradcam", "input_gradient")

DEFAULT_SAMPLE = 8  # examples in the fixed sample by default (fewer when the data has fewer)


class SaliencyCallback(VizCallback):
    """Where the model looks: a saliency map over each input of a fixed sample, every N epochs, beside the
    input, for the class the model predicts (or the true one).

    ``method: auto`` takes Grad-CAM (the ReLU of a convolution's channels weighted by the mean gradient of
    the class score over each channel, upsampled to the input) of ``layer`` or, by default, the model's last
    2-D convolution; a model without one gets input-gradient saliency (the largest absolute gradient of the
    class score over the input's channels). Computed with captum (``pip install 'lightning-viz[saliency]'``)
    on logging epochs only, in eval mode, on every rank alike (a sharded model needs all of them; rank 0's
    maps are drawn): gradients with respect to the input and the layer only (``torch.autograd.grad``), so no
    parameter's ``.grad`` changes and ``requires_grad`` and train mode are as they were. Image inputs
    (``[N, C, H, W]``) are drawn as tiles with the map over them, each map scaled to its own maximum; flat
    inputs (``[N, F]``) as a heatmap, an example per row and a feature per column. Figures are ``saliency_stepNNNNNN.png`` with a
    ``.json`` of the data.

    Args:
        every_n_epochs: draw at the end of every N-th training epoch.
        method: ``"auto"``, ``"gradcam"`` or ``"input_gradient"``.
        layer: the convolution Grad-CAM looks at (a module name; default: the last ``Conv2d``).
        explain: ``"predicted"`` (the model's class) or ``"true"`` (the target's class).
        sample_size: examples in the fixed sample (default: 8, or the whole dataset when it is smaller).
        sample_from: ``"val"`` (the first validation dataloader; the training data when there is none) or
            ``"train"``.
        class_names: names of the classes, by index (default: the indices).
        max_image_px: tiles are shrunk to at most this many pixels a side.
        output_dir: where files go; default ``<trainer.log_dir>/viz/saliency``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "saliency"
    captures: ClassVar[str] = "saliency maps"
    section_title, report_rank = "Saliency", 3
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "saliency",
            "Where the model looks in the fixed sample",
            "lightning_viz.render.saliency:render_saliency",
            "saliency_step*.json",
        ),
    )

    def __init__(
        self,
        every_n_epochs: int = 1,
        method: Literal["auto", "gradcam", "input_gradient"] = "auto",
        layer: str | None = None,
        explain: Literal["predicted", "true"] = "predicted",
        sample_size: int | None = None,
        sample_from: Literal["val", "train"] = "val",
        class_names: list[str] | None = None,
        max_image_px: int = 64,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("every_n_epochs", every_n_epochs, 1)
        check_choice("method", method, METHODS)
        check_choice("explain", explain, ("predicted", "true"))
        check_int("sample_size", sample_size, 1, optional=True)
        check_choice("sample_from", sample_from, ("val", "train"))
        check_int("max_image_px", max_image_px, 4)
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"`layer` must be a module name such as 'features.conv2'; got {layer!r}")
        if layer is not None and method == "input_gradient":
            raise ValueError(f"`layer` is {layer!r} but `method` is 'input_gradient', which uses no layer")
        self.every_n_epochs = every_n_epochs
        self.method = method
        self.layer = layer
        self.explain = explain
        self.sample_size = sample_size
        self.sample_from = sample_from
        self.class_names = check_names("class_names", class_names)
        self.max_image_px = max_image_px
        self.schedule = Schedule(None, every_n_epochs)
        self._sample = FixedSample(type(self).__name__, sample_from, sample_size, DEFAULT_SAMPLE)
        self.layer_name: str | None = None
        self.method_used: str | None = None
        self._module: nn.Module | None = None
        self._resolved = False

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "method": self.method, "layer": self.layer}

    # ------------------------------------------------------------------ setup
    def check_model(self, pl_module: LightningModule) -> None:
        if self.layer is not None and not is_overridden("configure_model", pl_module):
            one_layer(named_layers(pl_module), self.layer, argument="layer")

    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._resolved = False
        if not is_overridden("configure_model", pl_module):
            self._resolve(pl_module)
        self._sample.setup(trainer)
        lacking = saliency.missing()
        if lacking:
            rank_zero_warn(f"SaliencyCallback: {lacking}; no saliency is drawn.", category=VizWarning)

    def _resolve(self, model: nn.Module) -> None:
        self._resolved = True
        named = named_layers(model)
        self.layer_name, self.method_used = None, "input_gradient"
        if self.method == "input_gradient":
            return
        if self.layer is not None:
            self.layer_name, self.method_used = one_layer(named, self.layer, argument="layer"), "gradcam"
            return
        convs = [n for n in default_layers(named)[0] if isinstance(named[n], nn.Conv2d)]
        if convs:
            self.layer_name, self.method_used = convs[-1], "gradcam"
        elif self.method == "gradcam":
            raise ValueError(
                "`method` is 'gradcam' but the model has no Conv2d layer; set `layer` to a module with a "
                "[N, C, H, W] output, or `method` to 'input_gradient'"
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._resolved:
            self._resolve(pl_module)
        self._module = named_layers(pl_module).get(self.layer_name) if self.layer_name else None

    # ------------------------------------------------------------------ capture (every rank)
    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Sums | None:
        if saliency.missing():  # the same on every rank
            return None
        step = trainer.global_step
        values: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"step": step, "epoch": trainer.current_epoch}
        failed = False
        try:
            pair = self._sample.get(pl_module)
            x = pair[0].primary() if pair is not None else None
            if pair is not None and (x is None or not x.is_floating_point() or x.ndim < 2):
                warn_once(
                    (type(self).__name__, "input"),
                    f"SaliencyCallback: the model's input ({pair[0].source}) is not a float tensor of "
                    f"[N, ...] (got {None if x is None else (tuple(x.shape), x.dtype)}); saliency needs "
                    "gradients with respect to it, so nothing is drawn.",
                )
            elif pair is not None:
                inp, y = pair
                got = saliency.attribute(
                    pl_module,
                    on_model(trainer, pl_module, inp),
                    self.method_used or "input_gradient",
                    self._module,
                    self.explain,
                    y,
                    trainer.precision_plugin.forward_context,
                    value=y is not None and y.is_floating_point(),
                )
                values.update(self._values(got, inp, y))
        except Exception as err:  # every rank still takes part in the collectives
            failed = True
            warn_once(
                (type(self).__name__, "capture", type(err).__name__),
                f"SaliencyCallback: the saliency pass failed at step {step}: {short_error(err)}. Training continues; "
                "this warning is shown once.",
            )
            values = {}
        return Sums(step, values, dict.fromkeys(values, "rank0"), failed=failed, meta=meta)

    def _values(self, got: saliency.Maps, inp: ModelInput, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out, n = got.output, len(got.output)
        values = {"maps": got.maps, "target": got.target.float()}
        if y is not None and y.is_floating_point():  # regression: the value predicted against the target
            values["pred"], values["conf"] = out[:, 0], torch.full((n,), float("nan"))
            values["true"] = y.float().reshape(n, -1)[:, 0]
        elif out.shape[1] > 1:
            probs = out.softmax(1)
            values["conf"], values["pred"] = (t.float() for t in probs.max(1))
        else:
            prob = out[:, 0].sigmoid()
            values["pred"] = (prob > 0.5).float()
            values["conf"] = torch.where(prob > 0.5, prob, 1 - prob)
        if y is not None and not y.is_floating_point() and y.numel() == n:
            values["true"] = y.reshape(n).float()
        images = shrunk_images(inp.primary(), self.max_image_px)
        if images is not None and got.maps.ndim == 3:
            values["images"] = images
            values["maps"] = F.adaptive_avg_pool2d(got.maps[:, None], tuple(images.shape[2:]))[:, 0]
        return values

    # ------------------------------------------------------------------ render (rank 0)
    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        values, meta = reduced.values, reduced.meta
        if "maps" not in values:
            return
        maps = values["maps"].double()
        peak = maps.flatten(1).amax(1).clamp_min(1e-30).reshape(-1, *([1] * (maps.ndim - 1)))
        data = {
            "step": meta["step"],
            "epoch": meta["epoch"],
            "method": self.method_used,
            "layer": self.layer_name,
            "explain": "value" if values["conf"].isnan().all() else self.explain,
            "maps": (maps / peak).tolist(),
            "peak": peak.flatten().tolist(),
            "images": values["images"].tolist() if "images" in values else None,
            "target": values["target"].long().tolist(),
            "kind": "value" if values["conf"].isnan().all() else "class",
            "pred": values["pred"].tolist(),
            "conf": [None if c != c else c for c in values["conf"].tolist()],
            "true": values["true"].tolist() if "true" in values else None,
            "class_names": self.class_names,
        }
        self.emit_figure(
            trainer,
            render_saliency,
            data,
            tag=f"viz/{self.viz_name}/saliency",
            stem=step_stem("saliency", meta["step"]),
            step=meta["step"],
        )

"""What the layers pass on during the training forward of an examined step, reduced to sums on their device.

:class:`ForwardSums` hooks the watched modules (weight layers and activation modules) through
:class:`~lightning_viz.core.passed.PassedTracker` for one forward pass, and keeps, per weight layer, the
sums of :func:`~lightning_viz.core.activation_stats.output_sums` over the tensor it passes on after its
non-linearity (an activation module, a functional ``F.relu``, or its own output), plus three flags: taken
after a non-linearity, bounds known, functional op unknown. The health checks reduce these across ranks and
decide; this module only measures. It names what it measured in words (``meta``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from lightning_viz.core.activation_stats import NSUMS, first_tensor, output_sums, saturation_bounds, stat_view
from lightning_viz.core.health_checks import NORMALISERS, functional_activation
from lightning_viz.core.layer_names import named_layers
from lightning_viz.core.passed import Passed, PassedTracker, is_activation
from lightning_viz.core.tensor_origin import ops_between

CLAIMED = "\0claimed"  # an activation module measured as its weight layer's passed-on tensor
FLAGS = 3  # per hooked layer: taken after a non-linearity, bounds known, functional op unknown


class ForwardSums:
    """Sums over what each watched layer passes on, during one training forward.

    Args:
        watch: the modules to hook, by name (weight layers and activation modules).
        saturation_level: "near the bounds" of a bounded activation: ``|a - centre| >= level * half range``.
    """

    def __init__(self, watch: dict[str, nn.Module], saturation_level: float) -> None:
        self.watch, self.saturation_level = watch, saturation_level
        self.acc: dict[str, torch.Tensor] = {}  # layer -> NSUMS sums + FLAGS flags, on its device
        self.meta: dict[str, str] = {}  # layer -> the tensor measured, in words
        self.act_of: dict[str, str] = {}  # activation module -> the weight layer whose output it takes
        self.fn_of: dict[str, str] = {}  # weight layer -> the functional activation after it
        self._claim: tuple[str, int] | None = None
        self._tracker: PassedTracker | None = None

    @classmethod
    def of_model(cls, model: nn.Module, saturation_level: float) -> ForwardSums:
        """Watching every weight layer (``Conv*``, ``Linear``) and activation module of ``model``, by the
        names the user wrote."""
        watch = {
            n: m
            for n, m in named_layers(model).items()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or is_activation(m)
        }
        return cls(watch, saturation_level)

    def start(self, pl_module: LightningModule) -> None:
        """Hook the watched modules for the coming training forward (``grad_only``: never a no-grad pass
        run meanwhile, such as another callback's capture, the NaN locator or a validation)."""
        self.acc, self.meta = {}, {}
        self._tracker = PassedTracker(pl_module, self.watch, self._on_passed, grad_only=True)
        self._tracker.attach()

    def stop(self, finish: bool = True) -> None:
        """Remove the hooks (``finish``: first measure what the last hooked layer passed on)."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                if finish:
                    tracker.finish()
            finally:
                tracker.detach()
        self._claim = None

    def take(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The sums and their descriptions measured since :meth:`start`, handed over (and cleared)."""
        acc, meta, self.acc, self.meta = self.acc, self.meta, {}, {}
        return acc, meta

    def _on_passed(self, name: str, module: nn.Module, output: Any, passed: Passed) -> None:
        """One call of a watched layer: reduce the tensor it passes on to sums (on its device)."""
        t, bounds, flags = passed.tensor, None, [0.0, 0.0, 0.0]
        if not is_activation(module) and passed.source == "activation":
            kind, by = type(passed.module).__name__, passed.module_name
            if by in self.watch:  # an activation module
                self._claim, self.act_of[by] = (by, id(t)), name
                desc = f"output of {by}, {kind}"
            else:  # a functional one (F.relu in forward): the tracker names the function
                self.fn_of[name], desc = by, f"after {by}"
            bounds = saturation_bounds(passed.module)
            flags[0] = float(kind not in NORMALISERS)
        elif is_activation(module):
            if self._claim == (name, id(t)):  # measured already, as the weight layer's passed-on tensor
                self.meta.setdefault(name, CLAIMED)
                return
            desc, bounds = type(module).__name__, saturation_bounds(module)
            flags[0] = float(type(module).__name__ not in NORMALISERS)
        elif passed.source == "next_input":
            out = first_tensor(output)
            try:
                ops = (
                    ops_between(t, out)
                    if isinstance(t, torch.Tensor) and isinstance(out, torch.Tensor)
                    else None
                )
            except LookupError:  # no autograd graph to tell: trust the tracker
                ops = []
                flags[2] = 1.0
            fn = functional_activation(ops) if ops is not None else None
            if not ops and not flags[2]:  # not computed from this layer's output, or that very tensor
                t, desc = out, "output"
            elif fn is not None:
                desc, bounds = f"after F.{fn[0]}", fn[1]
                self.fn_of[name] = f"F.{fn[0]}"
                flags[0] = 1.0
            else:
                desc = f"input of {passed.module_name}, {type(passed.module).__name__}"
                flags[0] = 1.0
        else:  # its own output: nothing after it ran (the model's output), no non-linearity known
            desc = "output"
        if not isinstance(t, torch.Tensor) or not t.numel():
            return
        flags[1] = float(bounds is not None)
        vec = output_sums(stat_view(t), bounds, self.saturation_level)
        vec = torch.cat([vec, torch.tensor(flags, dtype=vec.dtype, device=vec.device)])
        if name in self.acc:
            vec[:NSUMS] += self.acc[name][:NSUMS]
            vec[NSUMS:] = torch.maximum(vec[NSUMS:], self.acc[name][NSUMS:])
        self.acc[name] = vec
        self.meta.setdefault(name, desc)

"""WeightPictureCallback: a convolution's filters as an image grid, and Linear weight matrices as heatmaps."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed, sharding
from lightning_viz.core.base import (
    VizCallback,
    WhenFull,
    check_int,
    check_patterns,
    check_scheduled,
    step_stem,
)
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import match_modules
from lightning_viz.core.records import Reduced, Sums
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import warn_once
from lightning_viz.render.weights import render_weight_pictures


def _block_means(w: torch.Tensor, cap: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``w`` ([out, in]) as means over blocks so that neither side exceeds ``cap``; the block size."""
    r, c = w.shape
    br, bc = math.ceil(r / cap), math.ceil(c / cap)
    if (br, bc) == (1, 1):
        return w, (1, 1)
    pooled = nn.functional.adaptive_avg_pool2d(w[None, None], (math.ceil(r / br), math.ceil(c / bc)))
    return pooled[0, 0], (br, bc)


class WeightPictureCallback(VizCallback):
    """Pictures of the weights themselves: the first convolution's filters as an image grid, and Linear
    weight matrices as heatmaps, every N epochs (a series: TensorBoard's step slider and the report's show
    them change over training).

    The filters of a convolution with 3 input channels are drawn in colour (RGB), with one in grey, and with
    more as their mean over the input channels (the title says which); each filter is scaled to its own
    range, so the grid shows the patterns the filters look for. A Linear weight matrix is a heatmap on one
    diverging scale around zero (red positive, blue negative; NaN/Inf in magenta); one larger than
    ``max_size`` on a side is shown as means over blocks, which the title says. Under FSDP2 the full
    weights are gathered first (every rank takes part); under FSDP1, whose parameters are flat pieces,
    nothing is drawn, with one warning. Figures are ``weights_stepNNNNNN.png`` with a ``.json`` of the data.

    Args:
        every_n_epochs: draw at the end of every N-th training epoch; ``null`` to turn off.
        every_n_steps: also draw every N optimizer steps (before the step); ``null`` (default) for none.
        filters: the convolution whose filters are drawn: a module name, ``"auto"`` (the first
            ``Conv2d`` of the model) or ``null`` (none).
        linear_layers: glob patterns over module names of the Linear layers drawn as heatmaps; default
            every ``nn.Linear`` (at most ``max_matrices``, in model order); ``[]`` for none.
        max_filters: at most this many filters in the grid (the first ones).
        max_size: the most rows and columns a heatmap shows (larger matrices: block means).
        max_matrices: at most this many heatmaps per figure.
        output_dir: where files go; default ``<trainer.log_dir>/viz/weight_picture``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "weight_picture"
    captures: ClassVar[str] = "weight pictures"
    section_title, report_rank = "Weight pictures", 3
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "weights",
            "Filters and weight matrices",
            "lightning_viz.render.weights:render_weight_pictures",
            "weights_step*.json",
        ),
    )

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: EveryNSteps = None,
        filters: str | None = "auto",
        linear_layers: list[str] | None = None,
        max_filters: int = 64,
        max_size: int = 128,
        max_matrices: int = 4,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_scheduled(every_n_steps, every_n_epochs)
        check_int("max_filters", max_filters, 1)
        check_int("max_size", max_size, 2)
        check_int("max_matrices", max_matrices, 0)
        if filters is not None and (not isinstance(filters, str) or not filters):
            raise ValueError(f'`filters` must be a module name, "auto" or null; got {filters!r}')
        check_patterns("linear_layers", linear_layers, "every Linear layer", '["classifier.*"]', empty=True)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.filters = filters
        self.linear_layers = list(linear_layers) if linear_layers is not None else None
        self.max_filters = max_filters
        self.max_size = max_size
        self.max_matrices = max_matrices
        self.schedule = Schedule(every_n_steps, every_n_epochs)
        self._conv: tuple[str, nn.Module] | None = None
        self._linears: list[tuple[str, nn.Module]] = []

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "filters": self.filters}

    # ------------------------------------------------------------------ selection
    def _select(self, pl_module: LightningModule) -> None:
        named = [(n, m) for n, m in pl_module.named_modules() if n]
        self._conv = None
        if self.filters == "auto":
            self._conv = next(((n, m) for n, m in named if isinstance(m, nn.Conv2d)), None)
        elif self.filters is not None:
            found = match_modules(
                pl_module,
                [self.filters],
                argument="filters",
                predicate=lambda _n, m: isinstance(m, nn.Conv2d),
            )
            self._conv = next(iter(found.items()))
        if self.linear_layers is None:
            linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
        elif not self.linear_layers:
            linears = []
        else:
            found = match_modules(
                pl_module,
                self.linear_layers,
                argument="linear_layers",
                predicate=lambda _n, m: isinstance(m, nn.Linear),
            )
            linears = list(found.items())
        self._linears = linears[: self.max_matrices]

    def check_model(self, pl_module: LightningModule) -> None:
        if next(pl_module.parameters(), None) is not None:
            self._select(pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._select(pl_module)  # after configure_model and strategy set-up

    # ------------------------------------------------------------------ capture (every rank)
    def capture_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any, index: int, *, by_epoch: bool
    ) -> Sums | None:
        return None if by_epoch else self._capture(trainer)

    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Sums | None:
        return self._capture(trainer)

    def _weight(self, module: nn.Module) -> torch.Tensor | None:
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor):
            return None
        if getattr(w, "_fsdp_flattened", False) or w.dim() < 2:
            warn_once(
                (type(self).__name__, "fsdp1"),
                f"{type(self).__name__}: under FSDP1 the parameters are flat pieces; no weight pictures are "
                "drawn (FSDP2, ModelParallelStrategy, is supported).",
            )
            return None
        return distributed.full_tensor(w).detach().float().cpu()  # a DTensor's shards: every rank gathers

    def _capture(self, trainer: Trainer) -> Sums | None:
        values: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"step": trainer.global_step, "epoch": trainer.current_epoch, "matrices": []}
        if self._conv is not None:
            w = self._weight(self._conv[1])
            if w is not None:
                tiles = w[: self.max_filters]
                in_ch = w.shape[1]
                if in_ch == 3:
                    tiles, channels = tiles.permute(0, 2, 3, 1), "RGB"
                elif in_ch == 1:
                    tiles, channels = tiles[:, 0], "one input channel"
                else:
                    tiles, channels = tiles.mean(1), f"mean over {in_ch} input channels"
                values["filters"] = tiles.contiguous()
                meta["filters"] = {
                    "name": sharding.clean_name(self._conv[0]),
                    "kind": type(self._conv[1]).__name__,
                    "shape": list(w.shape),
                    "channels": channels,
                }
        for i, (name, module) in enumerate(self._linears):
            w = self._weight(module)
            if w is None:
                continue
            shown, block = _block_means(w, self.max_size)
            values[f"matrix{i}"] = shown.contiguous()
            meta["matrices"].append(
                {
                    "key": f"matrix{i}",
                    "name": sharding.clean_name(name),
                    "shape": list(w.shape),
                    "block": list(block),
                }
            )
        if not values:
            return None
        return Sums(trainer.global_step, values, dict.fromkeys(values, "rank0"), meta=meta)

    # ------------------------------------------------------------------ render (rank 0)
    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        meta, values = reduced.meta, reduced.values
        data: dict[str, Any] = {"step": meta["step"], "epoch": meta["epoch"], "filters": None, "matrices": []}
        if "filters" in meta:
            data["filters"] = {**meta["filters"], "tiles": values["filters"].numpy().tolist()}
        for m in meta["matrices"]:
            entry = {k: v for k, v in m.items() if k != "key"}
            data["matrices"].append({**entry, "values": values[m["key"]].numpy().tolist()})
        self.emit_figure(
            trainer,
            render_weight_pictures,
            data,
            tag=f"viz/{self.viz_name}/weights",
            stem=step_stem("weights", meta["step"]),
            step=meta["step"],
        )

"""ActivationMapCallback: what selected layers pass on for a fixed sample batch, and how that moves in training.

Per capture (every rank): one ``no_grad`` forward of the sample batch in eval mode, run eagerly even on a
``torch.compile``d model (:func:`lightning_viz.core.hooks.eager`), with hooks that exist only during that
forward (:func:`lightning_viz.core.hooks.capture_passed`). Each hooked layer is followed to the tensor it
passes on (its activation module's output, or what the next module receives from ``F.relu`` and the like),
which is reduced on its device to the sums of :mod:`lightning_viz.core.activation_stats`, plus, for display,
a few channels of one example; the full activation is dropped as soon as the hook returns. The sums are
added over ranks in one collective, and rank zero renders the feature-map grids, the heatmaps and the
statistics over training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, default_collate

from lightning_viz.core import distributed, lightning_state, sharding
from lightning_viz.core.activation_stats import (
    NSUMS,
    STATS,
    first_tensor,
    output_sums,
    saturation_bounds,
    stat_view,
    stats_from_sums,
)
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int, step_stem
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import Passed, capture_passed, eager, is_activation, match_modules
from lightning_viz.core.model_input import ModelInput, example_of, feed_hint, model_input
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import VizWarning, rank_zero_warn, warn_once
from lightning_viz.render.activations import render_activation_stats, render_feature_maps, render_heatmaps

SampleFrom = Literal["val", "train"]
ChannelOrder = Literal["mean_activation", "first", "variance"]
ColorScale = Literal["absolute", "per_map"]
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONV1D_TYPES = (nn.Conv1d, nn.ConvTranspose1d)
STATE_KEYS = ("sample_indices", "history", "last_step")
HISTORY_STATS = (*STATS, "nonfinite")
HEATMAP_ROWS, HEATMAP_COLS = 64, 128


def clean_layer_name(name: str) -> str:
    """A module name as the user wrote the model: without the ``_orig_mod`` that ``torch.compile`` inserts
    for a compiled submodule, nor the wrapper prefixes of FSDP1 and activation checkpointing."""
    return sharding.clean_name(name)


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by clean name (:func:`clean_layer_name`), in model order; a compiled submodule's
    wrapper (``OptimizedModule``) is left out, its original module keeps the name."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and type(module).__name__ != "OptimizedModule":
            out.setdefault(clean_layer_name(name), module)
    return out


class _Named:
    """``named_modules()`` over clean names, for :func:`match_modules`."""

    def __init__(self, named: Mapping[str, nn.Module]) -> None:
        self.named = named

    def named_modules(self) -> Any:
        return iter(self.named.items())


def rank_channels(per_channel: torch.Tensor, order: str, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``k`` channels shown (rows of ``[C, ...]`` values) and their scores, by the ``channel_order`` rule.

    ``mean_activation`` / ``variance``: highest mean / population variance first, ties to the lower index;
    ``first``: channels ``0 .. k-1`` (no score).
    """
    flat = per_channel.flatten(1).float()
    if order == "first":
        return torch.arange(min(k, flat.shape[0])), None
    scores = flat.var(dim=1, correction=0) if order == "variance" else flat.mean(dim=1)
    chans = torch.sort(scores, descending=True, stable=True).indices[:k]
    return chans.cpu(), scores[chans]


def feature_record(name: str, module: nn.Module, a: torch.Tensor, i: int, k: int, order: str) -> dict:
    """Example ``i``'s top-``k`` channels of an ``N, C, H, W`` (or ``N, C, D, H, W``) output, as CPU arrays."""
    ex = a[i]
    chans, scores = rank_channels(ex, order, k)
    maps = ex[chans.to(ex.device)]
    note = ""
    if maps.ndim == 4:
        maps, note = maps[:, maps.shape[1] // 2], f"middle depth slice of {maps.shape[1]}"
    return {
        "name": name,
        "kind": type(module).__name__,
        "maps": maps.float().cpu().numpy(),
        "channels": chans.numpy(),
        "scores": np.full(len(chans), np.nan) if scores is None else scores.cpu().numpy(),
        "total_channels": int(ex.shape[0]),
        "order": order,
        "note": note,
        "nonfinite": int(np.count_nonzero(~np.isfinite(maps.float().cpu().numpy()))),
    }


def heatmap_record(name: str, module: nn.Module, a: torch.Tensor, i: int, k: int, order: str) -> dict | None:
    """A capped 2-d view of a non-image output: ``N, F`` examples x features; ``N, C, L`` of a 1-d convolution:
    example ``i``'s top-``k`` channels (``row_ticks``: their channel numbers) x positions; other ``N, T, F``:
    example ``i``'s time steps x features. ``None`` for other ranks (statistics only)."""
    ticks: list[int] | None = None
    if a.ndim == 2:
        values, rows, cols = a[:HEATMAP_ROWS], "examples", "features"
        notes = [f"{values.shape[0]} of {a.shape[0]} rows"] if values.shape[0] < a.shape[0] else []
    elif a.ndim == 3 and isinstance(module, CONV1D_TYPES):
        chans, _ = rank_channels(a[i], order, k)
        values, rows, cols, ticks = (
            a[i][chans.to(a.device)],
            f"channel (example {i})",
            "position",
            chans.tolist(),
        )
        words = {"mean_activation": "highest mean", "variance": "highest variance", "first": "first"}[order]
        notes = [f"{len(ticks)} of {a.shape[1]} channels, {words}"] if len(ticks) < a.shape[1] else []
    elif a.ndim == 3:
        values, rows, cols = a[i, :HEATMAP_ROWS], f"time steps (example {i})", "features"
        notes = [f"{values.shape[0]} of {a.shape[1]} rows"] if values.shape[0] < a.shape[1] else []
    else:
        return None  # 1-d or 6-d+ outputs: statistics only
    if values.shape[1] > HEATMAP_COLS:
        notes.append(f"first {HEATMAP_COLS} of {values.shape[1]} columns")
    shown = values[:, :HEATMAP_COLS].float().cpu().numpy()
    rec = {
        "name": name,
        "kind": type(module).__name__,
        "values": shown,
        "rows": rows,
        "cols": cols,
        "note": ", ".join(notes),
        "nonfinite": int(np.count_nonzero(~np.isfinite(shown))),
    }
    if ticks is not None:
        rec["row_ticks"] = ticks
    return rec


def input_image(x: Any, i: int) -> np.ndarray | None:
    """Example ``i`` of an image-like input (``N, C, H, W``; middle depth slice of ``N, C, D, H, W``) as
    ``[C, H, W]`` (the first channel only unless C is 1 or 3), or ``None`` when the input is no image."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5) or not x.is_floating_point():
        return None
    ex = x[min(i, x.shape[0] - 1)].float()
    ex = ex[:, ex.shape[1] // 2] if ex.ndim == 4 else ex
    return (ex if ex.shape[0] in (1, 3) else ex[:1]).cpu().numpy()


def input_signal(x: Any, i: int, source: str) -> dict | None:
    """Example ``i`` of a 1-d input ``N, C, L`` as ``[C, L]`` values (at most :data:`HEATMAP_ROWS` channels
    and ``4 * HEATMAP_COLS`` positions), or ``None`` when the input is no such signal."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        return None
    ex = x[min(i, x.shape[0] - 1)].float()
    values = ex[:HEATMAP_ROWS, : 4 * HEATMAP_COLS].cpu().numpy()
    notes = [f"{values.shape[0]} of {ex.shape[0]} channels"] if values.shape[0] < ex.shape[0] else []
    if values.shape[1] < ex.shape[1]:
        notes.append(f"first {values.shape[1]} of {ex.shape[1]} positions")
    return {"values": values, "example": i, "source": source, "note": ", ".join(notes)}


def _first_loader(obj: Any) -> DataLoader | None:
    if isinstance(obj, DataLoader):
        return obj
    obj = getattr(obj, "flattened", obj)  # CombinedLoader
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else []
    return next((dl for dl in map(_first_loader, items) if dl is not None), None)


class ActivationMapCallback(VizCallback):
    """Feature maps, heatmaps and activation statistics of selected layers on a fixed sample batch.

    The sample batch is the first ``sample_size`` examples of the validation dataset (of the training dataset
    when there is no validation dataloader), collated by the dataloader's ``collate_fn``; its dataset indices
    are kept in the callback's state so a resumed run shows the same examples. The model is fed by the one
    rule of :mod:`lightning_viz.core.model_input`: a tensor batch as it is; a dict batch by keyword when its
    keys name ``forward``'s parameters, else its ``x``/``input``/``inputs``/``image``/``images``/
    ``pixel_values`` value; element 0 of a tuple or list ``(x, y, ...)``. When the batch does not fit
    ``forward`` (or the capture forward raises on it), the module's ``example_input_array`` is used; a model
    neither feeds gets one warning saying how to set it. Each capture runs the model once, without
    gradients, in eval mode, and eagerly when it is ``torch.compile``d (so the hooks fire).

    Statistics per layer are of what the layer passes on, over every element on the whole sample batch: the
    output of the activation module that follows it (past normalisation and dropout), else the input of the
    next module that runs on it (what ``F.relu`` in ``forward`` produced), else its own output; the figure
    and the published record say which (``of``). They are the mean, standard deviation (population), dead
    fraction (exact zeros) and saturated fraction, defined when that tensor comes out of a bounded
    activation module (``Tanh``, ``Softsign``, ``Hardtanh``: ``|a - centre| >= saturation_threshold * half
    range``, i.e. ``|a| >= threshold`` for tanh; ``Sigmoid``, ``Hardsigmoid`` likewise on ``[0, 1]``) and
    NaN otherwise. A layer that does not run in the capture pass is shown and recorded as "not run".
    Image-like outputs (``N, C, H, W``; the middle depth slice of ``N, C, D, H, W``) show example
    ``sample_index``'s channels as a grid beside the input; other outputs show as heatmaps (1-d convolutions
    as channels x positions beside the input signal). Pictures show what the layer passes on when it has
    the layer output's shape, else the layer's output; each panel says which.

    Args:
        every_n_epochs: capture at the end of every N-th training epoch; ``null`` to turn off. When both
            schedules are off, one capture runs at the end of training.
        every_n_steps: capture every N-th optimizer step: steps 0, N, 2N, ... (the model after that many
            updates, before the step's batch runs); ``"log_every_n_steps"`` follows the Trainer's; ``null``
            to turn off. The same schedule in every lightning-viz callback.
        layers: glob patterns over qualified module names (``"features.*"``, ``"*conv*"``; names as in the
            uncompiled model, without ``_orig_mod``). Default: every convolution (``Conv1d``-``3d``,
            ``ConvTranspose1d``-``3d``); a model without one uses its Linear layers (except
            MultiheadAttention's ``out_proj``) and says so.
        sample_size: number of examples in the fixed sample batch (at most the dataset's size).
        sample_from: dataset to take the sample from: ``"val"`` (falls back to ``"train"`` when there is no
            validation dataloader) or ``"train"``.
        max_channels: most channels shown per layer (grid cap; also the row cap of 1-d convolution heatmaps).
        channel_order: which channels are shown, ranked on example ``sample_index``: ``"mean_activation"``
            (highest mean over the map first), ``"variance"`` (highest spatial variance first) or ``"first"``
            (channels 0 .. max_channels - 1).
        sample_index: which example of the sample batch the feature-map grid shows.
        saturation_threshold: fraction of the output range beyond which a bounded activation counts as
            saturated, in (0, 1].
        color_scale: colours of a layer's feature maps: ``"absolute"`` (the default: one scale per layer,
            with a colour bar, so a dead map looks dead and maps compare) or ``"per_map"`` (each channel
            stretched to its own range, to see patterns in weak channels).
        output_dir: where files go; default ``<trainer.log_dir>/viz/activation_map``.
        when_full: what to do when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "activation_map"
    section_title, report_rank = "Activations", 4
    figures = (
        FigureSpec(
            "maps",
            "Feature maps of a fixed sample",
            "lightning_viz.render.activations:render_feature_maps",
            "maps_step*.npz",
        ),
        FigureSpec(
            "heatmaps",
            "Layer outputs of a fixed sample, as heatmaps",
            "lightning_viz.render.activations:render_heatmaps",
            "heatmaps_step*.json",
        ),
        FigureSpec(
            "stats",
            "Activation statistics over training",
            "lightning_viz.render.activations:render_activation_stats",
            "stats.json",
            cumulative=True,
            latest_only=True,
        ),
    )

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: EveryNSteps = None,
        layers: list[str] | None = None,
        sample_size: int = 8,
        sample_from: SampleFrom = "val",
        max_channels: int = 16,
        channel_order: ChannelOrder = "mean_activation",
        sample_index: int = 0,
        saturation_threshold: float = 0.99,
        color_scale: ColorScale = "absolute",
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        self.schedule = Schedule(every_n_steps, every_n_epochs)
        check_int("sample_size", sample_size)
        check_int("max_channels", max_channels)
        check_int("sample_index", sample_index, minimum=0)
        check_choice("sample_from", sample_from, ("val", "train"))
        check_choice("channel_order", channel_order, ("mean_activation", "first", "variance"))
        check_choice("color_scale", color_scale, ("absolute", "per_map"))
        if sample_index >= sample_size:
            raise ValueError(f"`sample_index` must be < `sample_size` ({sample_size}); got {sample_index!r}")
        if isinstance(saturation_threshold, bool) or not 0 < float(saturation_threshold) <= 1:
            raise ValueError(f"`saturation_threshold` must be in (0, 1]; got {saturation_threshold!r}")
        if layers is not None and (not layers or not all(isinstance(p, str) and p for p in layers)):
            raise ValueError(f"`layers` must be a non-empty list of glob patterns or null; got {layers!r}")
        self.every_n_epochs, self.every_n_steps, self.layers = every_n_epochs, every_n_steps, layers
        self.sample_size, self.sample_from, self.sample_index = sample_size, sample_from, sample_index
        self.max_channels, self.channel_order, self.color_scale = max_channels, channel_order, color_scale
        self.saturation_threshold = float(saturation_threshold)
        self.layer_names: list[str] = []
        self.sample_indices: list[int] | None = None
        self.history: dict[str, dict[str, list[Any]]] = {}
        self.layer_of: dict[str, str] = {}  # layer -> the tensor its statistics are of (latest capture)
        self.last_step = -1
        self._modules: dict[str, nn.Module] = {}
        self._loader: DataLoader | None = None
        self._sample: ModelInput | None = None
        self._acc: dict[str, torch.Tensor] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._pictures: dict[str, dict[str, Any]] | None = None
        self._resolved = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(output_dir=self.output_dir, layers=self.layers)

    def records(self) -> frozenset[str]:
        return frozenset({"activation_stats"})

    # ------------------------------------------------------------------ setup
    def check_model(self, pl_module: LightningModule) -> None:
        if self.layers is not None and not is_overridden("configure_model", pl_module):
            match_modules(_Named(named_layers(pl_module)), self.layers, argument="layers")  # type: ignore[arg-type]

    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.layer_names, self._sample = [], None
        if not is_overridden("configure_model", pl_module):  # else its layers exist from on_fit_start on
            self._resolve_layers(pl_module)
        self._find_dataset(trainer)

    def _resolve_layers(self, model: nn.Module) -> None:
        self._resolved = True
        named = named_layers(model)
        if self.layers is not None:
            self.layer_names = list(match_modules(_Named(named), self.layers, argument="layers"))  # type: ignore[arg-type]
            return
        unused = {id(m.out_proj) for m in named.values() if isinstance(m, nn.MultiheadAttention)}
        convs = [n for n, m in named.items() if isinstance(m, CONV_TYPES)]
        linears = [n for n, m in named.items() if isinstance(m, nn.Linear) and id(m) not in unused]
        self.layer_names = convs or linears
        if not convs and linears:  # worth a line, nothing for the user to fix
            rank_zero_info(
                f"ActivationMapCallback: the model has no Conv1d/Conv2d/Conv3d layer, so it captures its Linear "
                f"layers {linears}. Set `layers` to choose modules."
            )
        elif not convs:  # nothing would be drawn: the user must choose
            rank_zero_warn(
                "ActivationMapCallback: the model has no Conv1d/Conv2d/Conv3d or Linear layer, so it captures "
                "nothing. Set `layers` to choose modules (glob patterns over module names).",
                category=VizWarning,
            )

    def _find_dataset(self, trainer: Trainer) -> None:
        """Pick the sample's dataloader and check ``sample_size`` against its dataset (raises ValueError)."""
        loader, which = None, self.sample_from
        for which in ("val", "train") if self.sample_from == "val" else ("train",):
            loaders = lightning_state.fit_dataloaders(trainer, which)
            loader = _first_loader(loaders) if loaders is not None else None
            if loader is not None:
                break
            if which == "val":
                rank_zero_info(
                    "ActivationMapCallback: no validation dataloader; the sample comes from `train`."
                )
        if loader is None:
            raise ValueError(
                f"ActivationMapCallback found no dataloader for `sample_from`={self.sample_from!r}"
            )
        self._loader = loader
        if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
            self.sample_indices = None  # its first examples in iteration order; checked at the first capture
            return
        size = len(loader.dataset)
        if self.sample_size > size:
            raise ValueError(
                f"`sample_size` is {self.sample_size} but the {which} dataset has only {size} examples; "
                f"use `sample_size` <= {size}"
            )
        if self.sample_indices is None or len(self.sample_indices) != self.sample_size:
            self.sample_indices = list(range(self.sample_size))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Strategies may replace modules after setup (SyncBatchNorm) or create them (configure_model).
        if not self._resolved:
            self._resolve_layers(pl_module)
        named = named_layers(pl_module)
        self._modules = {n: named[n] for n in self.layer_names if n in named}

    # ------------------------------------------------------------------ schedule (VizCallback counts)
    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        self.capture(trainer, pl_module)

    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.capture(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.off:
            self.capture(trainer, pl_module)

    # ------------------------------------------------------------------ sample
    def _feed(self, batch: Any, pl_module: LightningModule) -> ModelInput | None:
        inp = model_input(batch, pl_module)
        if inp is None:
            warn_once(("ActivationMapCallback", "feed"), feed_hint("ActivationMapCallback", pl_module, batch))
        return inp

    def sample_input(self, pl_module: LightningModule) -> ModelInput | None:
        """What the model is fed for the fixed sample batch (detached, on the CPU), built on first use;
        ``None`` (after one warning) when the model cannot be fed from the batch."""
        if self._sample is not None:
            return self._sample
        loader = self._loader
        if loader is None:
            raise RuntimeError("ActivationMapCallback.setup() has not run")
        if self.sample_indices is None:  # an iterable dataset: its first examples, in iteration order
            parts: list[ModelInput] = []
            have = 0
            for batch in loader:
                part = self._feed(batch, pl_module)
                if part is None:
                    return None
                parts.append(part)
                have += part.batch_size() or 1
                if have >= self.sample_size or part.source == "example_input_array":
                    break
            if have < self.sample_size and not (parts and parts[0].source == "example_input_array"):
                raise ValueError(f"`sample_size` is {self.sample_size} but the dataset yields only {have}")
            inp = parts[0] if parts[0].source == "example_input_array" else ModelInput.concat(parts)
        else:
            dataset: Any = loader.dataset
            if max(self.sample_indices) >= len(dataset):
                rank_zero_warn(
                    f"ActivationMapCallback: the saved sample indices go past the dataset ({len(dataset)} "
                    f"examples); the sample is its first {self.sample_size} examples instead.",
                    category=VizWarning,
                )
                self.sample_indices = list(range(self.sample_size))
            collate = loader.collate_fn if loader.batch_sampler is not None else default_collate
            found = self._feed(collate([dataset[i] for i in self.sample_indices]), pl_module)
            if found is None:
                return None
            inp = found
        self._sample = inp.examples(self.sample_size).apply(lambda t: t.detach().cpu())
        return self._sample

    # ------------------------------------------------------------------ capture (every rank)
    def _on_passed(self, name: str, module: nn.Module, output: Any, passed: Passed) -> None:
        own = first_tensor(output)
        t = first_tensor(passed.tensor)
        if t is None or t.numel() == 0 or t.is_complex():
            what = type(output).__name__ + (
                "" if own is None else f" of shape {tuple(own.shape)}, {own.dtype}"
            )
            warn_once(
                ("ActivationMapCallback", "skip", name),
                f"ActivationMapCallback: layer {name!r} is skipped: its output ({what}) holds no real, "
                "non-empty tensor.",
            )
            return
        bounds = saturation_bounds(passed.module)
        a = stat_view(t)
        vec = output_sums(a, bounds, self.saturation_threshold)
        self._acc[name] = self._acc[name] + vec if name in self._acc else vec
        of = clean_layer_name(passed.describe(name))
        self._meta.setdefault(
            name,
            {
                "of": of,
                "source": passed.source,
                "activation": type(passed.module).__name__ if is_activation(passed.module) else None,
                "bounded": bounds is not None,
            },
        )
        if self._pictures is None or name in self._pictures:
            return
        # the picture shows what the layer passes on when it has the output's shape, else the output
        same = own is None or (own.shape == t.shape and not own.is_complex() and own.numel() > 0)
        shown, shows = (a, of) if same else (stat_view(own), f"output of {name} ({type(module).__name__})")
        if shown.ndim < 2:
            return
        args = (name, module, shown, min(self.sample_index, shown.shape[0] - 1), self.max_channels)
        image_like = shown.ndim in (4, 5)
        rec = (
            feature_record(*args, self.channel_order)
            if image_like
            else heatmap_record(*args, self.channel_order)
        )
        if rec is not None:
            rec["shows"] = shows
            self._pictures[name] = rec

    def _forward(self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput) -> tuple[Any, list]:
        """One capture forward pass on ``inp``; returns the error it raised (or ``None``) and the layers run."""
        self._acc, self._meta = {}, {}
        if self._pictures is not None:
            self._pictures = {}
        moved = inp.apply(lambda t: t.to(pl_module.device))
        convert = trainer.precision_plugin.convert_input
        moved = ModelInput(convert(moved.args), convert(moved.kwargs), moved.source)
        with torch.no_grad(), eager(), capture_passed(pl_module, self._modules, self._on_passed) as tracker:
            try:
                with trainer.precision_plugin.forward_context():
                    moved(pl_module)
                tracker.finish()
            except Exception as err:
                return err, list(tracker.executed)
        return None, list(tracker.executed)

    def capture(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Capture, reduce and emit once for the current global step (every rank must call this)."""
        step = trainer.global_step
        if step == self.last_step or not self.layer_names:
            return
        self.last_step = step
        self._pictures = {} if self.emitting(trainer) else None
        failed, inp = False, None
        try:
            inp = self.sample_input(pl_module)
            failed = inp is None  # the model cannot be fed: warned once by sample_input
            err, executed = (None, []) if inp is None else self._forward(trainer, pl_module, inp)
            example = (
                example_of(pl_module) if err is not None and inp.source != "example_input_array" else None
            )
            if err is not None and example is not None:  # the batch does not fit forward: the example does
                inp = example.apply(lambda t: t.detach().cpu())
                if self._forward(trainer, pl_module, inp)[0] is None:
                    self._sample, err = inp, None
            if err is not None:
                failed = True
                warn_once(
                    ("ActivationMapCallback", "forward", type(err).__name__),
                    f"ActivationMapCallback: the capture forward pass failed at step {step}; layers run "
                    f"before the error: {executed}; cause: {err!r}. Hooks were removed and the "
                    "model's train/eval modes restored; training continues. This warning is shown once.",
                )
        except Exception as err:
            failed = True
            warn_once(
                ("ActivationMapCallback", "capture", type(err).__name__),
                f"ActivationMapCallback: capture failed at step {step}: {err!r}. Training continues.",
            )
        acc, meta, pictures = self._acc, self._meta, self._pictures or {}
        self._acc, self._meta, self._pictures = {}, {}, None
        dev = next((v.device for v in acc.values()), pl_module.device)
        sums = torch.zeros(len(self.layer_names), NSUMS, dtype=torch.float64, device=dev)
        if not failed:
            for row, name in enumerate(self.layer_names):
                if name in acc:
                    sums[row] = acc[name].to(dev)
        reduced, any_failed = distributed.reduce_values({"sums": sums}, {"sums": "sum"}, failed=failed)
        if not any_failed:
            with self.guard(trainer, "activation maps"):
                self._record(trainer, step, reduced["sums"].cpu().numpy(), inp, meta, pictures)

    # ------------------------------------------------------------------ record and emit
    def _record(
        self,
        trainer: Trainer,
        step: int,
        sums: np.ndarray,
        inp: ModelInput | None,
        meta: dict,
        pictures: dict,
    ) -> None:
        scalars: dict[str, float] = {}
        nonfinite: list[tuple[str, int]] = []
        published: dict[str, Any] = {"_types": {}, "_activation": {}}
        for name, row in zip(self.layer_names, sums):
            module = self._modules.get(name)
            info = meta.get(name, {})
            stats = stats_from_sums(row, bool(info.get("bounded")))
            published[name] = {**stats, "of": info.get("of"), "source": info.get("source")}
            published["_types"][name] = type(module).__name__ if module is not None else "?"
            published["_activation"][name] = info.get("activation")
            if info.get("of"):
                self.layer_of[name] = info["of"]
            hist = self.history.setdefault(name, {"step": [], **{k: [] for k in HISTORY_STATS}, "ran": []})
            hist.setdefault("nonfinite", [0] * len(hist["step"]))
            hist.setdefault("ran", [True] * len(hist["step"]))
            hist["step"].append(step)
            hist["ran"].append(bool(stats["ran"]))
            for k in STATS:
                v = stats[k]
                hist[k].append(v)
                if math.isfinite(v):
                    scalars[f"activation/{name}/{k}"] = v
            bad = int(stats["nonfinite"])
            hist["nonfinite"].append(bad)
            if bad:
                scalars[f"activation/{name}/nonfinite"] = float(bad)
                nonfinite.append((name, bad))
        if nonfinite:
            name, bad = nonfinite[0]
            warn_once(
                ("ActivationMapCallback", "nonfinite"),
                f"ActivationMapCallback: NaN/Inf activations first seen at step {step} in layer {name!r} "
                f"({bad} values); layers affected at that step: {[n for n, _ in nonfinite]}. Statistics "
                "cover the finite values; the counts are logged as `activation/<layer>/nonfinite` and "
                "marked on the figures. This warning is shown once.",
            )
        self.publish(trainer, "activation_stats", step, published)
        self.emit_scalars(trainer, scalars, step)
        if not self.emitting(trainer):
            return
        x = inp.primary() if inp is not None else None
        source = inp.source if inp is not None else ""
        not_run = [n for n in self.layer_names if not published[n]["ran"]]  # said on each figure
        maps = [p for p in pictures.values() if "maps" in p]
        if maps:
            image = input_image(x, self.sample_index)
            data = {
                "step": step,
                "sample_index": self.sample_index,
                "input": image,
                "input_source": source,
                "color_scale": self.color_scale,
                "layers": maps,
                "not_run": not_run,
            }
            arrays = {
                "step": np.array(step),
                "sample_index": np.array(self.sample_index),
                "input_source": np.array(source),
                "color_scale": np.array(self.color_scale),
                "not_run": np.array(not_run, dtype=str),
            }
            arrays["layer_names"] = np.array([m["name"] for m in maps])
            if image is not None:
                arrays["input"] = image
            for key in ("kind", "total_channels", "order", "note", "nonfinite", "shows"):  # enough to redraw
                arrays[f"layer_{key}"] = np.array([m[key] for m in maps])
            for j, m in enumerate(maps):
                arrays.update({f"{key}_{j}": m[key] for key in ("maps", "channels", "scores")})
            self._emit(trainer, render_feature_maps, data, "maps", step_stem("maps", step), step, arrays)
        heat = [p for p in pictures.values() if "values" in p]
        if heat:
            data = {"step": step, "layers": heat, "not_run": not_run}
            if any("row_ticks" in p for p in heat):  # 1-d convolutions: the input signal beside them
                signal = input_signal(x, self.sample_index, source)
                if signal is not None:
                    data["input"] = signal
            self._emit(trainer, render_heatmaps, data, "heatmaps", step_stem("heatmaps", step), step, None)
        history = {n: {k: list(v) for k, v in h.items()} for n, h in self.history.items()}
        data = {
            "saturation_threshold": self.saturation_threshold,
            "layers": history,
            "of": {n: self.layer_of[n] for n in history if n in self.layer_of},
        }
        self._emit(trainer, render_activation_stats, data, "stats", "stats", step, None)

    def _emit(
        self,
        trainer: Trainer,
        render: Any,
        data: Any,
        what: str,
        stem: str,
        step: int,
        save: Any,
    ) -> None:
        tag = f"viz/{self.viz_name}/{what}"
        self.emit_figure(trainer, render, data, tag=tag, stem=stem, step=step, save_data=save)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "sample_indices": None if self.sample_indices is None else list(self.sample_indices),
            "history": {n: {k: list(v) for k, v in h.items()} for n, h in self.history.items()},
            "last_step": self.last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [k for k in STATE_KEYS if k not in state_dict]
        if missing:
            rank_zero_warn(
                f"ActivationMapCallback: the checkpoint's state lacks {missing}; those start afresh.",
                category=VizWarning,
            )
        indices = state_dict.get("sample_indices")
        if indices is not None and len(indices) != self.sample_size:
            rank_zero_warn(
                f"ActivationMapCallback: the checkpoint's sample has {len(indices)} examples but `sample_size` "
                f"is {self.sample_size}; the sample is the first {self.sample_size} examples instead.",
                category=VizWarning,
            )
        elif indices is not None:
            self.sample_indices, self._sample = [int(i) for i in indices], None
        history: Mapping[str, Mapping[str, Sequence[float]]] = state_dict.get("history") or {}
        self.history = {}
        for n, h in history.items():
            steps = list(h.get("step", []))
            # an older state has no `nonfinite` or `ran` list; a missing statistic is NaN at each step
            fill: dict[str, Any] = {"nonfinite": 0, "ran": True}
            self.history[n] = {
                "step": steps,
                **{
                    k: list(h[k]) if len(h.get(k, [])) == len(steps) else [fill.get(k, math.nan)] * len(steps)
                    for k in (*HISTORY_STATS, "ran")
                },
            }
        self.last_step = int(state_dict.get("last_step", self.last_step))

"""ActivationMapCallback: what selected layers pass on for a fixed sample batch, and how that moves in training.

Per capture (every rank): one ``no_grad`` forward of the sample batch in eval mode, run eagerly even on a
``torch.compile``d model (:func:`lightning_viz.core.hooks.eager`), with hooks that exist only during that
forward (:func:`lightning_viz.core.passed.capture_passed`). Each hooked layer is followed to the tensor it
passes on (its activation module's output, or what the next module receives from ``F.relu`` and the like),
which is reduced on its device to the sums of :mod:`lightning_viz.core.activation_stats`, plus, for display,
a few channels of one example; the full activation is dropped as soon as the hook returns. The sums are
added over ranks in one collective, and rank zero renders the feature-map grids, the heatmaps and the
statistics over training.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader

from lightning_viz.core.activation_records import (
    PassedRecords,
    add_to_history,
    copy_history,
    heatmaps_data,
    history_from_state,
    layer_sums,
    maps_data,
    stats_data,
    stats_record,
)
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int, step_stem
from lightning_viz.core.distributed import Reduction
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import eager
from lightning_viz.core.layer_names import default_layers, match_layers, named_layers
from lightning_viz.core.model_input import ModelInput, example_of, feed_hint, model_input
from lightning_viz.core.passed import Passed, capture_passed
from lightning_viz.core.records import Reduced, Sums
from lightning_viz.core.sample_batch import examples_at, first_examples, sample_loader
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import VizWarning, rank_zero_warn, warn_once
from lightning_viz.render.activation_stats import render_activation_stats
from lightning_viz.render.activations import render_feature_maps, render_heatmaps

SampleFrom = Literal["val", "train"]
ChannelOrder = Literal["mean_activation", "first", "variance"]
ColorScale = Literal["absolute", "per_map"]
STATE_KEYS = ("sample_indices", "history", "last_step")
REDUCTIONS: dict[str, Reduction] = {"sums": "sum"}  # each layer's activation sums, added over ranks


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
    captures = "activation capture"
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
            "lightning_viz.render.activation_stats:render_activation_stats",
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
        self._passed = self._collector(pictures=False)  # what the capture forward in progress collects
        self._resolved = False

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "layers": self.layers}

    def records(self) -> frozenset[str]:
        return frozenset({"activation_stats"})

    # ------------------------------------------------------------------ setup
    def check_model(self, pl_module: LightningModule) -> None:
        if self.layers is not None and not is_overridden("configure_model", pl_module):
            match_layers(named_layers(pl_module), self.layers, argument="layers")

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
            self.layer_names = list(match_layers(named, self.layers, argument="layers"))
            return
        convs, linears = default_layers(named)
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
        self._loader, which, self.sample_indices = sample_loader(
            trainer, self.sample_from, self.sample_size, self.sample_indices
        )
        if self.sample_from == "val" and which == "train":
            rank_zero_info("ActivationMapCallback: no validation dataloader; the sample comes from `train`.")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Strategies may replace modules after setup (SyncBatchNorm) or create them (configure_model).
        if not self._resolved:
            self._resolve_layers(pl_module)
        named = named_layers(pl_module)
        self._modules = {n: named[n] for n in self.layer_names if n in named}

    # ------------------------------------------------------------------ schedule (VizCallback counts)
    def capture_batch(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int
    ) -> Sums | None:
        return self.capture(trainer, pl_module)

    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Sums | None:
        return self.capture(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.off:  # one capture at the end of training
            self.run_path(trainer, self.captures, self._captured(trainer, self.capture, pl_module))

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
        feed = partial(self._feed, pl_module=pl_module)
        if self.sample_indices is None:  # an iterable dataset: its first examples, in iteration order
            inp = first_examples(loader, self.sample_size, feed, argument="sample_size")
        else:
            dataset: Any = loader.dataset
            if max(self.sample_indices) >= len(dataset):
                rank_zero_warn(
                    f"ActivationMapCallback: the saved sample indices go past the dataset ({len(dataset)} "
                    f"examples); the sample is its first {self.sample_size} examples instead.",
                    category=VizWarning,
                )
                self.sample_indices = list(range(self.sample_size))
            inp = examples_at(loader, self.sample_indices, feed)
        if inp is None:
            return None
        self._sample = inp.examples(self.sample_size).apply(lambda t: t.detach().cpu())
        return self._sample

    # ------------------------------------------------------------------ capture (every rank)
    def _on_passed(self, name: str, module: nn.Module, output: Any, passed: Passed) -> None:
        self._passed.add(name, module, output, passed)

    def _collector(self, pictures: bool) -> PassedRecords:
        args = (self.saturation_threshold, self.sample_index, self.max_channels, self.channel_order)
        return PassedRecords(*args, pictures=pictures)

    def _forward(self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput) -> tuple[Any, list]:
        """One capture forward pass on ``inp``; returns the error it raised (or ``None``) and the layers run."""
        self._passed = self._collector(self._passed.pictures is not None)
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

    def capture(self, trainer: Trainer, pl_module: LightningModule) -> Sums | None:
        """The capture forward of the current global step (every rank must call this): each layer's sums (to
        add over ranks), and, on rank 0, the pictures; ``None`` when this step was captured already."""
        step = trainer.global_step
        if step == self.last_step or not self.layer_names:
            return None
        self.last_step = step
        self._passed = self._collector(pictures=self.emitting(trainer))  # pictures on rank 0 only
        failed, inp = False, None
        try:
            inp = self.sample_input(pl_module)
            failed = inp is None  # the model cannot be fed: warned once by sample_input
            err, executed = (None, []) if inp is None else self._forward(trainer, pl_module, inp)
            example = example_of(pl_module) if err is not None and not inp.is_example else None
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
        got, self._passed = self._passed, self._collector(pictures=False)
        acc, meta, pictures = got.acc, got.meta, got.pictures or {}
        sums = layer_sums(self.layer_names, acc, pl_module.device, failed=failed)
        return Sums(
            step, {"sums": sums}, REDUCTIONS, failed, meta={"input": inp, "meta": meta, "pictures": pictures}
        )

    # ------------------------------------------------------------------ keep and render
    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        """Every rank: the statistics into the history, published to the other callbacks."""
        step = reduced.step
        sums = reduced.values["sums"].numpy()
        published = stats_record(self.layer_names, self._modules, sums, reduced.meta["meta"])
        reduced.meta["published"] = published
        self.layer_of.update({n: published[n]["of"] for n in self.layer_names if published[n]["of"]})
        scalars, nonfinite = add_to_history(self.history, step, self.layer_names, published)
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
        reduced.meta["scalars"] = scalars

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        """Rank 0: the scalars, the feature maps, the heatmaps and the statistics over training."""
        step, inp, pictures = reduced.step, reduced.meta["input"], reduced.meta["pictures"]
        published = reduced.meta["published"]
        self.emit_scalars(trainer, reduced.meta["scalars"], step)
        x = inp.primary() if inp is not None else None
        source = inp.source if inp is not None else ""
        not_run = [n for n in self.layer_names if not published[n]["ran"]]  # said on each figure
        maps = [p for p in pictures.values() if "maps" in p]
        if maps:
            data, arrays = maps_data(step, self.sample_index, x, source, self.color_scale, maps, not_run)
            self._emit(trainer, render_feature_maps, data, "maps", step_stem("maps", step), step, arrays)
        heat = [p for p in pictures.values() if "values" in p]
        if heat:
            data = heatmaps_data(step, heat, not_run, x, self.sample_index, source)
            self._emit(trainer, render_heatmaps, data, "heatmaps", step_stem("heatmaps", step), step, None)
        data = stats_data(self.saturation_threshold, self.history, self.layer_of)
        self._emit(trainer, render_activation_stats, data, "stats", "stats", step, None)

    def _emit(
        self, trainer: Trainer, render: Any, data: Any, what: str, stem: str, step: int, save: Any
    ) -> None:
        tag = f"viz/{self.viz_name}/{what}"
        self.emit_figure(trainer, render, data, tag=tag, stem=stem, step=step, save_data=save)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "sample_indices": None if self.sample_indices is None else list(self.sample_indices),
            "history": copy_history(self.history),
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
        self.history = history_from_state(state_dict.get("history") or {})  # older states: lists filled in
        self.last_step = int(state_dict.get("last_step", self.last_step))

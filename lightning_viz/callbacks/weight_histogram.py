"""WeightHistogramCallback: histograms of parameters and gradients, and how they moved over training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import precision, sharding, stats
from lightning_viz.core.base import (
    VizCallback,
    WhenFull,
    check_choice,
    check_int,
    check_patterns,
    check_scheduled,
    step_stem,
)
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.histogram_history import (
    HistogramSeries,
    evolution_arrays,
    evolution_params,
    histogram_items,
    record_histograms,
)
from lightning_viz.core.hooks import match_modules
from lightning_viz.core.optimizers import optimizer_owners
from lightning_viz.core.records import Reduced, Tensors
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import warn_once
from lightning_viz.render.histograms import render_evolution

LogWhat = Literal["weights", "gradients", "both"]
SELECTIONS = {"weights": ("weights",), "gradients": ("gradients",), "both": ("weights", "gradients")}
STATE_VERSION = 1


def _owns_parameters(_name: str, module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


class WeightHistogramCallback(VizCallback):
    """Histograms of parameters and gradients every N-th step of each optimizer, and their evolution.

    Sends native histograms to TensorBoard (tags ``weights/<param>`` and ``gradients/<param>``), a norm per
    parameter as a scalar (``weight_norm/<param>``, ``grad_norm/<param>``), the count of NaN/Inf values when
    there are any (``nonfinite/<weights|gradients>/<param>``), and one figure per selection showing each
    parameter's distribution over the steps (``weights_evolution_stepNNNNNN.png`` with an ``.npz`` beside it
    holding ``parameters`` and, per parameter, ``<param>/steps``, ``<param>/edges``, ``<param>/counts`` and
    ``<param>/nonfinite``). The history behind the figures is part of the checkpoint.

    Weights are captured as they stand before the optimizer step of the logged step, gradients as the
    optimizer is about to use them: before Lightning's gradient clipping (under manual optimization, after
    any clipping done before ``step()``), and unscaled under mixed precision (also with fused optimizers,
    which unscale inside ``step()``); under a ``GradScaler``, NaN/Inf gradients (the steps it
    skips) are counted but not warned about. Each capture is labelled with ``trainer.global_step``. Under
    manual optimization with several optimizers (a GAN), each optimizer's parameters are captured on that
    optimizer's own steps, so a discriminator stepped after the generator is captured too; parameters that
    start training later (``BackboneFinetuning``, ``add_param_group``) have gradient histograms from then on.
    Counts are exact and cover the finite values; nothing is computed on steps that do not log.

    Args:
        every_n_steps: capture every N-th optimizer step: steps 0, N, 2N, ... (each optimizer's own steps
            under manual optimization), as the optimizer is about to take it; ``"log_every_n_steps"``
            follows the Trainer's; ``null`` to turn off. The same schedule in every lightning-viz callback.
        every_n_epochs: also capture in the last batch of every N-th training epoch, at each optimizer's
            step there (its first, if it steps more than once; at the epoch end, weights only, when the
            epoch length is unknown); ``null`` to turn off.
        bins: bins per histogram (>= 2). Bin widths are powers of two, so bins line up across steps.
        layers: glob patterns over module names (``"features.*"``, ``"*conv*"``); the parameters those
            modules own directly are logged. Default: every parameter of the model.
        log: what to histogram: ``"weights"``, ``"gradients"`` or ``"both"``.
        log_norms: also log the L2 norm of each parameter (and of its gradient) as a scalar.
        max_history: snapshots kept per parameter for the evolution figures; beyond it the history is
            thinned evenly, always keeping the first and the latest.
        figure_every_n_epochs: redraw the evolution figures every N training epochs (and at the end).
        output_dir: where files go; default ``<trainer.log_dir>/viz/weight_histogram``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "weight_histogram"
    captures = "histogram capture"
    section_title, report_rank = "Weights and gradients over training", 3
    figures = tuple(
        FigureSpec(
            f"{sel}_evolution",
            f"{title} distributions over training",
            "lightning_viz.render.histograms:render_evolution",
            f"{sel}_evolution_step*.npz",
            cumulative=True,
            latest_only=True,
        )
        for sel, title in (("weights", "Weight"), ("gradients", "Gradient"))
    )

    def __init__(
        self,
        every_n_steps: EveryNSteps = 50,
        every_n_epochs: int | None = None,
        bins: int = 64,
        layers: list[str] | None = None,
        log: LogWhat = "both",
        log_norms: bool = True,
        max_history: int = 200,
        figure_every_n_epochs: int = 1,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_scheduled(every_n_steps, every_n_epochs)
        check_int("bins", bins, 2)
        check_choice("log", log, tuple(SELECTIONS))
        check_int("max_history", max_history, 2)
        check_int("figure_every_n_epochs", figure_every_n_epochs, 1)
        check_patterns("layers", layers, "every parameter", '["conv*", "fc"]')
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.bins = bins
        self.layers = list(layers) if layers is not None else None
        # not `self.log`: Lightning overwrites `callback.log` with `LightningModule.log` at fit start
        self.log_what = log
        self.log_norms = log_norms
        self.max_history = max_history
        self.figure_every_n_epochs = figure_every_n_epochs
        self._params: list[tuple[str, torch.Tensor]] | None = None
        self._history: dict[str, dict[str, HistogramSeries]] = {s: {} for s in SELECTIONS[log]}
        self.schedule = Schedule(every_n_steps, every_n_epochs)
        self._last_step = -1
        self._version = 0  # bumps on every recorded capture; figures are redrawn only when it moved
        self._drawn_version = 0
        self._captured_epoch = -1

    def state_fields(self) -> dict[str, Any]:
        layers = tuple(self.layers) if self.layers else None
        return {"output_dir": self.output_dir, "log": self.log_what, "layers": layers}

    def records(self) -> frozenset[str]:
        # a record of every parameter's weights and gradients; one of some layers is published but partial
        return frozenset({"histograms"}) if self.log_what == "both" and self.layers is None else frozenset()

    # ------------------------------------------------------------------ selection
    def _select(self, pl_module: LightningModule) -> list[tuple[str, torch.Tensor]]:
        if self.layers is None:
            return [(sharding.clean_name(n), p) for n, p in pl_module.named_parameters()]
        modules = match_modules(pl_module, self.layers, argument="layers", predicate=_owns_parameters)
        seen: set[int] = set()
        out = []
        for mname, module in modules.items():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) not in seen:  # a tied parameter is logged once, under its first owner
                    seen.add(id(p))
                    out.append((sharding.clean_name(f"{mname}.{pname}"), p))
        return out

    def check_model(self, pl_module: LightningModule) -> None:
        # A model that builds its layers in `configure_model` has none yet: on_fit_start validates then.
        if self.layers is not None and next(pl_module.parameters(), None) is not None:
            self._select(pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._params = self._select(pl_module)  # after configure_model and strategy set-up

    # ------------------------------------------------------------------ schedule (VizCallback counts)
    def capture_optimizer_step(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        optimizer: torch.optim.Optimizer,
        index: int,
        *,
        by_epoch: bool,
    ) -> Tensors | None:
        if by_epoch:
            self._captured_epoch = trainer.current_epoch
        return self._capture(trainer, pl_module, trainer.global_step, optimizer, index)

    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Tensors | None:
        # Fallback when the epoch's last step was not recognised (unknown length, max_steps): weights only.
        if self._captured_epoch != trainer.current_epoch and trainer.global_step != self._last_step:
            return self._capture(trainer, pl_module, trainer.global_step, None, None)
        return None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if (trainer.current_epoch + 1) % self.figure_every_n_epochs == 0:
            self._draw(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer)

    def finish(self, trainer: Trainer) -> None:
        self._draw(trainer)

    # ------------------------------------------------------------------ capture -> reduce -> keep -> render
    def _split(
        self, trainer: Trainer, pl_module: LightningModule, index: int | None
    ) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
        """The selected parameters whose weights and whose gradients a capture for optimizer ``index`` takes.

        Read from the optimizers' current param groups, so that a group added mid-training (unfreezing)
        counts from then on. Weights: the parameters optimizer ``index`` steps, and with the first optimizer
        those no optimizer steps (frozen ones). Gradients: the parameters it steps that require a gradient;
        a parameter no optimizer holds has a gradient nothing uses or zeroes. ``index=None``: every
        weight, no gradient. When no optimizer holds any of the model's parameters (a strategy that steps
        copies), every selected parameter that requires a gradient.
        """
        params = list(self._params or [])
        if index is None:
            return params, []
        owners = optimizer_owners(trainer.optimizers)
        if not any(id(p) in owners for p in pl_module.parameters()):
            return params, [(n, p) for n, p in params if p.requires_grad]
        weights = [(n, p) for n, p in params if index in owners.get(id(p), {0})]
        grads = [(n, p) for n, p in params if index in owners.get(id(p), ()) and p.requires_grad]
        return weights, grads

    def _capture(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        step: int,
        optimizer: torch.optim.Optimizer | None,
        index: int | None,
    ) -> Tensors | None:
        """The tensors to histogram (every rank, the same names in the same order), reduced by the histogram
        contract: one ``histogram_set`` call, two collectives when distributed.

        With ``optimizer``, the parameters it steps (weights and gradients); without, every parameter's
        weights (the epoch-end fallback, when no gradient is left).
        """
        self._last_step = step
        if self._params is None:
            self._params = self._select(pl_module)
        chosen = dict(zip(("weights", "gradients"), self._split(trainer, pl_module, index)))
        tensors: list[torch.Tensor | None] = []
        names: list[str] = []
        for sel in SELECTIONS[self.log_what]:
            for name, p in chosen[sel]:
                tensors.append(p if sel == "weights" else p.grad)
                names.append(f"{sel}/{name}")
        if not names:
            return None
        # the factor gradients still carry (fused optimizers under a GradScaler): one host copy
        scale = None
        if optimizer is not None and any(n.startswith("gradients/") for n in names):
            scale = precision.grad_scale(trainer, optimizer)
        scales = None if scale is None else [scale if n.startswith("gradients/") else None for n in names]
        return Tensors(step, names, tensors, self.bins, scales)

    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        hs, step = reduced.values, reduced.step
        self._record(hs, step)
        self._report_nonfinite(hs, step, precision.has_grad_scaler(trainer))
        self.publish(trainer, "histograms", step, hs)

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        self._emit_step(trainer, reduced.values, reduced.step)

    def _record(self, hs: stats.HistogramSet, step: int) -> None:
        record_histograms(self._history, hs, step, self.bins, self.max_history)
        self._version += 1

    def _report_nonfinite(self, hs: stats.HistogramSet, step: int, scaler: bool = False) -> None:
        """One warning per run: the first parameter (weights, then gradients, in model order) and step with
        NaN/Inf values, and every parameter affected at that step. Under a ``GradScaler`` (``scaler``),
        NaN/Inf gradients are its business (it skips the step and lowers the scale): not warned about."""
        bad = [
            (tag, int(n))
            for tag, n in zip(hs.names, hs.nonfinite)
            if n > 0 and not (scaler and tag.startswith("gradients/"))
        ]
        if not bad:
            return
        tag, n = bad[0]
        warn_once(
            (type(self).__name__, "nonfinite"),
            f"{type(self).__name__}: NaN/Inf values first seen at step {step} in {tag} ({n:,} values); "
            f"affected at that step: {[t for t, _ in bad]}. They are counted per parameter "
            "(`nonfinite/...` scalars, red marks on the evolution figures); the histograms cover the finite "
            "values. This warning is shown once.",
        )

    def _emit_step(self, trainer: Trainer, hs: stats.HistogramSet, step: int) -> None:
        if not self.emitting(trainer):
            return
        scalars: dict[str, float] = {}
        for i, tag in enumerate(hs.names):
            sel, name = tag.split("/", 1)
            if hs.numel[i] == 0:
                continue
            if hs.nonfinite[i] > 0:
                scalars[f"nonfinite/{sel}/{name}"] = float(hs.nonfinite[i])
            if self.log_norms:
                scalars[f"{'weight' if sel == 'weights' else 'grad'}_norm/{name}"] = float(hs.norm[i])
        self.emit_histograms(trainer, histogram_items(hs), step)
        self.emit_scalars(trainer, scalars, step)

    # ------------------------------------------------------------------ figures
    def evolution_data(self, selection: str, compact: bool = False) -> dict[str, Any]:
        """The plain data behind one evolution figure (fresh arrays, safe to hand to another thread).

        With ``compact``, each parameter has ``k`` and ``w`` (its edges are ``(k + arange(bins + 1)) * w``)
        instead of ``edges``, and int32 counts where they fit: a quarter of the size, for the render queue.
        """
        params = evolution_params(self._history.get(selection, {}), self.bins, compact)
        return {"title": f"{selection} over training", "params": params}

    def _draw(self, trainer: Trainer) -> None:
        if self._version == self._drawn_version or not self.emitting(trainer):
            return
        self._drawn_version = self._version
        step = trainer.global_step
        with self.guard(trainer, "evolution figure"):
            for sel in SELECTIONS[self.log_what]:
                data = self.evolution_data(sel)
                if not data["params"]:
                    continue
                compact = self.evolution_data(sel, compact=True)  # what waits in the render queue
                arrays = evolution_arrays(data["params"])
                stem = step_stem(f"{sel}_evolution", step)
                tag = f"viz/{self.viz_name}/{sel}_evolution"
                self.emit_figure(
                    trainer,
                    render_evolution,
                    compact,
                    tag=tag,
                    stem=stem,
                    step=step,
                    save_data=arrays,
                )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        history = {
            sel: {name: s.state() for name, s in series.items()} for sel, series in self._history.items()
        }
        return {
            "version": STATE_VERSION,
            "bins": self.bins,
            "last_step": self._last_step,
            **self.schedule.state_dict(),
            "history": history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        owner = type(self).__name__

        def warn(why: str, then: str = "the histogram history starts afresh from here") -> None:
            warn_once((owner, "state", why), f"{owner}: {why}; {then}.")

        if not isinstance(state_dict, Mapping) or "history" not in state_dict:
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            warn(f"the saved state has no history (found {keys})")
            return
        if state_dict.get("version") != STATE_VERSION:
            version = state_dict.get("version")
            warn(f"the saved state has version {version!r}, not {STATE_VERSION}", "loading what is readable")
        self._last_step = int(state_dict.get("last_step", -1))
        if isinstance(state_dict.get("optimizer_steps"), Mapping):
            self.schedule.load_state_dict(state_dict)
        if state_dict.get("bins") != self.bins:
            warn(f"the saved history has bins={state_dict.get('bins')!r} but `bins` is {self.bins}")
            return
        for sel, series in dict(state_dict["history"]).items():
            if sel not in self._history:
                continue
            for name, s in dict(series).items():
                try:  # thinned: `max_history` may be smaller than before
                    loaded = HistogramSeries.from_state(s, self.bins, self.max_history)
                except (KeyError, TypeError, ValueError) as err:
                    warn(f"the saved history of {sel}/{name} is unreadable ({err!r})", "it is skipped")
                    continue
                self._history[sel][name] = loaded
        self._version += 1

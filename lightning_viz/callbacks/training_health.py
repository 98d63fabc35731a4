"""TrainingHealthCallback: automatic diagnosis of common training pathologies, from statistics already captured.

What is examined, and when (an *examined step* is every N-th step of each optimizer, as in every callback):
weights and gradients (the ``"histograms"`` records a WeightHistogramCallback publishes for every examined
step, else 2-bin histograms of its own, unscaled under a ``GradScaler``, of the parameters that train *now*);
activations (the ``"activation_stats"`` records of an ActivationMapCallback, and hooks during the *training*
forward of examined steps, :mod:`~lightning_viz.core.forward_sums`: each layer measured on the tensor it
passes on, after its non-linearity); update sizes, the step losses and the NaN locator
(:mod:`~lightning_viz.core.health_capture`). The rules are pure functions
(:mod:`~lightning_viz.core.health_rules`) applied by the ledger (:mod:`~lightning_viz.core.health_ledger`);
this callback schedules the captures, subscribes to the records, and warns and emits.

Every rank takes the same decisions: published records are already reduced, the own sums travel in one
``reduce_values`` call per examined step, and the per-step loss check agrees across ranks (one
``agree_any``) wherever it runs with several processes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_viz.core import distributed, lightning_state, precision, sharding, stats
from lightning_viz.core.base import VizCallback, WhenFull, step_stem
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.forward_sums import ForwardSums
from lightning_viz.core.health_capture import (
    StepLosses,
    UpdateSizes,
    examination_record,
    find_origin,
    loss_nonfinite,
)
from lightning_viz.core.health_checks import Thresholds, record_entries
from lightning_viz.core.health_ledger import HealthLedger
from lightning_viz.core.health_rules import CHECKS, Check, Finding
from lightning_viz.core.optimizers import trained_now
from lightning_viz.core.passed import ACTIVATION_TYPES
from lightning_viz.core.records import Reduced, Sums, Tensors
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import VizWarning
from lightning_viz.render.health import render_health

ACTIVATION_NAMES = frozenset(t.__name__ for t in ACTIVATION_TYPES)


class TrainingHealthCallback(VizCallback):
    """Automatic training-health checks: dead and saturated units, vanishing and exploding gradients,
    update-to-weight ratios, NaN/Inf, loss spikes and plateaus, each named with its first affected layer.

    Each finding gives one ``VizWarning`` on rank 0 (once per check and layer, with the step), e.g.
    ``TrainingHealthCallback: dead units: features.conv1 (output of features.act1, ReLU) at step 5: ...``:
    activation findings name the weight layer (``Conv*``/``Linear``) whose units they are, with the tensor
    measured in parentheses (an activation module's output, or ``after F.relu`` for a functional one); the
    first NaN/Inf finding names the module where they first appear in the forward pass. Scalars
    ``health/<check>/<layer>`` go to the loggers on every examined step; ``health_stepNNNNNN.png`` (gradient
    norms across depth, update ratios, activation fractions, and the loss with every finding marked; flagged
    layers in red) is drawn every epoch; ``health_summary.txt`` and ``health_summary.json`` list the findings,
    the layers that did not run, the parameters that do not train and those that started training later.

    Args:
        every_n_steps: examine every N-th optimizer step: steps 0, N, 2N, ... (each optimizer's own steps
            under manual optimization); ``"log_every_n_steps"`` (the default) follows the Trainer's;
            ``null`` examines no step (the epoch-level loss plateau check still runs). The same schedule
            in every lightning-viz callback.
        checks: which checks run (default: all): ``dead_units``, ``saturation``, ``vanishing_gradients``,
            ``exploding_gradients``, ``update_ratio``, ``nonfinite``, ``loss_spike``, ``loss_plateau``.
        thresholds: when the checks flag a layer (:class:`~lightning_viz.core.health_checks.Thresholds`, each
            field with its default and meaning); in YAML a mapping of only those you change, e.g.
            ``{dead_threshold: 0.8, exploding_norm: 100}``.
        monitor: the logged step loss (``<monitor>`` or ``<monitor>_step``).
        activation_hooks: hook the weight layers and activation modules during the training forward of
            examined steps.
        nonfinite_every_step: check the loss for NaN/Inf before every optimizer step, so that the layer
            where NaN/Inf first appear is found while the weights are still finite, also between examined
            steps. ``null``: wherever it is free (one process, loss on the CPU), else on examined steps only;
            ``true``: every step, at the cost of one host synchronisation per step (and one small all-reduce
            with several processes); ``false``: examined steps only.
        log_scalars: send the ``health/...`` scalars to the loggers.
        output_dir: where files go; default ``<trainer.log_dir>/viz/training_health``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "training_health"
    captures = "health examination"
    section_title, report_rank = "Training health", 0
    figures = (
        FigureSpec(
            "health",
            "Gradient norms, update ratios, activations and loss at the latest check",
            "lightning_viz.render.health:render_health",
            "health_step*.json",
        ),
    )

    def __init__(
        self,
        every_n_steps: EveryNSteps = "log_every_n_steps",
        checks: list[Check] | None = None,
        thresholds: Thresholds | None = None,
        monitor: str = "train_loss",
        activation_hooks: bool = True,
        nonfinite_every_step: bool | None = None,
        log_scalars: bool = True,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        self.schedule = Schedule(every_n_steps)
        self.thresholds = Thresholds.of(thresholds)
        if nonfinite_every_step not in (None, True, False):
            raise ValueError(
                f"`nonfinite_every_step` must be null, true or false; got {nonfinite_every_step!r}"
            )
        bad = [c for c in checks or () if c not in CHECKS]
        if checks is not None and (isinstance(checks, str) or bad):
            raise ValueError(f"`checks` must be a list of {list(CHECKS)}; got {checks!r}")
        self.every_n_steps = every_n_steps
        self.checks = tuple(CHECKS if checks is None else checks)
        self.monitor, self.activation_hooks, self.log_scalars = monitor, activation_hooks, log_scalars
        self.nonfinite_every_step = nonfinite_every_step
        self.ledger = HealthLedger(self.thresholds, self.checks, monitor)  # the findings and what they need
        # the capture of the examination in progress (the same on every rank)
        self._own_histograms = True
        self._manual = False
        self._hooked = False  # hooks were armed for the examination in progress
        self._sums = ForwardSums({}, self.thresholds.saturation_level)  # its watch is set at fit start
        self._step: int | None = None  # the examination in progress (its label)
        self._grads_done = False
        self._updates, self._losses = UpdateSizes(), StepLosses()  # since the last examination
        self._batch: Any = None  # the batch at hand (a reference, for the NaN locator)
        self._batch_step = 0  # trainer.global_step when it started
        self._stepped = False  # an optimizer step happened in this batch
        self._origin_tried: set[int] = set()
        self._drawn = -1

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "monitor": self.monitor}

    @property
    def findings(self) -> list[dict[str, Any]]:
        """The findings so far, in the order they were made (each once per check and layer)."""
        return self.ledger.findings

    @property
    def unavailable(self) -> dict[str, str]:
        """Checks that cannot run, and why."""
        return self.ledger.unavailable

    @property
    def notes(self) -> dict[str, str]:
        """What a check could not see (said in the summary, not warned)."""
        return self.ledger.notes

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # what the other callbacks publish, as they declare it (VizCallback.records)
        others = [cb for cb in trainer.callbacks if isinstance(cb, VizCallback) and cb is not self]  # type: ignore[attr-defined]
        declared = set().union(*(cb.records() for cb in others))
        self._manual = not pl_module.automatic_optimization
        # registration order = depth; ndim >= 2 marks a weight (published records come before the first
        # own examination)
        self.ledger.ndim = {sharding.clean_name(n): p.ndim for n, p in pl_module.named_parameters()}
        # another callback's histogram records serve only when they come on every step examined here (a
        # WeightHistogramCallback every 50 steps would leave the gradient norms of the steps between stale)
        self._own_histograms = not any(
            "histograms" in cb.records() and cb.schedule.covers(self.schedule, trainer) for cb in others
        )
        self._sums = ForwardSums.of_model(pl_module, self.thresholds.saturation_level)
        if not (self.activation_hooks and self._sums.watch) and "activation_stats" not in declared:
            self.ledger.no_activations(
                "`activation_hooks` is off and no ActivationMapCallback is in the trainer"
                if not self.activation_hooks
                else "the model has no Conv/Linear or activation module to hook and no ActivationMapCallback "
                "is in the trainer"
            )
        if self.unavailable:
            what, why = sorted(self.unavailable), next(iter(self.unavailable.values()))
            self._warn(trainer, f"TrainingHealthCallback: checks unavailable: {what}: {why}.")

    # ------------------------------------------------------------------ capture (every rank)
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the step this batch belongs to (the optimizer steps before it: under gradient accumulation the
        # batches of one window share it)
        self._batch, self._stepped, self._batch_step = batch, False, trainer.global_step
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        """An examination opens: hooks on the watched layers for this training forward (same on every rank)."""
        if self._step is not None:  # an examination still open
            return
        self._step, self._grads_done = step, False
        self._sums.take()  # nothing measured before this step counts
        if (
            self.activation_hooks
            and self._sums.watch
            and {"dead_units", "saturation", "nonfinite"} & set(self.checks)
        ):
            self._hooked = True
            self._sums.start(pl_module)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._updates.close()  # the previous optimizer step of this batch is done
        first, self._stepped = not self._stepped, True
        if first:
            self._check_loss(trainer, pl_module, examined=self._step is not None)
        super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def capture_optimizer_step(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        optimizer: torch.optim.Optimizer,
        index: int,
        *,
        by_epoch: bool,
    ) -> Tensors | None:
        """The stepping optimizer's parameters: their 2-bin histograms (norms and NaN/Inf; unless another
        callback publishes them for every examined step) and copies of the weights for the update sizes."""
        if not self._manual:  # the step whose examination is open
            if self._step != trainer.global_step or self._grads_done:
                return None
            self._grads_done = True
            self._sums.stop()  # the forward (and backward) of this step are done
        step = trainer.global_step
        named = [(sharding.clean_name(n), p) for n, p in pl_module.named_parameters()]
        trains, params = trained_now(trainer.optimizers, named, index if self._manual else None)
        self.ledger.trained(step, [(n, int(p.numel()), p.ndim, trains[n]) for n, p in named])
        if "update_ratio" in self.checks:
            for name, p in params:
                if p.ndim >= 2 and p.grad is not None:
                    self._updates.before(name, p)
        if not (self._own_histograms and params):
            return None
        names = [f"weights/{n}" for n, _ in params] + [f"gradients/{n}" for n, _ in params]
        tensors = [p for _, p in params] + [p.grad for _, p in params]
        scale = precision.grad_scale(trainer, optimizer)  # fused optimizers: still scaled here
        return Tensors(step, names, tensors, 2, [None] * len(params) + [scale] * len(params))

    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        """Every rank: the decisions on a reduced record (histograms, or the examination's sums)."""
        if isinstance(reduced.values, stats.HistogramSet):
            self._on_histograms(trainer, reduced.step, reduced.values)
        else:
            self._decide(trainer, reduced)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any
    ) -> None:
        if self._manual or not self._stepped:  # the loss may be logged after the steps / no step yet
            self._check_loss(trainer, pl_module, examined=False)
        if {"loss_spike", "loss_plateau", "nonfinite"} & set(self.checks):
            self._losses.add(self._batch_step, self._loss_tensor(trainer))
        if self._step is not None and (self._manual or trainer.global_step > self._step):
            self.run_path(trainer, self.captures, self._examination(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.run_path(trainer, self.captures, self._examination(trainer))
        self._report(trainer, *self.ledger.epoch_end(trainer.global_step), trainer.global_step)
        self._draw(trainer)

    def _loss_tensor(self, trainer: Trainer) -> torch.Tensor | None:
        value = lightning_state.step_value(trainer, (self.monitor, f"{self.monitor}_step"))
        return value.detach().reshape(-1)[:1] if isinstance(value, torch.Tensor) and value.numel() else None

    def _check_loss(self, trainer: Trainer, pl_module: LightningModule, examined: bool) -> None:
        """Before the optimizer step: a non-finite loss sends the NaN locator over the batch at hand."""
        if "nonfinite" not in self.checks or self.ledger.origin is not None:
            return
        if loss_nonfinite(self._loss_tensor(trainer), self.nonfinite_every_step, examined):
            self._locate(trainer, pl_module, trainer.global_step, "the loss is not finite")

    def _locate(self, trainer: Trainer, pl_module: LightningModule, step: int, why: str) -> None:
        """Every rank alike: one hooked forward pass of the batch at hand names where NaN/Inf first appear."""
        if self.ledger.origin is not None or step in self._origin_tried or "nonfinite" not in self.checks:
            return
        self._origin_tried.add(step)
        context = getattr(getattr(trainer, "precision_plugin", None), "forward_context", None)
        found, note = find_origin(pl_module, self._batch, context, sharding.is_fsdp1_wrapped(pl_module))
        first_bad = self._losses.first_bad() if found is not None and found.own_params_nonfinite else None
        self._flag(trainer, self.ledger.origin_found(step, why, found, note, first_bad))

    def _examination(self, trainer: Trainer) -> Sums | None:
        """Close the examination in progress: its own sums (activations, update sizes, step losses) as one
        record, reduced in one ``reduce_values`` call."""
        self._sums.stop()
        step = self._step
        if step is None and not self._losses.pending:
            return None
        acc, meta = self._sums.take()
        names = list(self._sums.watch) if self._hooked and step is not None else []
        self._step, self._hooked = None, False
        at = step if step is not None else trainer.global_step
        return examination_record(at, names, acc, meta, self._updates, self._losses)

    # ------------------------------------------------------------------ decisions (every rank)
    def _decide(self, trainer: Trainer, reduced: Reduced) -> None:
        found, loss_found, scalars, no_loss = self.ledger.examination(
            reduced, precision.has_grad_scaler(trainer)
        )
        self._flag(trainer, found)
        self._flag(trainer, loss_found, locate_at=trainer.global_step)  # looked for in the batch at hand
        if no_loss:
            self._warn(
                trainer,
                f"TrainingHealthCallback: checks unavailable: loss spikes, plateaus and non-finite "
                f"loss: {self.unavailable['loss']} (log it with on_step=True, or set `monitor`).",
            )
        self._scalars(trainer, scalars, reduced.step)

    def on_viz_record(self, trainer: Trainer, source: Any, kind: str, step: int, payload: Any) -> None:
        """Records other callbacks publish: their histograms (when they serve) and activation statistics."""
        if kind == "histograms" and not self._own_histograms:
            self._on_histograms(trainer, step, payload)
        elif kind == "activation_stats" and isinstance(payload, Mapping):
            entries, not_run, unknown = record_entries(
                payload, ACTIVATION_NAMES, self._sums.act_of, self._sums.fn_of
            )
            self._report(trainer, *self.ledger.activations(step, entries, not_run, unknown, own=False), step)

    def _on_histograms(self, trainer: Trainer, step: int, hs: stats.HistogramSet) -> None:
        scaler = precision.has_grad_scaler(trainer)
        found = self.ledger.histograms(step, hs, scaler=scaler, manual=self._manual, own=self._own_histograms)
        self._report(trainer, *found, step)

    def _report(
        self, trainer: Trainer, found: list[Finding], scalars: dict[str, float], step: int | None = None
    ) -> dict[str, float]:
        """Flag the findings; the scalars back (or, with ``step``, to the loggers)."""
        self._flag(trainer, found)
        if step is not None:
            self._scalars(trainer, scalars, step)
        return scalars

    def _flag(self, trainer: Trainer, found: list[Finding], locate_at: int | None = None) -> None:
        """Keep each finding once per (check, layer); warn on rank 0. A NaN/Inf finding first looks for the
        module where they first appear (at ``locate_at``, default its step), and says it follows from there."""
        for f in found:
            if f.origin_why is not None:
                at = f.step if locate_at is None else locate_at
                self._locate(trainer, trainer.lightning_module, at, f.origin_why)
                f.detail += self.ledger.follows()
            record = self.ledger.add(f, trainer.current_epoch)
            if record is not None:
                self._warn(trainer, record["message"])

    def _warn(self, trainer: Trainer, message: str) -> None:
        if distributed.is_emitter(trainer):  # every rank decides alike; rank 0 says it
            warnings.warn(message, VizWarning, stacklevel=3)

    def _scalars(self, trainer: Trainer, values: dict[str, float], step: int) -> None:
        if self.log_scalars and values:
            self.emit_scalars(trainer, {k: v for k, v in values.items() if math.isfinite(v)}, step)

    # ------------------------------------------------------------------ figures and summary (rank zero)
    def figure_data(self) -> dict[str, Any]:
        """The plain data behind the health figure."""
        return self.ledger.figure_data()

    def started_later(self) -> dict[str, int]:
        """Parameters that did not train at the first examined step and did later: name -> first step."""
        return self.ledger.started_later()

    def summary_text(self) -> str:
        """``health_summary.txt``: the findings, then what the checks could not see."""
        return self.ledger.summary_text()

    def _draw(self, trainer: Trainer) -> None:
        step = trainer.global_step
        if step == self._drawn or not self.emitting(trainer):
            return
        self._drawn = step
        with self.guard(trainer, "health figure"):
            tag, stem = f"viz/{self.viz_name}/health", step_stem("health", step)
            self.emit_figure(trainer, render_health, self.figure_data(), tag=tag, stem=stem, step=step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sums.stop(finish=False)
        self._batch = None
        self._draw(trainer)
        step = trainer.global_step
        self.emit_text(trainer, f"viz/{self.viz_name}/summary", self.summary_text(), step, "health_summary")
        self.emit_data(trainer, "health_summary", self.ledger.summary())
        super().on_fit_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._sums.stop(finish=False)
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._sums.stop(finish=False)
        self._batch = None
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**self.ledger.state_dict(), **self.schedule.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the findings (a resumed run does not warn again about them) and the epoch losses."""
        self.ledger.load_state_dict(state_dict)
        # "opt_steps": the name before the schedule was shared (lightning-viz 0.x checkpoints)
        self.schedule.load_state_dict(
            {"optimizer_steps": state_dict.get("optimizer_steps", state_dict.get("opt_steps"))}
        )

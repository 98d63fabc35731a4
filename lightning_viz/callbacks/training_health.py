"""TrainingHealthCallback: automatic diagnosis of common training pathologies, from statistics already captured.

What is examined, and when (an *examined step* is every N-th step of each optimizer):

* weights and gradients: the ``"histograms"`` records a :class:`~lightning_viz.WeightHistogramCallback`
  publishes (norms, non-finite counts). Without one that logs ``"both"`` for every parameter, this
  callback calls :func:`lightning_viz.core.precision.histogram_set` itself (2 bins, gradients unscaled under
  a ``GradScaler``, fused optimizers included) in ``on_before_optimizer_step`` of examined steps, on the
  parameters that train *now* (``requires_grad`` and in the stepping optimizer's param groups: re-read at
  every examined step, so layers unfrozen later are followed from then on). Under manual optimization each
  optimizer's parameters are examined on that optimizer's own steps;
* activations: the ``"activation_stats"`` records of an :class:`~lightning_viz.ActivationMapCallback`, and,
  with ``activation_hooks``, :class:`~lightning_viz.core.hooks.PassedTracker` hooks on the weight layers
  (``Conv*``, ``Linear``) and activation modules during the *training* forward of examined steps only: each
  layer is measured on the tensor it passes on, after its non-linearity (an activation module, or a
  functional one such as ``F.relu`` in ``forward``, told from the autograd graph), reduced to a few numbers;
* update sizes: a copy of the trained weights (``ndim >= 2``) taken in ``on_before_optimizer_step`` of
  examined steps, compared with the weights once that optimizer step is done;
* loss: the monitored step value (a tensor Lightning already holds) is kept every step without a host sync
  and examined at examined steps and epoch ends;
* the first NaN/Inf: the loss is checked for NaN/Inf before the optimizer step (while the weights are still
  finite) on examined steps, and on every step where that is free (one process, loss on the CPU) or where
  ``nonfinite_every_step`` asks for it. At the first non-finite loss (or NaN/Inf gradients or activations)
  one ``no_grad`` forward pass of the batch at hand, hooked on every module, names the first module whose
  output holds NaN/Inf while its inputs are finite; the other non-finite findings say they follow from it.

Every rank computes the same decisions: published records are already reduced, this callback's own sums
(activations, update sizes, losses) travel in one ``reduce_values`` call per examined step, and the
per-step loss check agrees across ranks (one ``agree_any``) wherever it runs with several processes.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed, lightning_state, precision, sharding, stats
from lightning_viz.core.activation_stats import (
    NSUMS,
    stats_from_sums,
)
from lightning_viz.core.base import VizCallback, WhenFull, step_stem
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.forward_sums import CLAIMED, FLAGS, ForwardSums
from lightning_viz.core.health_checks import (
    Thresholds,
    activation_flags,
    depth_ratios,
    first_nonfinite,
    loss_spikes,
    plateau_improvement,
    record_entries,
    summary_text,
    update_ratio,
)
from lightning_viz.core.hooks import ACTIVATION_TYPES, is_activation
from lightning_viz.core.model_input import model_input
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.tensor_origin import Origin, locate_nonfinite
from lightning_viz.core.warn import VizWarning
from lightning_viz.render.health import render_health

Check = Literal[
    "dead_units",
    "saturation",
    "vanishing_gradients",
    "exploding_gradients",
    "update_ratio",
    "nonfinite",
    "loss_spike",
    "loss_plateau",
]
CHECKS: tuple[str, ...] = Check.__args__  # type: ignore[attr-defined]
MIN_SPIKE_HISTORY = 3
MAX_LOSS_POINTS = 4000  # step losses kept for the figure (older ones thinned)
ACTIVATION_NAMES = frozenset(t.__name__ for t in ACTIVATION_TYPES)
PATHOLOGY = {
    "dead_units": "dead units",
    "saturation": "saturated units",
    "vanishing_gradients": "vanishing gradients",
    "exploding_gradients": "exploding gradients",
    "tiny_updates": "negligible updates",
    "large_updates": "updates too large",
    "nonfinite": "non-finite values",
    "loss_spike": "loss spike",
    "loss_plateau": "loss plateau",
}


def _weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


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
        thresholds: when the checks flag a layer (:class:`~lightning_viz.core.health_checks.Thresholds`); in
            YAML a mapping of only those you change, e.g. ``{dead_threshold: 0.8, exploding_norm: 100}``:
            ``dead_threshold`` (exact-zero fraction of a layer's passed-on values, 0.9),
            ``saturation_threshold`` (fraction near the bounds, 0.5), ``saturation_level`` (what "near" is,
            0.99), ``vanishing_ratio`` (gradient norm below this times the deepest weight's, 1e-3),
            ``exploding_norm`` (1e3), ``exploding_growth`` (total gradient norm over the first one, 1e3),
            ``tiny_update_ratio`` (1e-6), ``large_update_ratio`` (0.5), ``spike_factor`` (5.0),
            ``spike_window`` (20), ``plateau_patience`` (3 epochs), ``plateau_tolerance`` (1e-3).
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
        if isinstance(thresholds, Mapping):  # plain Python: a dict of the ones to change
            unknown = sorted(set(thresholds) - {f.name for f in dataclasses.fields(Thresholds)})
            if unknown:
                choices = [f.name for f in dataclasses.fields(Thresholds)]
                raise ValueError(f"`thresholds` has no {unknown}; valid: {choices}")
            thresholds = Thresholds(**thresholds)
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise ValueError(
                f"`thresholds` must be a mapping of threshold names to numbers; got {thresholds!r}"
            )
        self.thresholds = thresholds or Thresholds()
        self.thresholds.check()
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
        self.findings: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}
        self.notes: dict[str, str] = {}  # what a check could not see, said in the summary (not warned)
        self._flagged: set[tuple[str, str]] = set()
        self._watch: dict[str, nn.Module] = {}
        self._own_histograms = True
        self._manual = False
        self._hooked = False  # hooks were armed for the examination in progress (the same on every rank)
        self._sums = ForwardSums({}, self.thresholds.saturation_level)  # its watch is set at fit start
        self._step: int | None = None  # the examination in progress (its label)
        self._grads_done = False
        self._before: list[tuple[str, torch.Tensor, torch.Tensor, bool]] = []  # copies of an open step
        self._upd: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # closed steps' sums of squares
        self._pending: list[tuple[int, torch.Tensor | None]] = []  # (step, loss or None) not yet examined
        self._batch: Any = None  # the batch at hand (a reference, for the NaN locator)
        self._batch_step = 0  # trainer.global_step when it started
        self._stepped = False  # an optimizer step happened in this batch
        self._origin: dict[str, Any] | None = None
        self._origin_tried: set[int] = set()
        self._ndim: dict[str, int] = {}
        self._trains_since: dict[str, int] = {}  # parameter -> first examined step it trained at
        self._frozen_at_start: set[str] | None = None
        self._frozen: dict[str, int] = {}  # parameters that do not train (latest examined step) -> size
        self._not_run: dict[str, int] = {}  # layer -> latest examined step it did not run at
        self._skipped = 0  # GradScaler steps skipped (NaN/Inf gradients, expected)
        self._loss_steps: list[int] = []
        self._loss_values: list[float] = []
        self._epoch_losses: list[float] = []
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._first_total_grad: dict[str, float] = {}
        self._latest: dict[str, Any] = {"grad": {}, "update": {}, "act": {}}
        self._drawn = -1
        self._zero_start: set[str] = set()  # weights first seen at zero (no scale for their updates)
        self._update_seen: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(output_dir=self.output_dir, monitor=self.monitor)

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # what the other callbacks publish, as they declare it (VizCallback.records)
        others = [cb for cb in trainer.callbacks if isinstance(cb, VizCallback) and cb is not self]  # type: ignore[attr-defined]
        declared = set().union(*(cb.records() for cb in others))
        self._manual = not pl_module.automatic_optimization
        # registration order = depth; ndim >= 2 marks a weight (published records are checked before the
        # first own examination)
        self._ndim = {sharding.clean_name(n): p.ndim for n, p in pl_module.named_parameters()}
        # another callback's histogram records serve only when they come on every step examined here (a
        # WeightHistogramCallback every 50 steps would leave the gradient norms of the steps between stale)
        self._own_histograms = not any(
            "histograms" in cb.records() and cb.schedule.covers(self.schedule, trainer) for cb in others
        )
        self._watch = {
            sharding.clean_name(n): m
            for n, m in pl_module.named_modules()
            if n and (_weight_layer(m) or is_activation(m))
        }
        self._sums = ForwardSums(self._watch, self.thresholds.saturation_level)
        has_map = "activation_stats" in declared
        if not (self.activation_hooks and self._watch) and not has_map:
            why = (
                "`activation_hooks` is off and no ActivationMapCallback is in the trainer"
                if not self.activation_hooks
                else "the model has no Conv/Linear or activation module to hook and no ActivationMapCallback "
                "is in the trainer"
            )
            for check in ("dead_units", "saturation"):
                if check in self.checks:
                    self.unavailable[check] = why
        if self.unavailable and distributed.is_emitter(trainer):
            warnings.warn(
                f"TrainingHealthCallback: checks unavailable: {sorted(self.unavailable)}: "
                f"{next(iter(self.unavailable.values()))}.",
                VizWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ capture (every rank)
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the step this batch belongs to (the optimizer steps before it: under gradient accumulation the
        # batches of one window share it)
        self._batch, self._stepped, self._batch_step = batch, False, trainer.global_step
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        if self._step is not None:  # an examination still open
            return
        self._step, self._grads_done = step, False
        self._sums.take()  # nothing measured before this step counts
        # the same on every rank, so that every rank reduces the same rows
        if (
            self.activation_hooks
            and self._watch
            and {"dead_units", "saturation", "nonfinite"} & set(self.checks)
        ):
            self._hooked = True
            self._sums.start(pl_module)

    def _stop_hooks(self, finish: bool = True) -> None:
        self._sums.stop(finish)

    def _trained(
        self, trainer: Trainer, pl_module: LightningModule, index: int | None, step: int
    ) -> list[tuple[str, torch.Tensor]]:
        """The parameters that train now (``requires_grad`` and in an optimizer; with ``index``, in that
        one), re-read from the param groups; notes the frozen ones and those that started later."""
        owners: dict[int, set[int]] = {}
        for i, opt in enumerate(trainer.optimizers):
            for group in opt.param_groups:
                for p in group["params"]:
                    owners.setdefault(id(p), set()).add(i)
        params = [(sharding.clean_name(n), p) for n, p in pl_module.named_parameters()]
        known = any(id(p) in owners for _, p in params)  # else a wrapper hides them: requires_grad decides
        trains = {n: p.requires_grad and (id(p) in owners or not known) for n, p in params}
        self._frozen = {n: int(p.numel()) for n, p in params if not trains[n]}
        if self._frozen_at_start is None:
            self._frozen_at_start = set(self._frozen)
        for n, p in params:
            self._ndim[n] = p.ndim
            if trains[n]:
                self._trains_since.setdefault(n, step)
        return [
            (n, p)
            for n, p in params
            if trains[n] and (index is None or index in owners.get(id(p), {0}) or not known)
        ]

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._close_updates()  # the previous optimizer step of this batch is done
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
    ) -> None:
        if not self._manual:  # the step whose examination is open
            if self._step != trainer.global_step or self._grads_done:
                return
            self._grads_done = True
            self._stop_hooks()  # the forward (and backward) of this step are done
        step = trainer.global_step
        params = self._trained(trainer, pl_module, index if self._manual else None, step)
        if self._own_histograms and params:
            names = [f"weights/{n}" for n, _ in params] + [f"gradients/{n}" for n, _ in params]
            tensors = [p for _, p in params] + [p.grad for _, p in params]
            scale = precision.grad_scale(trainer, optimizer)  # fused optimizers: still scaled here
            scales = [None] * len(params) + [scale] * len(params)
            hs, failed = precision.histogram_set(tensors, names, 2, scales)
            if not failed:
                self._on_histograms(trainer, step, hs)
        if "update_ratio" in self.checks:
            for name, p in params:
                if p.ndim >= 2 and p.grad is not None:
                    local, contributes = sharding.local_view(p)
                    self._before.append((name, p, local.detach().clone(), contributes))

    def _close_updates(self) -> None:
        """Sums of squares of the weights before and of the change, once their optimizer step is done."""
        for name, p, old, contributes in self._before:
            if contributes:
                new, o = sharding.local_view(p)[0].detach().double(), old.double()
                self._upd.append((name, o.square().sum(), (new - o).square().sum()))
            else:
                zero = torch.zeros((), dtype=torch.float64, device=old.device)
                self._upd.append((name, zero, zero))
        self._before = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any
    ) -> None:
        if self._manual or not self._stepped:  # the loss may be logged after the steps / no step yet
            self._check_loss(trainer, pl_module, examined=False)
        self._keep_loss(trainer)
        if self._step is not None and (self._manual or trainer.global_step > self._step):
            self._examine(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._examine(trainer)
        if self._loss_values:
            mean = self._epoch_sum / self._epoch_count if self._epoch_count else math.nan
            self._epoch_losses.append(mean)
        self._epoch_sum, self._epoch_count = 0.0, 0
        if "loss_plateau" in self.checks:
            gain = plateau_improvement(self._epoch_losses, self.thresholds.plateau_patience)
            if gain is not None:
                self._scalars(trainer, {"health/loss_improvement": gain}, trainer.global_step)
                if gain < self.thresholds.plateau_tolerance:
                    self._flag(
                        trainer,
                        "loss_plateau",
                        self.monitor,
                        trainer.global_step,
                        gain,
                        self.thresholds.plateau_tolerance,
                        f"the epoch-mean loss improved by {gain:.2%} over the last {self.thresholds.plateau_patience} "
                        f"epochs (tolerance {self.thresholds.plateau_tolerance:.2%})",
                    )
        self._draw(trainer)

    def _loss_tensor(self, trainer: Trainer) -> torch.Tensor | None:
        value = lightning_state.step_value(trainer, (self.monitor, f"{self.monitor}_step"))
        return value.detach().reshape(-1)[:1] if isinstance(value, torch.Tensor) and value.numel() else None

    def _keep_loss(self, trainer: Trainer) -> None:
        if not {"loss_spike", "loss_plateau", "nonfinite"} & set(self.checks):
            return
        value = self._loss_tensor(trainer)
        self._pending.append((self._batch_step, None if value is None else value.to(torch.float64)))

    def _check_loss(self, trainer: Trainer, pl_module: LightningModule, examined: bool) -> None:
        """Before the optimizer step: a non-finite loss sends the NaN locator over the batch at hand.

        Runs on examined steps, and on every step where ``nonfinite_every_step`` says so (``null``: one
        process with the loss on the CPU, where the check costs no device synchronisation)."""
        if "nonfinite" not in self.checks or self._origin is not None:
            return
        several = distributed.world_size() > 1
        value = self._loss_tensor(trainer)
        every = self.nonfinite_every_step
        if every is None:
            every = not several and value is not None and value.device.type == "cpu"
        if not (every or examined):
            return
        bad = value is not None and not bool(torch.isfinite(value).all())
        if several:  # every rank calls it: examined steps and the argument are the same everywhere
            bad = distributed.agree_any(bad)
        if bad:
            self._locate(trainer, pl_module, trainer.global_step, "the loss is not finite")

    def _locate(self, trainer: Trainer, pl_module: LightningModule, step: int, why: str) -> None:
        """Every rank alike: one hooked forward pass of the batch at hand names where NaN/Inf first appear."""
        if self._origin is not None or step in self._origin_tried or "nonfinite" not in self.checks:
            return
        self._origin_tried.add(step)
        found: Origin | None = None
        inp = model_input(self._batch, pl_module) if self._batch is not None else None
        if inp is None or sharding.is_fsdp1_wrapped(pl_module):
            self.notes["origin"] = "the module where NaN/Inf first appear could not be looked for: " + (
                "FSDP1 units run only from the root" if inp is not None else "the batch cannot feed the model"
            )
        else:
            try:
                plugin = getattr(trainer, "precision_plugin", None)
                found = locate_nonfinite(
                    pl_module,
                    inp,
                    getattr(plugin, "forward_context", None),
                    complete=distributed.world_size() > 1,  # the same forward (and collectives) on every rank
                )
            except Exception as err:  # the pass is ours: a failure must not end training
                self.notes["origin"] = f"the forward pass looking for the first NaN/Inf failed: {err!r}"
        if distributed.world_size() > 1:  # the earliest over ranks, the same everywhere
            hits = [h for h in distributed.gather_objects(found) if h is not None]
            found = min(hits, key=lambda h: h.order) if hits else None
        if found is None:
            self.notes.setdefault(
                "origin",
                f"at step {step} {why}, but a forward pass of the batch is finite: the NaN/Inf arise in the loss "
                "or in the backward pass",
            )
            return
        layer = "batch" if found.name is None else (found.name or "forward")
        if found.name is None:
            detail = f"the input batch holds {found.count} NaN/Inf values ({why})"
        else:
            detail = (
                f"first non-finite output in the forward pass: {layer} ({found.kind}): its inputs are finite, "
                f"its output holds {found.count} NaN/Inf values ({why})"
            )
        if found.own_params_nonfinite:
            first = self._first_bad_loss()
            detail += (
                "; its own parameters already hold NaN/Inf: the values went non-finite at an earlier step"
                + (f" (the loss first at step {first})" if first is not None else "")
                + " between examined steps; set `nonfinite_every_step: true` to catch it while the weights "
                "are finite"
            )
        self._origin = {"layer": layer, "step": int(step), "kind": found.kind}
        self._flag(trainer, "nonfinite", layer, step, found.count, 0.0, detail, key="origin")

    def _first_bad_loss(self) -> int | None:
        kept = [(s, v) for s, v in self._pending if v is not None]
        if not kept:
            return None
        values = torch.cat([v.to(kept[0][1].device) for _, v in kept]).cpu().tolist()
        return next((s for (s, _), v in zip(kept, values) if not math.isfinite(v)), None)

    def _follows(self) -> str:
        o = self._origin
        if o is None:
            return ""
        return f" (follows from the first non-finite output in the forward pass: {o['layer']} at step {o['step']})"

    def _examine(self, trainer: Trainer) -> None:
        """Every rank: one reduce of the own sums, then the same decisions everywhere."""
        self._stop_hooks()
        self._close_updates()
        step, upd, pending = self._step, self._upd, self._pending
        if step is None and not pending:
            return
        acc, meta = self._sums.take()
        names = list(self._watch) if self._hooked and step is not None else []
        self._step, self._upd, self._pending, self._hooked = None, [], [], False
        act = torch.zeros(len(names), NSUMS + FLAGS, dtype=torch.float64)
        for i, n in enumerate(names):
            if n in acc:
                act[i] = acc[n].cpu()
        u = torch.zeros(len(upd), 2, dtype=torch.float64)
        if upd:  # one host copy for all the weights
            u = torch.stack(
                [torch.stack([b.to(upd[0][1].device), d.to(upd[0][1].device)]) for _, b, d in upd]
            )
        loss = torch.zeros(0, dtype=torch.float64)
        kept = [v for _, v in pending if v is not None]
        if kept:  # one host copy for all the kept step losses; a missing value is NaN
            dev = kept[0].device
            nan = torch.full((1,), math.nan, dtype=torch.float64, device=dev)
            loss = torch.cat([nan if v is None else v.to(dev) for _, v in pending]).cpu()
        elif pending:
            loss = torch.full((len(pending),), math.nan, dtype=torch.float64)
        red, failed = distributed.reduce_values(
            {"act": act[:, :NSUMS], "flags": act[:, NSUMS:], "upd": u.cpu(), "loss": loss},
            {"act": "sum", "flags": "max", "upd": "sum", "loss": "mean"},
        )
        if failed:
            return
        at = step if step is not None else trainer.global_step
        scalars: dict[str, float] = {}
        if names:
            self._on_own_activations(trainer, at, names, red["act"].cpu(), red["flags"].cpu(), meta, scalars)
        if upd:
            b, d = red["upd"].cpu().numpy().T
            ratios = update_ratio(b, d)
            if precision.has_grad_scaler(trainer):  # an exact zero change: a step the scaler skipped
                ratios = np.where(d == 0, np.nan, ratios)
            self._on_updates(trainer, at, [n for n, _, _ in upd], ratios, scalars)
        if pending:
            present = [v is not None for _, v in pending]
            values = [v for v, ok in zip(red["loss"].cpu().tolist(), present) if ok]
            self._on_losses(trainer, [s for (s, _), ok in zip(pending, present) if ok], values, scalars)
        self._scalars(trainer, scalars, at)

    def _on_own_activations(
        self,
        trainer: Trainer,
        step: int,
        names: list[str],
        sums: torch.Tensor,
        flags: torch.Tensor,
        meta: Mapping[str, str],
        scalars: dict[str, float],
    ) -> None:
        entries, unknown = [], []
        for n, row, fl in zip(names, sums.tolist(), flags.tolist()):
            after, bounded, blind = (v > 0 for v in fl)
            st = stats_from_sums(row, bounded)
            if not st["ran"]:
                if meta.get(n) != CLAIMED:  # ran, reported under the weight layer before it
                    self._not_run[n] = step
                continue
            self._not_run.pop(n, None)
            if blind and not bounded:
                unknown.append(n)
            entries.append(
                {
                    "layer": n,
                    "tensor": meta.get(n, "output"),
                    "dead": st["dead_fraction"] if after else None,
                    "saturated": st["saturated_fraction"] if bounded else None,
                    "nonfinite": st["nonfinite"],
                    "values": st["values"],
                }
            )
        if unknown and "saturation" in self.checks:
            self.notes["saturation"] = (
                f"not checked for {unknown[:8]}: the functional code after them could not be told "
                "(no autograd graph), so their bounds are unknown"
            )
        self._on_activations(trainer, step, entries, scalars)

    # ------------------------------------------------------------------ published records (every rank)
    def on_viz_record(self, trainer: Trainer, source: Any, kind: str, step: int, payload: Any) -> None:
        if kind == "histograms" and not self._own_histograms:
            self._on_histograms(trainer, step, payload)
        elif kind == "activation_stats" and isinstance(payload, Mapping):
            scalars: dict[str, float] = {}
            self._on_activations(trainer, step, self._record_entries(payload, step), scalars)
            self._scalars(trainer, scalars, step)

    def _record_entries(self, payload: Mapping[str, Any], step: int) -> list[dict[str, Any]]:
        """Activation entries from an ActivationMapCallback record; notes the layers that did not run."""
        entries, not_run, unknown = record_entries(
            payload, ACTIVATION_NAMES, self._sums.act_of, self._sums.fn_of
        )
        for name in not_run:
            self._not_run.setdefault(name, step)
        if unknown and "saturation" in self.checks and not self.notes.get("saturation"):
            self.notes["saturation"] = (
                f"not checked for {unknown[:8]} (ActivationMapCallback records): they pass their outputs "
                "through functional code whose bounds are unknown"
            )
        return entries

    # ------------------------------------------------------------------ decisions (every rank)
    def _on_activations(
        self, trainer: Trainer, step: int, entries: list[dict[str, Any]], scalars: dict[str, float]
    ) -> None:
        desc = {e["layer"]: e["tensor"] for e in entries}
        for e in entries:
            for key, stat in (("dead_fraction", e["dead"]), ("saturated_fraction", e["saturated"])):
                if stat is not None and math.isfinite(stat):
                    scalars[f"health/{key}/{e['layer']}"] = float(stat)
            shown = (
                ("saturated_fraction", e["saturated"])
                if e["saturated"] is not None
                else ("dead_fraction", e["dead"])
            )
            if shown[1] is not None and math.isfinite(shown[1]):
                self._latest["act"][e["layer"]] = (shown[0], float(shown[1]))
        for check, name, value in activation_flags(
            entries, self.thresholds.dead_threshold, self.thresholds.saturation_threshold
        ):
            if check not in self.checks:
                continue
            limit = (
                self.thresholds.dead_threshold
                if check == "dead_units"
                else self.thresholds.saturation_threshold
            )
            what = "exactly zero" if check == "dead_units" else "at its bounds"
            self._flag(
                trainer,
                check,
                name,
                step,
                value,
                limit,
                f"{value:.1%} of the values it passes on are {what} (threshold {limit:.0%})",
                tensor=desc[name],
            )
        hit = next((e for e in entries if e["nonfinite"] > 0), None)
        if hit and "nonfinite" in self.checks:
            self._locate(trainer, trainer.lightning_module, step, "activations hold NaN/Inf")
            n = hit["nonfinite"]
            what = "every value of the batch is NaN/Inf" if hit["values"] == 0 else f"{n} NaN/Inf values"
            self._flag(
                trainer,
                "nonfinite",
                hit["layer"],
                step,
                n,
                0.0,
                f"{what} in the tensor it passes on (first layer in model order){self._follows()}",
                key=f"activations:{hit['layer']}",
                tensor=hit["tensor"],
            )

    def _on_histograms(self, trainer: Trainer, step: int, hs: stats.HistogramSet) -> None:
        grad_idx = [i for i, n in enumerate(hs.names) if n.startswith("gradients/")]
        if precision.has_grad_scaler(trainer) and any(hs.nonfinite[i] for i in grad_idx):
            self._skipped += 1  # the scaler skips this step and lowers its scale: expected, not a finding
            grad_idx = []
        sels = {
            "weights": [i for i, n in enumerate(hs.names) if n.startswith("weights/")],
            "gradients": grad_idx,
        }
        if "nonfinite" in self.checks:
            for sel in ("weights", "gradients"):
                idx = sels[sel]
                hit = first_nonfinite(
                    [hs.names[i].split("/", 1)[1] for i in idx], [hs.nonfinite[i] for i in idx]
                )
                if hit:
                    self._locate(trainer, trainer.lightning_module, step, f"its {sel} hold NaN/Inf")
                    self._flag(
                        trainer,
                        "nonfinite",
                        hit[0],
                        step,
                        hit[1],
                        0.0,
                        f"{hit[1]} NaN/Inf values in its {sel[:-1]} (the first parameter affected in model "
                        f"order){self._follows()}",
                        key=f"{sel}:{hit[0]}",
                    )
        # a gradient holding NaN/Inf counts as an infinite norm (the end point of an explosion)
        grads = [
            (hs.names[i].split("/", 1)[1], math.inf if hs.nonfinite[i] else float(hs.norm[i]))
            for i in grad_idx
            if hs.numel[i] > 0
        ]
        scalars: dict[str, float] = {
            f"health/nonfinite/{hs.names[i]}": float(hs.nonfinite[i])
            for i in sels["weights"] + grad_idx
            if hs.nonfinite[i] > 0
        }
        if self._own_histograms:  # else WeightHistogramCallback logs them as grad_norm/<param>
            scalars.update({f"health/grad_norm/{n}": v for n, v in grads})
        if not grads:
            self._scalars(trainer, scalars, step)
            return
        if not self._manual:
            self._latest["grad"] = {}
        self._latest["grad"].update(dict(grads))
        self._latest["grad_step"] = step
        ndim = self._ndim
        deepest = [v for n, v in grads if ndim.get(n, 2) >= 2][-1:]
        self._latest["vanishing_below"] = self.thresholds.vanishing_ratio * deepest[0] if deepest else None
        total = math.sqrt(sum(v * v for _, v in grads))
        if "exploding_gradients" in self.checks:
            first = self._first_total_grad.setdefault(grads[0][0], total) if total > 0 else None
            big = [(n, v) for n, v in grads if v > self.thresholds.exploding_norm]
            for n, v in big:
                self._flag(
                    trainer,
                    "exploding_gradients",
                    n,
                    step,
                    v,
                    self.thresholds.exploding_norm,
                    f"gradient norm {v:.3g} > {self.thresholds.exploding_norm:.3g}",
                )
            if not big and first and total > self.thresholds.exploding_growth * first:
                growth = total / first
                self._flag(
                    trainer,
                    "exploding_gradients",
                    grads[0][0],
                    step,
                    growth,
                    self.thresholds.exploding_growth,
                    f"the total gradient norm grew {growth:.3g}x since the first check",
                )
        weights = [(n, v) for n, v in grads if ndim.get(n, 2) >= 2]
        if "vanishing_gradients" in self.checks and len(weights) >= 2:
            ratios = depth_ratios([v for _, v in weights])
            scalars["health/grad_norm_ratio"] = float(ratios[0])
            low = [
                (n, r) for (n, _), r in zip(weights[:-1], ratios[:-1]) if r < self.thresholds.vanishing_ratio
            ]
            for n, r in low:
                self._flag(
                    trainer,
                    "vanishing_gradients",
                    n,
                    step,
                    r,
                    self.thresholds.vanishing_ratio,
                    f"its gradient norm is {r:.2e} x that of {weights[-1][0]} "
                    f"(threshold {self.thresholds.vanishing_ratio:.0e})",
                )
        self._scalars(trainer, scalars, step)

    def _on_updates(
        self, trainer: Trainer, step: int, names: list[str], ratios: np.ndarray, scalars: dict[str, float]
    ) -> None:
        self._latest["update"] = {n: float(r) for n, r in zip(names, ratios)}
        # A weight first seen at zero (a zero-initialised CLS token or positional embedding) has no scale
        # to compare its first updates with, as biases have not: it is never judged "too large".
        zero_start, seen = self._zero_start, self._update_seen
        zero_start |= {n for n, r in zip(names, ratios) if n not in seen and not math.isfinite(r)}
        seen |= set(names)
        for n, r in zip(names, ratios):
            if math.isfinite(r):
                scalars[f"health/update_ratio/{n}"] = float(r)
        for check, test, limit in (
            (
                "tiny_updates",
                lambda r: r < self.thresholds.tiny_update_ratio,
                self.thresholds.tiny_update_ratio,
            ),
            (
                "large_updates",
                lambda r: r > self.thresholds.large_update_ratio,
                self.thresholds.large_update_ratio,
            ),
        ):
            for n, r in zip(names, ratios):
                if math.isfinite(r) and test(r) and not (check == "large_updates" and n in zero_start):
                    self._flag(
                        trainer,
                        check,
                        n,
                        step,
                        r,
                        limit,
                        f"one optimizer step changed it by {r:.2e} "
                        f"of its norm (threshold {limit:.0e}; about 1e-3 is healthy)",
                    )

    def _on_losses(
        self, trainer: Trainer, steps: list[int], values: list[float], scalars: dict[str, float]
    ) -> None:
        if not values:
            if "loss" not in self.unavailable and not self._loss_values:
                self.unavailable["loss"] = f"`monitor` {self.monitor!r} is not logged at step level"
                if distributed.is_emitter(trainer):
                    warnings.warn(
                        f"TrainingHealthCallback: checks unavailable: loss spikes, plateaus and non-finite "
                        f"loss: {self.unavailable['loss']} (log it with on_step=True, or set `monitor`).",
                        VizWarning,
                        stacklevel=2,
                    )
            return
        bad = next(((s, v) for s, v in zip(steps, values) if not math.isfinite(v)), None)
        if bad and "nonfinite" in self.checks:
            self._locate(
                trainer,
                trainer.lightning_module,
                trainer.global_step,
                f"the loss was {bad[1]} at step {bad[0]}",
            )
            detail = f"the loss is {bad[1]}{self._follows()}"
            self._flag(trainer, "nonfinite", self.monitor, bad[0], bad[1], 0.0, detail)
        if "loss_spike" in self.checks:
            for i in loss_spikes(
                self._loss_values, values, self.thresholds.spike_factor, self.thresholds.spike_window
            ):
                prior = [v for v in self._loss_values + values[:i] if math.isfinite(v)][
                    -self.thresholds.spike_window :
                ]
                med = float(np.median(prior))
                self._flag(
                    trainer,
                    "loss_spike",
                    self.monitor,
                    steps[i],
                    values[i] / med,
                    self.thresholds.spike_factor,
                    f"{values[i]:.4g} is {values[i] / med:.3g}x the median of the previous "
                    f"{self.thresholds.spike_window} steps",
                )
                break
        prior = [v for v in self._loss_values if math.isfinite(v)][-self.thresholds.spike_window :]
        if len(prior) >= MIN_SPIKE_HISTORY and math.isfinite(values[-1]) and np.median(prior) > 0:
            scalars["health/loss_to_median"] = values[-1] / float(np.median(prior))
        finite = [v for v in values if math.isfinite(v)]
        self._epoch_sum, self._epoch_count = self._epoch_sum + sum(finite), self._epoch_count + len(finite)
        self._loss_steps += steps
        self._loss_values += values
        if len(self._loss_values) > MAX_LOSS_POINTS:  # thin the older half of the curve; keep the window
            keep = list(range(0, len(self._loss_values) - self.thresholds.spike_window, 2))
            keep += range(len(self._loss_values) - self.thresholds.spike_window, len(self._loss_values))
            self._loss_steps = [self._loss_steps[i] for i in keep]
            self._loss_values = [self._loss_values[i] for i in keep]

    def _flag(
        self,
        trainer: Trainer,
        check: str,
        layer: str,
        step: int,
        value: float,
        limit: float,
        detail: str,
        key: str | None = None,
        tensor: str | None = None,
    ) -> None:
        """Record a finding once per (check, layer); warn on rank 0. ``tensor`` says which tensor of the
        layer was measured (shown in parentheses after its name)."""
        ident = (check, key or layer)
        if ident in self._flagged:
            return
        self._flagged.add(ident)
        named = f"{layer} ({tensor})" if tensor else layer
        message = f"TrainingHealthCallback: {PATHOLOGY[check]}: {named} at step {step}: {detail}."
        self.findings.append(
            {
                "check": check,
                "pathology": PATHOLOGY[check],
                "layer": layer,
                "tensor": tensor,
                "step": int(step),
                "epoch": int(trainer.current_epoch),
                "value": float(value),
                "threshold": float(limit),
                "message": message,
            }
        )
        if distributed.is_emitter(trainer):
            warnings.warn(message, VizWarning, stacklevel=2)

    def _scalars(self, trainer: Trainer, values: dict[str, float], step: int) -> None:
        if self.log_scalars and values:
            self.emit_scalars(trainer, {k: v for k, v in values.items() if math.isfinite(v)}, step)

    # ------------------------------------------------------------------ figures and summary (rank zero)
    def figure_data(self) -> dict[str, Any]:
        """The plain data behind the health figure."""
        flagged: dict[str, set[str]] = {}
        for f in self.findings:
            flagged.setdefault(f["check"], set()).add(f["layer"])
        return {
            "grad_norms": dict(self._latest["grad"]),
            "grad_step": self._latest.get("grad_step"),
            "vanishing_below": self._latest.get("vanishing_below"),
            "update_ratios": dict(self._latest["update"]),
            "activations": {n: list(v) for n, v in self._latest["act"].items()},
            "loss_steps": list(self._loss_steps),
            "loss_values": list(self._loss_values),
            "findings": [dict(f) for f in self.findings],
            "flagged": {k: sorted(v) for k, v in flagged.items()},
            "thresholds": self.thresholds.as_dict(),
            "not_run": sorted(self._not_run),
            "frozen": {
                "tensors": len(self._frozen),
                "values": sum(self._frozen.values()),
                "names": list(self._frozen)[:12],
            },
            "started_later": self.started_later(),
        }

    def started_later(self) -> dict[str, int]:
        """Parameters that did not train at the first examined step and did later: name -> first examined
        step they trained at."""
        start = self._frozen_at_start or set()
        return {n: s for n, s in self._trains_since.items() if n in start}

    def _draw(self, trainer: Trainer) -> None:
        step = trainer.global_step
        if step == self._drawn or not self.emitting(trainer):
            return
        self._drawn = step
        with self.guard(trainer, "health figure"):
            data = self.figure_data()
            self.emit_figure(
                trainer,
                render_health,
                data,
                tag=f"viz/{self.viz_name}/health",
                stem=step_stem("health", step),
                step=step,
            )

    def summary_text(self) -> str:
        """The findings, then what the checks could not see: checks unavailable, layers that did not run,
        parameters that do not train and those that started training later."""
        return summary_text(
            self.findings,
            {
                **{f"unavailable: {k}": v for k, v in self.unavailable.items()},
                **{f"note: {k}": v for k, v in self.notes.items()},
            },
            sorted(self._not_run),
            self._frozen,
            self.started_later(),
            self._skipped,
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_hooks(finish=False)
        self._batch = None
        self._draw(trainer)
        step = trainer.global_step
        payload = {
            "findings": self.findings,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "not_run": sorted(self._not_run),
            "frozen": dict(self._frozen),
            "started_later": self.started_later(),
            "gradscaler_skipped_steps": self._skipped,
            "thresholds": self.thresholds.as_dict(),
        }
        self.emit_text(trainer, f"viz/{self.viz_name}/summary", self.summary_text(), step, "health_summary")
        self.emit_data(trainer, "health_summary", payload)
        super().on_fit_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_hooks(finish=False)
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_hooks(finish=False)
        self._batch = None
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": [dict(f) for f in self.findings],
            "flagged": sorted(list(k) for k in self._flagged),
            "epoch_losses": list(self._epoch_losses),
            **self.schedule.state_dict(),
            "trains_since": dict(self._trains_since),
            "frozen_at_start": sorted(self._frozen_at_start or ()),
            "origin": self._origin,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the findings (a resumed run does not warn again about them) and the epoch losses."""
        self.findings = [dict(f) for f in state_dict.get("findings", [])]
        flagged = state_dict.get("flagged") or [(f["check"], f["layer"]) for f in self.findings]
        self._flagged = {(str(c), str(k)) for c, k in flagged}
        self._epoch_losses = [float(v) for v in state_dict.get("epoch_losses", [])]
        # "opt_steps": the name before the schedule was shared (lightning-viz 0.x checkpoints)
        self.schedule.load_state_dict(
            {"optimizer_steps": state_dict.get("optimizer_steps", state_dict.get("opt_steps"))}
        )
        self._trains_since = {str(k): int(v) for k, v in state_dict.get("trains_since", {}).items()}
        start = state_dict.get("frozen_at_start")
        self._frozen_at_start = set(start) if start is not None and "trains_since" in state_dict else None
        self._origin = state_dict.get("origin")

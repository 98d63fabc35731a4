"""TrainingHealthCallback: automatic diagnosis of common training pathologies, from statistics already captured.

Sources (no second forward pass, ever):

* weights and gradients: the ``"histograms"`` records a :class:`~lightning_viz.WeightHistogramCallback`
  publishes (norms, non-finite counts). Without one that logs ``"both"`` for every parameter, this
  callback calls :func:`lightning_viz.core.stats.histogram_set` itself (2 bins) on its own logging steps;
* activations: the ``"activation_stats"`` records of an :class:`~lightning_viz.ActivationMapCallback`
  (layers whose type is ReLU-like or bounded), and, with ``activation_hooks``, forward hooks on the
  activation modules (``ReLU``, ``ReLU6``, ``Tanh``, ``Sigmoid``, ...) during the *training* forward of
  logging steps only: they reduce each output to seven numbers and exist for that one batch;
* update sizes: a copy of the weights (``ndim >= 2``) taken in ``on_before_optimizer_step`` of logging steps,
  compared with the weights after the step in ``on_train_batch_end``;
* loss: the monitored step value (a tensor Lightning already holds) is kept every step without a host sync
  and examined at logging steps and epoch ends.

Every rank computes the same decisions: published records are already reduced, and this callback's own
sums (activations, update sizes, losses) travel in one ``reduce_values`` call per logging step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed, stats
from lightning_viz.core.activation_stats import NSUMS, output_sums, saturation_bounds, stats_from_sums
from lightning_viz.core.base import VizCallback, WhenFull, check_int, step_stem
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
RELU_LIKE = ("ReLU", "ReLU6", "Threshold")
BOUNDED = ("Tanh", "Sigmoid", "Softsign", "Hardtanh", "Hardsigmoid")
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


# ---------------------------------------------------------------------- the checks' arithmetic (pure)
def activation_flags(
    layers: Mapping[str, Mapping[str, float]], types: Mapping[str, str], dead: float, saturated: float
) -> list[tuple[str, str, float]]:
    """``(check, layer, value)`` for ReLU-like layers whose exact-zero fraction is ``>= dead`` and bounded
    layers whose saturated fraction is ``>= saturated``, in the given layer order."""
    out = []
    for name, st in layers.items():
        kind = types.get(name, "")
        if kind in RELU_LIKE and st.get("dead_fraction", math.nan) >= dead:
            out.append(("dead_units", name, float(st["dead_fraction"])))
        if kind in BOUNDED and st.get("saturated_fraction", math.nan) >= saturated:
            out.append(("saturation", name, float(st["saturated_fraction"])))
    return out


def depth_ratios(norms: Sequence[float]) -> np.ndarray:
    """Each layer's gradient norm divided by the last (deepest) layer's; NaN when the last is 0, Inf or NaN."""
    x = np.asarray(norms, dtype=np.float64)
    if x.size == 0:
        return x
    with np.errstate(divide="ignore", invalid="ignore"):
        return x / x[-1] if 0 < x[-1] < math.inf else np.full_like(x, np.nan)


def update_ratio(before_sq: np.ndarray, diff_sq: np.ndarray) -> np.ndarray:
    """``||W_after - W_before|| / ||W_before||`` from the two sums of squares (NaN where ``W_before`` is 0)."""
    b, d = np.asarray(before_sq, dtype=np.float64), np.asarray(diff_sq, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, np.sqrt(d) / np.sqrt(b), np.nan)


def loss_spikes(history: Sequence[float], values: Sequence[float], factor: float, window: int) -> list[int]:
    """Indices ``i`` of ``values`` with ``values[i] > factor * median(previous window finite values)``.

    ``history`` holds the values before ``values`` (the window is filled from it first); a spike is judged
    once ``min(window, 3)`` earlier finite values exist, and a spike does not enter the window.
    """
    recent = [v for v in history if math.isfinite(v)][-window:]
    out = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if len(recent) >= min(window, MIN_SPIKE_HISTORY) and v > factor * float(np.median(recent)):
            out.append(i)
            continue
        recent = [*recent[1 - window :], v] if window > 1 else [v]
    return out


def plateau_improvement(epoch_means: Sequence[float], patience: int) -> float | None:
    """Relative improvement of the best epoch mean over the last ``patience`` epochs on the best before
    them: ``(best_before - best_recent) / |best_before|``; ``None`` with fewer than ``patience + 1`` epochs."""
    means = [m for m in epoch_means if math.isfinite(m)]
    if len(means) < patience + 1:
        return None
    before, recent = min(means[:-patience]), min(means[-patience:])
    return (before - recent) / abs(before) if before != 0 else (0.0 if recent >= before else math.inf)


def first_nonfinite(names: Sequence[str], counts: Sequence[float]) -> tuple[str, int] | None:
    """The first name (in order) whose count of NaN/Inf values is positive, and that count."""
    return next(((n, int(c)) for n, c in zip(names, counts) if c > 0), None)


def _check_positive(name: str, value: Any, upper: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if not ok or (upper is not None and value > upper):
        span = f"in (0, {upper}]" if upper is not None else "a number > 0"
        raise ValueError(f"`{name}` must be {span}; got {value!r}")


class TrainingHealthCallback(VizCallback):
    """Automatic training-health checks: dead and saturated units, vanishing and exploding gradients,
    update-to-weight ratios, NaN/Inf, loss spikes and plateaus, each named with its first affected layer.

    Each finding gives one ``VizWarning`` on rank 0 (once per check and layer, with the step), e.g.
    ``TrainingHealthCallback: dead units: features.act1 at step 5: ...``; scalars ``health/<check>/<layer>``
    go to the loggers on every examined step; ``health_stepNNNNNN.png`` (gradient norms across depth, update
    ratios, activation fractions, and the loss with every finding marked; flagged layers in red) is drawn
    every epoch; ``health_summary.txt`` and ``health_summary.json`` list the findings at fit end.

    Args:
        every_n_steps: examine every N-th optimizer step; ``null`` follows ``trainer.log_every_n_steps``.
        checks: which checks run (default: all): ``dead_units``, ``saturation``, ``vanishing_gradients``,
            ``exploding_gradients``, ``update_ratio``, ``nonfinite``, ``loss_spike``, ``loss_plateau``.
        dead_threshold: a ReLU-like layer is dead when this fraction of its outputs, over the whole batch,
            is exactly zero (a healthy ReLU has about half).
        saturation_threshold: a tanh/sigmoid layer is saturated when this fraction of its outputs lies near
            its bounds.
        saturation_level: "near the bounds" for the hooked layers: ``|a - centre| >= level * half range``
            (records of an ActivationMapCallback use its own ``saturation_threshold``).
        vanishing_ratio: gradients vanish when a weight's gradient norm is below this times the deepest
            weight's (weights are parameters with ``ndim >= 2``, in registration order).
        exploding_norm: gradients explode when any parameter's gradient norm exceeds this.
        exploding_growth: gradients also explode when the total gradient norm exceeds this times the first
            one examined.
        tiny_update_ratio: updates are negligible when ``||W_after - W_before|| / ||W_before||`` of one
            optimizer step is below this (about 1e-3 is healthy).
        large_update_ratio: updates are too large when that ratio exceeds this.
        spike_factor: a loss spike is a step loss above this times the median of the previous
            ``spike_window`` step losses (judged once 3 earlier losses exist).
        spike_window: step losses in the running median.
        plateau_patience: a plateau is when the epoch-mean loss improved by less than
            ``plateau_tolerance`` (relative) over this many epochs.
        plateau_tolerance: smallest relative improvement over ``plateau_patience`` epochs.
        monitor: the logged step loss (``<monitor>`` or ``<monitor>_step``).
        activation_hooks: hook the activation modules during the training forward of examined steps.
        log_scalars: send the ``health/...`` scalars to the loggers.
        output_dir: where files go; default ``<trainer.log_dir>/viz/training_health``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "training_health"

    def __init__(
        self,
        every_n_steps: int | None = None,
        checks: list[Check] | None = None,
        dead_threshold: float = 0.9,
        saturation_threshold: float = 0.5,
        saturation_level: float = 0.99,
        vanishing_ratio: float = 1e-3,
        exploding_norm: float = 1e3,
        exploding_growth: float = 1e3,
        tiny_update_ratio: float = 1e-6,
        large_update_ratio: float = 0.5,
        spike_factor: float = 5.0,
        spike_window: int = 20,
        plateau_patience: int = 3,
        plateau_tolerance: float = 1e-3,
        monitor: str = "train_loss",
        activation_hooks: bool = True,
        log_scalars: bool = True,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("every_n_steps", every_n_steps, 1, optional=True)
        check_int("spike_window", spike_window, 1)
        check_int("plateau_patience", plateau_patience, 1)
        for name in ("dead_threshold", "saturation_threshold", "saturation_level"):
            _check_positive(name, locals()[name], upper=1.0)
        for name in ("vanishing_ratio", "exploding_norm", "exploding_growth", "tiny_update_ratio"):
            _check_positive(name, locals()[name])
        _check_positive("large_update_ratio", large_update_ratio)
        _check_positive("spike_factor", spike_factor)
        if isinstance(plateau_tolerance, bool) or not isinstance(plateau_tolerance, (int, float)):
            raise ValueError(f"`plateau_tolerance` must be a number; got {plateau_tolerance!r}")
        bad = [c for c in checks or () if c not in CHECKS]
        if checks is not None and (isinstance(checks, str) or bad):
            raise ValueError(f"`checks` must be a list of {list(CHECKS)}; got {checks!r}")
        self.every_n_steps = every_n_steps
        self.checks = tuple(CHECKS if checks is None else checks)
        self.dead_threshold, self.saturation_threshold = float(dead_threshold), float(saturation_threshold)
        self.saturation_level, self.vanishing_ratio = float(saturation_level), float(vanishing_ratio)
        self.exploding_norm, self.exploding_growth = float(exploding_norm), float(exploding_growth)
        self.tiny_update_ratio, self.large_update_ratio = float(tiny_update_ratio), float(large_update_ratio)
        self.spike_factor, self.spike_window = float(spike_factor), spike_window
        self.plateau_patience, self.plateau_tolerance = plateau_patience, float(plateau_tolerance)
        self.monitor, self.activation_hooks, self.log_scalars = monitor, activation_hooks, log_scalars
        self.findings: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}
        self._flagged: set[tuple[str, str]] = set()
        self._weights: list[tuple[str, torch.Tensor]] = []
        self._act_modules: dict[str, nn.Module] = {}
        self._own_histograms = True
        self._handles: list[Any] = []
        self._hooked = False
        self._acc: dict[str, torch.Tensor] = {}
        self._step: int | None = None  # the examined step in progress
        self._before: list[tuple[str, torch.Tensor, torch.Tensor, bool]] | None = None
        self._pending: list[tuple[int, torch.Tensor | None]] = []  # (step, loss or None) not yet examined
        self._loss_steps: list[int] = []
        self._loss_values: list[float] = []
        self._epoch_losses: list[float] = []
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._first_total_grad: float | None = None
        self._latest: dict[str, Any] = {"grad": {}, "update": {}, "act": {}}
        self._drawn = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(output_dir=self.output_dir, monitor=self.monitor)

    # ------------------------------------------------------------------ setup
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning_viz.callbacks.activation_map import ActivationMapCallback
        from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback

        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        self._weights = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self._own_histograms = not any(
            isinstance(cb, WeightHistogramCallback) and cb.log_what == "both" and cb.layers is None
            for cb in callbacks
        )
        types = RELU_LIKE + BOUNDED
        self._act_modules = {n: m for n, m in pl_module.named_modules() if n and type(m).__name__ in types}
        has_map = any(isinstance(cb, ActivationMapCallback) for cb in callbacks)
        if not (self.activation_hooks and self._act_modules) and not has_map:
            why = (
                "`activation_hooks` is off and no ActivationMapCallback is in the trainer"
                if not self.activation_hooks
                else "the model has no ReLU/Tanh/Sigmoid-like module to hook (functional activations are "
                "not seen) and no ActivationMapCallback is in the trainer"
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

    def _every(self, trainer: Trainer) -> int:
        return self.every_n_steps or max(1, int(trainer.log_every_n_steps))

    # ------------------------------------------------------------------ capture (every rank)
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if self._step is not None or step % self._every(trainer):
            return
        self._step, self._acc = step, {}
        # the same on every rank, so that every rank reduces the same rows
        self._hooked = self.activation_hooks and bool(
            {"dead_units", "saturation", "nonfinite"} & set(self.checks)
        )
        if self._hooked:
            for name, module in self._act_modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                vec = output_sums(output.detach(), saturation_bounds(module), self.saturation_level)
                self._acc[name] = self._acc[name] + vec if name in self._acc else vec

        return hook

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._step is None or self._step != trainer.global_step or self._before is not None:
            return
        self._remove_hooks()  # the forward (and backward) of this step are done
        if self._own_histograms:
            names = [f"weights/{n}" for n, _ in self._weights] + [f"gradients/{n}" for n, _ in self._weights]
            tensors = [p for _, p in self._weights] + [p.grad for _, p in self._weights]
            hs, failed = stats.histogram_set(tensors, names, 2)
            if not failed:
                self._on_histograms(trainer, self._step, hs)
        if "update_ratio" in self.checks:
            self._before = []
            for name, p in self._weights:
                if p.ndim >= 2 and p.grad is not None:
                    local, contributes = distributed.local_view(p)
                    self._before.append((name, p, local.detach().clone(), contributes))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any
    ) -> None:
        self._keep_loss(trainer)
        if self._step is not None and trainer.global_step > self._step:
            self._examine(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._examine(trainer)
        if self._loss_values:
            mean = self._epoch_sum / self._epoch_count if self._epoch_count else math.nan
            self._epoch_losses.append(mean)
        self._epoch_sum, self._epoch_count = 0.0, 0
        if "loss_plateau" in self.checks:
            gain = plateau_improvement(self._epoch_losses, self.plateau_patience)
            if gain is not None:
                self._scalars(trainer, {"health/loss_improvement": gain}, trainer.global_step)
                if gain < self.plateau_tolerance:
                    self._flag(
                        trainer,
                        "loss_plateau",
                        self.monitor,
                        trainer.global_step,
                        gain,
                        self.plateau_tolerance,
                        f"the epoch-mean loss improved by {gain:.2%} over the last {self.plateau_patience} "
                        f"epochs (tolerance {self.plateau_tolerance:.2%})",
                    )
        self._draw(trainer)

    def _keep_loss(self, trainer: Trainer) -> None:
        if not {"loss_spike", "loss_plateau", "nonfinite"} & set(self.checks):
            return
        results = getattr(trainer, "_results", None)
        metrics = results.metrics(True)["callback"] if results is not None else {}
        value = metrics.get(self.monitor, metrics.get(f"{self.monitor}_step"))
        if isinstance(value, torch.Tensor):
            self._pending.append((trainer.global_step - 1, value.detach().reshape(-1)[:1].to(torch.float64)))
        else:
            self._pending.append((trainer.global_step - 1, None))  # not logged at this step

    def _examine(self, trainer: Trainer) -> None:
        """Every rank: one reduce of the own sums, then the same decisions everywhere."""
        self._remove_hooks()
        step, before, pending = self._step, self._before or [], self._pending
        if step is None and not pending:
            return
        acc, self._acc = self._acc, {}
        names = list(self._act_modules) if self._hooked and step is not None else []
        self._step, self._before, self._pending, self._hooked = None, None, [], False
        act = torch.zeros(len(names), NSUMS, dtype=torch.float64)
        for i, n in enumerate(names):
            if n in acc:
                act[i] = acc[n].cpu()
        upd = torch.zeros(len(before), 2, dtype=torch.float64)
        for i, (_, p, old, contributes) in enumerate(before):
            if contributes:
                new = distributed.local_view(p)[0].detach()
                upd[i, 0] = old.double().square().sum()
                upd[i, 1] = (new.double() - old.double()).square().sum()
        loss = torch.zeros(0, dtype=torch.float64)
        kept = [v for _, v in pending if v is not None]
        if kept:  # one host copy for all the kept step losses; a missing value is NaN
            dev = kept[0].device
            nan = torch.full((1,), math.nan, dtype=torch.float64, device=dev)
            loss = torch.cat([nan if v is None else v.to(dev) for _, v in pending]).cpu()
        elif pending:
            loss = torch.full((len(pending),), math.nan, dtype=torch.float64)
        red, failed = distributed.reduce_values(
            {"act": act, "upd": upd, "loss": loss}, {"act": "sum", "upd": "sum", "loss": "mean"}
        )
        if failed:
            return
        at = step if step is not None else trainer.global_step
        scalars: dict[str, float] = {}
        if names:
            layers = {
                n: stats_from_sums(row.tolist(), saturation_bounds(self._act_modules[n]) is not None)
                for n, row in zip(names, red["act"].cpu())
            }
            types = {n: type(self._act_modules[n]).__name__ for n in names}
            self._on_activations(trainer, at, layers, types, red["act"][:, 6].cpu().numpy(), scalars)
        if before:
            ratios = update_ratio(*red["upd"].cpu().numpy().T)
            self._on_updates(trainer, at, [b[0] for b in before], ratios, scalars)
        if pending:
            present = [v is not None for _, v in pending]
            values = [v for v, ok in zip(red["loss"].cpu().tolist(), present) if ok]
            self._on_losses(trainer, [s for (s, _), ok in zip(pending, present) if ok], values, scalars)
        self._scalars(trainer, scalars, at)

    # ------------------------------------------------------------------ published records (every rank)
    def on_viz_record(self, trainer: Trainer, source: Any, kind: str, step: int, payload: Any) -> None:
        if kind == "histograms" and not self._own_histograms:
            self._on_histograms(trainer, step, payload)
        elif kind == "activation_stats":
            types = payload.get("_types", {})
            layers = {
                n: st for n, st in payload.items() if n != "_types" and types.get(n) in RELU_LIKE + BOUNDED
            }
            nan_layers = [
                n for n, st in payload.items() if n != "_types" and not math.isfinite(st.get("mean", 0.0))
            ]
            scalars: dict[str, float] = {}
            self._on_activations(trainer, step, layers, types, np.zeros(len(layers)), scalars)
            if nan_layers and "nonfinite" in self.checks:
                self._flag(
                    trainer,
                    "nonfinite",
                    nan_layers[0],
                    step,
                    math.nan,
                    0.0,
                    "every output of the sample batch is NaN/Inf (activations)",
                )
            self._scalars(trainer, scalars, step)

    # ------------------------------------------------------------------ decisions (every rank)
    def _on_activations(
        self,
        trainer: Trainer,
        step: int,
        layers: Mapping[str, Mapping[str, float]],
        types: Mapping[str, str],
        nonfinite: np.ndarray,
        scalars: dict[str, float],
    ) -> None:
        for name, st in layers.items():
            key = "dead_fraction" if types.get(name) in RELU_LIKE else "saturated_fraction"
            if math.isfinite(st.get(key, math.nan)):
                scalars[f"health/{key}/{name}"] = st[key]
                self._latest["act"][name] = (key, float(st[key]))
        for check, name, value in activation_flags(
            layers, types, self.dead_threshold, self.saturation_threshold
        ):
            if check not in self.checks:
                continue
            limit = self.dead_threshold if check == "dead_units" else self.saturation_threshold
            what = "exactly zero" if check == "dead_units" else "at its bounds"
            self._flag(
                trainer,
                check,
                name,
                step,
                value,
                limit,
                f"{value:.1%} of its outputs are {what} (threshold {limit:.0%})",
            )
        hit = first_nonfinite(list(layers), nonfinite)
        if hit and "nonfinite" in self.checks:
            self._flag(
                trainer, "nonfinite", hit[0], step, hit[1], 0.0, f"{hit[1]} NaN/Inf activations (first layer)"
            )

    def _on_histograms(self, trainer: Trainer, step: int, hs: stats.HistogramSet) -> None:
        ndim = {n: p.ndim for n, p in self._weights}
        if "nonfinite" in self.checks:
            for sel in ("weights", "gradients"):
                idx = [i for i, n in enumerate(hs.names) if n.startswith(f"{sel}/")]
                hit = first_nonfinite(
                    [hs.names[i].split("/", 1)[1] for i in idx], [hs.nonfinite[i] for i in idx]
                )
                if hit:
                    self._flag(
                        trainer,
                        "nonfinite",
                        hit[0],
                        step,
                        hit[1],
                        0.0,
                        f"{hit[1]} NaN/Inf values in its {sel[:-1]} (the first layer affected)",
                        key=f"{sel}:{hit[0]}",
                    )
        # a gradient holding NaN/Inf counts as an infinite norm (the end point of an explosion)
        grads = [
            (n.split("/", 1)[1], math.inf if hs.nonfinite[i] else float(hs.norm[i]))
            for i, n in enumerate(hs.names)
            if n.startswith("gradients/") and hs.numel[i] > 0
        ]
        scalars: dict[str, float] = {
            f"health/nonfinite/{n}": float(c) for n, c in zip(hs.names, hs.nonfinite) if c > 0
        }
        if self._own_histograms:  # else WeightHistogramCallback logs them as grad_norm/<param>
            scalars.update({f"health/grad_norm/{n}": v for n, v in grads})
        if not grads:
            self._scalars(trainer, scalars, step)
            return
        self._latest["grad"] = dict(grads)
        self._latest["grad_step"] = step
        deepest = [v for n, v in grads if ndim.get(n, 2) >= 2][-1:]
        self._latest["vanishing_below"] = self.vanishing_ratio * deepest[0] if deepest else None
        total = math.sqrt(sum(v * v for _, v in grads))
        if "exploding_gradients" in self.checks:
            if self._first_total_grad is None and total > 0:
                self._first_total_grad = total
            big = [(n, v) for n, v in grads if v > self.exploding_norm]
            for n, v in big:
                self._flag(
                    trainer,
                    "exploding_gradients",
                    n,
                    step,
                    v,
                    self.exploding_norm,
                    f"gradient norm {v:.3g} > {self.exploding_norm:.3g}",
                )
            if not big and self._first_total_grad and total > self.exploding_growth * self._first_total_grad:
                growth = total / self._first_total_grad
                self._flag(
                    trainer,
                    "exploding_gradients",
                    grads[0][0],
                    step,
                    growth,
                    self.exploding_growth,
                    f"the total gradient norm grew {growth:.3g}x since the first check",
                )
        weights = [(n, v) for n, v in grads if ndim.get(n, 2) >= 2]
        if "vanishing_gradients" in self.checks and len(weights) >= 2:
            ratios = depth_ratios([v for _, v in weights])
            scalars["health/grad_norm_ratio"] = float(ratios[0])
            low = [(n, r) for (n, _), r in zip(weights[:-1], ratios[:-1]) if r < self.vanishing_ratio]
            for n, r in low:
                self._flag(
                    trainer,
                    "vanishing_gradients",
                    n,
                    step,
                    r,
                    self.vanishing_ratio,
                    f"its gradient norm is {r:.2e} x that of {weights[-1][0]} "
                    f"(threshold {self.vanishing_ratio:.0e})",
                )
        self._scalars(trainer, scalars, step)

    def _on_updates(
        self, trainer: Trainer, step: int, names: list[str], ratios: np.ndarray, scalars: dict[str, float]
    ) -> None:
        self._latest["update"] = {n: float(r) for n, r in zip(names, ratios)}
        for n, r in zip(names, ratios):
            if math.isfinite(r):
                scalars[f"health/update_ratio/{n}"] = float(r)
        for check, test, limit in (
            ("tiny_updates", lambda r: r < self.tiny_update_ratio, self.tiny_update_ratio),
            ("large_updates", lambda r: r > self.large_update_ratio, self.large_update_ratio),
        ):
            for n, r in zip(names, ratios):
                if math.isfinite(r) and test(r):
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
            self._flag(trainer, "nonfinite", self.monitor, bad[0], bad[1], 0.0, f"the loss is {bad[1]}")
        if "loss_spike" in self.checks:
            for i in loss_spikes(self._loss_values, values, self.spike_factor, self.spike_window):
                prior = [v for v in self._loss_values + values[:i] if math.isfinite(v)][-self.spike_window :]
                med = float(np.median(prior))
                self._flag(
                    trainer,
                    "loss_spike",
                    self.monitor,
                    steps[i],
                    values[i] / med,
                    self.spike_factor,
                    f"{values[i]:.4g} is {values[i] / med:.3g}x the median of the previous "
                    f"{self.spike_window} steps",
                )
                break
        prior = [v for v in self._loss_values if math.isfinite(v)][-self.spike_window :]
        if len(prior) >= MIN_SPIKE_HISTORY and math.isfinite(values[-1]) and np.median(prior) > 0:
            scalars["health/loss_to_median"] = values[-1] / float(np.median(prior))
        finite = [v for v in values if math.isfinite(v)]
        self._epoch_sum, self._epoch_count = self._epoch_sum + sum(finite), self._epoch_count + len(finite)
        self._loss_steps += steps
        self._loss_values += values
        if len(self._loss_values) > MAX_LOSS_POINTS:  # thin the older half of the curve; keep the window
            keep = list(range(0, len(self._loss_values) - self.spike_window, 2))
            keep += range(len(self._loss_values) - self.spike_window, len(self._loss_values))
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
    ) -> None:
        """Record a finding once per (check, layer); warn on rank 0."""
        ident = (check, key or layer)
        if ident in self._flagged:
            return
        self._flagged.add(ident)
        message = f"TrainingHealthCallback: {PATHOLOGY[check]}: {layer} at step {step}: {detail}."
        self.findings.append(
            {
                "check": check,
                "pathology": PATHOLOGY[check],
                "layer": layer,
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
            "thresholds": self.thresholds(),
        }

    def thresholds(self) -> dict[str, float]:
        names = (
            "dead_threshold",
            "saturation_threshold",
            "saturation_level",
            "vanishing_ratio",
            "exploding_norm",
            "exploding_growth",
            "tiny_update_ratio",
            "large_update_ratio",
            "spike_factor",
            "spike_window",
            "plateau_patience",
            "plateau_tolerance",
        )
        return {n: getattr(self, n) for n in names}

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
                cumulative=True,
            )

    def summary_text(self) -> str:
        lines = [f"training health: {len(self.findings)} finding(s)"]
        lines += [f"  step {f['step']:>6}  {f['message']}" for f in self.findings] or ["  no problem found"]
        lines += [f"  unavailable: {k}: {v}" for k, v in self.unavailable.items()]
        return "\n".join(lines) + "\n"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hooks()
        self._draw(trainer)
        step = trainer.global_step
        payload = {
            "findings": self.findings,
            "unavailable": self.unavailable,
            "thresholds": self.thresholds(),
        }
        self.emit_text(trainer, f"viz/{self.viz_name}/summary", self.summary_text(), step, "health_summary")
        self.emit_data(trainer, "health_summary", payload)
        super().on_fit_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": [dict(f) for f in self.findings],
            "flagged": sorted(list(k) for k in self._flagged),
            "epoch_losses": list(self._epoch_losses),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the findings (a resumed run does not warn again about them) and the epoch losses."""
        self.findings = [dict(f) for f in state_dict.get("findings", [])]
        flagged = state_dict.get("flagged") or [(f["check"], f["layer"]) for f in self.findings]
        self._flagged = {(str(c), str(k)) for c, k in flagged}
        self._epoch_losses = [float(v) for v in state_dict.get("epoch_losses", [])]

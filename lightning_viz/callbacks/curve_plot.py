"""CurvePlotCallback: curves of the logged metrics, grouped into panels, redrawn every epoch.

Recording costs no collective and no host sync on the training step: step-level values are the tensors
Lightning already holds for its loggers (in ``trainer._results``, synced when the user asked for
``sync_dist``), kept detached and copied to the host in one go at the end of each epoch. Epoch-level
values are read when the training epoch and each validation run end (not during the sanity check), those
of every validation dataloader (``val_loss/dataloader_idx_0``, ``_1``, ...). Points are placed at the step
Lightning's loggers use, so they line up with TensorBoard. The reads of Lightning's private state are in
:mod:`lightning_viz.core.lightning_state`, each with the Lightning version it was written for and why.

Files under ``<log_dir>/viz/curves/``: ``curves_epoch{EEE}.png`` each epoch (``EEE`` = the epoch index,
the last one drawn again at fit end if points arrived after it) and one ``curves.json``, rewritten each
epoch: the whole history behind the latest figure (the figure of epoch ``e`` is drawn from the points
with ``epoch <= e``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import Metric

from lightning_viz.core import lightning_state
from lightning_viz.core.base import VizCallback, WhenFull, check_choice
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.metric_directions import (
    Mode,
    best_direction,
    direction_of,
    metric_attributes,
    monitor_modes,
)
from lightning_viz.core.metric_names import assemble_panels, lr_names, unmatched_patterns
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import warn_once
from lightning_viz.render.curves import render_curves

DEFAULT_PANELS: dict[str, list[str]] = {"loss": ["*loss*"], "accuracy": ["*acc*"], "learning rate": ["lr*"]}
Value = float | torch.Tensor


class CurvePlotCallback(VizCallback):
    """Learning curves of every logged metric: panels chosen by name patterns, smoothing, best value marked.

    Every metric logged with ``self.log`` (step- or epoch-level, training and validation, of every
    validation dataloader, torchmetrics objects included) is recorded and drawn; panels pick them by
    case-insensitive glob patterns over the logged names (``train_loss_step``, ``train_loss_epoch``,
    ``val_acc``, ``val_loss/dataloader_idx_1``, ...), and with ``include_other`` each metric no pattern
    matched gets a panel of its own, shared with the same quantity of the other stages (``train_mae_epoch``
    and ``val_mae`` in one ``mae`` panel). The history lives in the callback's state, so a run resumed from
    a checkpoint continues its curves. Lightning calls callbacks' ``on_train_epoch_end`` before the
    LightningModule's, so values the module logs in its own ``on_train_epoch_end`` are not seen: log them
    from ``training_step`` with ``on_epoch=True`` (or from ``on_validation_epoch_end``).

    The best point of a curve is its minimum or its maximum, taken from, in this order: ``mode``; the
    ``higher_is_better`` of the torchmetrics ``Metric`` behind the value (logged as a Metric object, or a
    Metric attribute of the LightningModule named like the logged value); the ``mode`` of a
    ``ModelCheckpoint`` or ``EarlyStopping`` that monitors it; the minimum for a name containing ``loss``.
    Nothing else is guessed from the name: a curve whose direction none of these gives has no best point,
    and its legend says ``direction unknown`` (set ``mode`` for it). Learning rates have no best point.

    Args:
        panels: panel title -> glob patterns over metric names. A metric goes into every panel it matches.
            Default: ``{"loss": ["*loss*"], "accuracy": ["*acc*"], "learning rate": ["lr*"]}``.
        include_other: also draw the metrics no panel matched: one panel per quantity (the name without a
            ``train_``/``val_``/``test_`` prefix, ``_step``/``_epoch`` suffix or dataloader suffix).
        x_axis: ``"step"`` (the logger's step) or ``"epoch"`` (epochs completed; step-level points spread
            inside their epoch).
        smoothing: EMA factor in [0, 1): ``s[t] = smoothing * s[t-1] + (1 - smoothing) * v[t]``, applied
            to step-level curves (not to epoch-level points or learning rates); the raw values stay as a
            thin line. 0 draws the raw values only.
        mark_best: mark and annotate the best value of each curve whose direction is known (see above).
        mode: metric name or glob pattern -> ``"min"`` or ``"max"``: which value is best, ahead of every
            other source (e.g. ``{val_mae: min, "*f1*": max}``).
        log_lr: record each optimizer param group's learning rate as ``lr-<Optimizer>`` (``/pgN`` appended
            when it has several groups, ``-K`` when several optimizers share a class), on recorded steps.
        every_n_steps: record step-level values (and learning rates) every N-th optimizer step: steps 0,
            N, 2N, ...; ``"log_every_n_steps"`` (the default) follows the Trainer's; ``null`` records
            epoch-level values only. The same schedule in every lightning-viz callback.
        output_dir: where files go; default ``<trainer.log_dir>/viz/curves``.
        when_full: what to do when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "curves"
    section_title, report_rank = "Learning curves", 2
    figures = (
        FigureSpec(
            "curves",
            "Curves of every logged metric",
            "lightning_viz.render.curves:render_curves",
            "curves.json",
            cumulative=True,
            latest_only=True,
        ),
    )

    def __init__(
        self,
        panels: dict[str, list[str]] | None = None,
        include_other: bool = True,
        x_axis: Literal["step", "epoch"] = "step",
        smoothing: float = 0.0,
        mark_best: bool = True,
        mode: dict[str, Mode] | None = None,
        log_lr: bool = True,
        every_n_steps: EveryNSteps = "log_every_n_steps",
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_choice("x_axis", x_axis, ("step", "epoch"))
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
            raise ValueError(f"`smoothing` must be a number in [0, 1) (0 = no smoothing); got {smoothing!r}")
        self.schedule = Schedule(every_n_steps)
        self._check_patterns = panels is not None  # the default panels may match nothing, silently
        panels = dict(DEFAULT_PANELS if panels is None else panels)
        for title, patterns in panels.items():
            if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
                raise ValueError(
                    f"`panels[{title!r}]` must be a non-empty list of glob patterns; got {patterns!r}"
                )
        for key, value in (mode or {}).items():
            check_choice(f"mode[{key!r}]", value, ("min", "max"))
        self.panels = {str(t): list(p) for t, p in panels.items()}
        self.include_other = include_other
        self.x_axis = x_axis
        self.smoothing = float(smoothing)
        self.mark_best = mark_best
        self.mode = dict(mode or {})
        self.log_lr = log_lr
        self.every_n_steps = every_n_steps
        self._due: int | None = None  # the logger step of the due batch that runs now
        self._step_recorded = False
        self.history: dict[str, list[list[float]]] = {}  # name -> [[step, epoch, value], ...]
        self._index: dict[str, dict[tuple[int, int], int]] = {}
        self.step_level: set[str] = set()  # names recorded per step (smoothed); the others once per epoch
        self._pending: list[tuple[str, int, int, Value]] = []
        self._lr_names: list[str] = []
        self._lr_key: tuple[int, ...] = ()
        self._version = 0
        self._drawn_version = 0
        self._panels_checked = False
        self._base: dict[str, str] = {}  # logged name -> its name before Lightning's _step/_epoch
        self._better: dict[str, bool | None] = {}  # name -> higher_is_better of the Metric behind it
        self._monitors: dict[str, tuple[Mode, str]] = {}  # monitored name -> (mode, callback class)

    # ------------------------------------------------------------------ recording
    def _record(self, name: str, step: int, epoch: int, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                return
            value = value.detach()
        elif not isinstance(value, (int, float)):
            return
        self._pending.append((name, step, epoch, value))

    def _add(self, name: str, step: int, epoch: int, value: float) -> None:
        points = self.history.setdefault(name, [])
        index = self._index.setdefault(name, {})
        at = index.get((step, epoch))
        if at is None:  # a point at the same step and epoch is replaced (no duplicates after a resume)
            index[(step, epoch)] = len(points)
            points.append([step, epoch, value])
        else:
            points[at][2] = value
        self._version += 1

    def _flush(self) -> None:
        """Move the pending values to the history: one host copy per device and dtype."""
        pending, self._pending = self._pending, []
        groups: dict[tuple[Any, Any], list[int]] = {}
        values: list[float] = [math.nan] * len(pending)
        for i, (_, _, _, v) in enumerate(pending):
            if isinstance(v, torch.Tensor):
                groups.setdefault((v.device, v.dtype), []).append(i)
            else:
                values[i] = float(v)
        for idx in groups.values():
            host = torch.stack([pending[i][3].reshape(()) for i in idx]).cpu().tolist()  # type: ignore[union-attr]
            for i, v in zip(idx, host):
                values[i] = float(v)
        for (name, step, epoch, _), v in zip(pending, values):
            self._add(name, step, epoch, v)

    def _lr_series(self, trainer: Trainer) -> list[tuple[str, dict[str, Any]]]:
        optimizers = list(trainer.optimizers)
        key = tuple(id(g) for o in optimizers for g in o.param_groups)
        if key != self._lr_key:  # named again only when the param groups change
            self._lr_key, self._lr_names = key, lr_names(optimizers)
        groups = [g for o in optimizers for g in o.param_groups]
        return list(zip(self._lr_names, groups))

    # ------------------------------------------------------------------ schedule (VizCallback counts)
    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        """A due step: the learning rates now, the step-level values at the end of this batch."""
        self._due = lightning_state.logger_step(trainer)  # the step Lightning's loggers use for this batch
        # the values of the previous due steps, long computed, come to the host now (a logging step): what
        # waits on the device stays one due step's worth, however long the epoch
        with self.guard(trainer, "step metric recording"):
            self._flush()
        if not self.log_lr:
            return
        with self.guard(trainer, "learning-rate recording"):
            for name, group in self._lr_series(trainer):
                lr = group.get("lr")
                self._record(
                    name, self._due, trainer.current_epoch, lr.clone() if isinstance(lr, torch.Tensor) else lr
                )
                self.step_level.add(name)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, self._due = self._due, None
        if step is None:
            return
        self._step_recorded = True
        with self.guard(trainer, "step metric recording"):
            for name, value in self._read(trainer, on_step=True):
                self._record(name, step, trainer.current_epoch, value)
                self.step_level.add(name)

    def _read(self, trainer: Trainer, on_step: bool) -> list[tuple[str, torch.Tensor]]:
        """The values logged now (see :func:`_logged`); notes the Metric object behind each one."""
        logged = lightning_state.logged_values(trainer, on_step)
        if logged is None:
            warn_once(
                (type(self).__name__, "lightning-state"),
                f"{type(self).__name__}: this Lightning version keeps logged values where this callback does "
                "not read them; the curves show `trainer.callback_metrics` at epoch ends only, and no best "
                "point from torchmetrics. Training continues.",
            )
            return [] if on_step else list(trainer.callback_metrics.items())
        for name, _, base, metric in logged:
            self._base[name] = base
            if isinstance(metric, Metric):
                self._better[name] = self._better[base] = getattr(metric, "higher_is_better", None)
        return [(name, value) for name, value, _, _ in logged]

    def _record_epoch_metrics(self, trainer: Trainer, step: int) -> None:
        # what was logged at epoch level in the loop that just ended, by every dataloader (already synced)
        for name, value in self._read(trainer, on_step=False):
            self._record(name, step, trainer.current_epoch, value)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        with self.guard(trainer, "validation metric recording"):
            self._record_epoch_metrics(trainer, lightning_state.logger_step(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        with self.guard(trainer, "epoch metric recording"):
            self._record_epoch_metrics(trainer, lightning_state.logger_step(trainer, epoch_end=True))
        self._draw(trainer)

    def finish(self, trainer: Trainer) -> None:
        self._draw(trainer)

    # ------------------------------------------------------------------ drawing
    def direction(self, name: str) -> tuple[Mode | None, str]:
        """Which value of a metric is best, and what says so (the order is in the class docstring).

        Returns:
            ``(mode, source)``: ``mode`` is ``"min"``, ``"max"`` or ``None`` (no best point); ``source`` is
            ``"mode"``, ``"torchmetrics"``, the monitoring callback's class name, ``"loss"`` (the name
            convention), ``"learning rate"`` or ``"unknown"``.
        """
        return best_direction(
            name,
            mode=self.mode,
            lr_names=self._lr_names,
            base=self._base,
            better=self._better,
            monitors=self._monitors,
        )

    def _learn_directions(self, trainer: Trainer) -> None:
        """The directions that the LightningModule's Metric attributes and the monitoring callbacks give."""
        for n, better in metric_attributes(trainer.lightning_module).items():
            self._better.setdefault(n, better)  # a Metric logged as an object has already said
        self._monitors, wrong = monitor_modes(trainer.callbacks, self._better)  # type: ignore[attr-defined]
        for monitor, mode, owner, better in wrong:  # a monitor keeping the worse end
            warn_once(
                (type(self).__name__, "monitor-mode", monitor),
                f"{type(self).__name__}: {owner}(monitor={monitor!r}, mode={mode!r}) keeps the "
                f"{'lowest' if mode == 'min' else 'highest'} {monitor}, but its torchmetrics metric says "
                f"{'higher' if better else 'lower'} is better: set mode={direction_of(better)!r} on that "
                f"{owner}. The curves mark the {'highest' if better else 'lowest'} value as best.",
            )

    def plot_data(self) -> dict[str, Any]:
        """The history as :func:`~lightning_viz.render.curves.render_curves` takes it (fresh copies)."""
        self._flush()
        names = sorted(self.history)
        series = {}
        for name in names:
            points = sorted(self.history[name], key=lambda p: (p[0], p[1]))
            mode, source = self.direction(name)
            series[name] = {
                "step": [int(p[0]) for p in points],
                "epoch": [int(p[1]) for p in points],
                "value": [float(p[2]) for p in points],
                "mode": mode,
                "mode_from": source,
                "smooth": name in self.step_level and not name.startswith("lr-"),
            }
        return {
            "x_axis": self.x_axis,
            "smoothing": self.smoothing,
            "mark_best": self.mark_best,
            "panels": assemble_panels(names, self.panels, self.include_other),
            "series": series,
        }

    def _draw(self, trainer: Trainer) -> None:
        self._flush()
        if self._version == self._drawn_version or not self.emitting(trainer):
            return
        self._drawn_version = self._version
        with self.guard(trainer, "curve drawing"):
            self._learn_directions(trainer)
            data = self.plot_data()
            stem = f"curves_epoch{trainer.current_epoch:03d}"
            self.emit_figure(
                trainer,
                render_curves,
                data,
                tag=f"viz/{self.viz_name}",
                stem=stem,
                step=trainer.global_step,
                save_data=False,
            )
            self.emit_data(trainer, "curves", {**data, "figure": stem})  # `lightning-viz render` redraws it
            self._check_panels(trainer)

    def _check_panels(self, trainer: Trainer) -> None:
        """After the first training epoch that holds a logging step, one warning naming the patterns of user-set ``panels`` that
        matched no logged metric, against the names that were logged."""
        if self._panels_checked or trainer.sanity_checking or not self._check_patterns:
            return
        # Step-level values (the learning rate, `on_step` metrics) are recorded on due steps only: until
        # one has passed, a pattern for them matches nothing though it is right. Check at a later epoch end.
        if not self._step_recorded and self.schedule.every_n_steps is not None:
            return
        self._panels_checked = True
        names = sorted(self.history)
        unmatched, closest = unmatched_patterns(names, self.panels, self.log_lr)
        if not unmatched or not names:
            return
        warn_once(
            (type(self).__name__, "panels"),
            f"{type(self).__name__}: after the first epoch, these `panels` patterns match no logged metric: "
            f"{unmatched}. Logged metrics: {names}"
            + (f"; closest: {closest}" if closest else "")
            + ". Patterns are case-insensitive globs over the logged names (e.g. '*loss*').",
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {
            "history": {name: [list(p) for p in points] for name, points in self.history.items()},
            "step_level": sorted(self.step_level),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history")
        if not isinstance(history, dict):
            warn_once(
                (type(self).__name__, "state"),
                f"{type(self).__name__}: the checkpoint holds no curve history (keys: {sorted(state_dict)}); "
                "the curves start again from here.",
            )
            return
        self.history, self._index, self._pending = {}, {}, []
        self.step_level = {str(n) for n in state_dict.get("step_level", [])}
        for name, points in history.items():
            for step, epoch, value in points:
                self._add(str(name), int(step), int(epoch), float(value))

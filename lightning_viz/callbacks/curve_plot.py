"""CurvePlotCallback: curves of the logged metrics, grouped into panels, redrawn every epoch.

Recording costs no collective and no host sync on the training step: step-level values are the tensors
Lightning already holds for its loggers (``trainer._results.metrics(True)["log"]``, synced when the user
asked for ``sync_dist``), kept detached and copied to the host in one go at the end of each epoch.
Epoch-level values are read when the training epoch and each validation run end (not during the
sanity check). Points are placed at the step Lightning's loggers use, so they line up with TensorBoard.

Files under ``<log_dir>/viz/curves/``: ``curves_epoch{EEE}.png`` each epoch (``EEE`` = the epoch index,
the last one drawn again at fit end if points arrived after it) and one ``curves.json``, rewritten each
epoch: the whole history behind the latest figure (the figure of epoch ``e`` is drawn from the points
with ``epoch <= e``).
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from difflib import get_close_matches
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.warn import warn_once
from lightning_viz.render.curves import render_curves

Mode = Literal["min", "max"]
DEFAULT_PANELS: dict[str, list[str]] = {"loss": ["*loss*"], "accuracy": ["*acc*"], "learning rate": ["lr*"]}
OTHER_PANEL = "other"
Value = float | torch.Tensor


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)


def _logger_step(trainer: Trainer, *, epoch_end: bool = False) -> int:
    """The step Lightning's loggers use for what is logged now (``global_step`` if that is unavailable)."""
    stepped = getattr(
        getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None
    )
    if not isinstance(stepped, int):
        return int(trainer.global_step)
    # Lightning logs epoch-end metrics at the step of the last batch, before the counter moves on.
    return max(stepped - 1, 0) if epoch_end else stepped


class CurvePlotCallback(VizCallback):
    """Learning curves of logged metrics: panels chosen by name patterns, smoothing, best value marked.

    Every metric logged with ``self.log`` (step- or epoch-level, training and validation, torchmetrics
    objects included) is recorded; panels pick them by case-insensitive glob patterns over the logged
    names (``train_loss_step``, ``train_loss_epoch``, ``val_acc``, ...). The history lives in the
    callback's state, so a run resumed from a checkpoint continues its curves. Lightning calls callbacks'
    ``on_train_epoch_end`` before the LightningModule's, so values the module logs in its own
    ``on_train_epoch_end`` are not seen: log them from ``training_step`` with ``on_epoch=True`` (or from
    ``on_validation_epoch_end``).

    Args:
        panels: panel title -> glob patterns over metric names. A metric goes into every panel it matches.
            Default: ``{"loss": ["*loss*"], "accuracy": ["*acc*"], "learning rate": ["lr*"]}``.
        include_other: add an ``"other"`` panel with the metrics no panel matched.
        x_axis: ``"step"`` (the logger's step) or ``"epoch"`` (epochs completed; step-level points spread
            inside their epoch).
        smoothing: EMA factor in [0, 1): ``s[t] = smoothing * s[t-1] + (1 - smoothing) * v[t]``, applied
            to step-level curves (not to epoch-level points or learning rates); the raw values stay as a
            thin line. 0 draws the raw values only.
        mark_best: mark and annotate the best value of each curve (not of learning rates).
        mode: metric name or glob pattern -> ``"min"`` or ``"max"``, overriding the default (``"min"`` for
            names containing ``loss`` or ``err``, ``"max"`` otherwise).
        log_lr: record each optimizer param group's learning rate as ``lr-<Optimizer>`` (``/pgN`` appended
            when it has several groups, ``-K`` when several optimizers share a class), on recorded steps.
        every_n_steps: record step-level values every N optimizer steps; ``None`` follows
            ``trainer.log_every_n_steps``.
        output_dir: where files go; default ``<trainer.log_dir>/viz/curves``.
        when_full: what to do when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "curves"

    def __init__(
        self,
        panels: dict[str, list[str]] | None = None,
        include_other: bool = False,
        x_axis: Literal["step", "epoch"] = "step",
        smoothing: float = 0.0,
        mark_best: bool = True,
        mode: dict[str, Mode] | None = None,
        log_lr: bool = True,
        every_n_steps: int | None = None,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_choice("x_axis", x_axis, ("step", "epoch"))
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
            raise ValueError(f"`smoothing` must be a number in [0, 1) (0 = no smoothing); got {smoothing!r}")
        check_int("every_n_steps", every_n_steps, 1, optional=True)
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
        self.history: dict[str, list[list[float]]] = {}  # name -> [[step, epoch, value], ...]
        self._index: dict[str, dict[tuple[int, int], int]] = {}
        self.step_level: set[str] = set()  # names recorded per step (smoothed); the others once per epoch
        self._pending: list[tuple[str, int, int, Value]] = []
        self._lr_names: list[str] = []
        self._lr_key: tuple[int, ...] = ()
        self._version = 0
        self._drawn_version = 0
        self._panels_checked = False

    # ------------------------------------------------------------------ recording
    def _should_record_step(self, trainer: Trainer) -> bool:
        n = self.every_n_steps or trainer.log_every_n_steps
        return bool(n) and (_logger_step(trainer) + 1) % n == 0 and not trainer.sanity_checking

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
        if key != self._lr_key:
            classes = Counter(type(o).__name__ for o in optimizers)
            seen: Counter[str] = Counter()
            names = []
            for opt in optimizers:
                cls = type(opt).__name__
                base = f"lr-{cls}" + (f"-{seen[cls]}" if classes[cls] > 1 else "")
                seen[cls] += 1
                for j, group in enumerate(opt.param_groups):
                    several = len(opt.param_groups) > 1
                    names.append(f"{base}/{group.get('name') or f'pg{j + 1}'}" if several else base)
            self._lr_key, self._lr_names = key, names
        groups = [g for o in optimizers for g in o.param_groups]
        return list(zip(self._lr_names, groups))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not (self.log_lr and self._should_record_step(trainer)):
            return
        with self.guard(trainer, "learning-rate recording"):
            step, epoch = _logger_step(trainer), trainer.current_epoch
            for name, group in self._lr_series(trainer):
                lr = group.get("lr")
                self._record(name, step, epoch, lr.clone() if isinstance(lr, torch.Tensor) else lr)
                self.step_level.add(name)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._should_record_step(trainer):
            return
        with self.guard(trainer, "step metric recording"):
            results = getattr(trainer, "_results", None)
            if results is None:
                return
            step, epoch = _logger_step(trainer), trainer.current_epoch
            for name, value in results.metrics(True)["log"].items():
                self._record(name, step, epoch, value)
                self.step_level.add(name)

    def _record_epoch_metrics(self, trainer: Trainer, step: int) -> None:
        try:  # only what was logged at epoch level in the loop that just ended (computed, already synced)
            metrics = dict(trainer._results.metrics(False)["log"])  # type: ignore[union-attr]
        except Exception:
            metrics = dict(trainer.callback_metrics)
        for name, value in metrics.items():
            self._record(name, step, trainer.current_epoch, value)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        with self.guard(trainer, "validation metric recording"):
            self._record_epoch_metrics(trainer, _logger_step(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self.guard(trainer, "epoch metric recording"):
            self._record_epoch_metrics(trainer, _logger_step(trainer, epoch_end=True))
        self._draw(trainer)

    def finish(self, trainer: Trainer) -> None:
        self._draw(trainer)

    # ------------------------------------------------------------------ drawing
    def mode_for(self, name: str) -> Mode | None:
        """``"min"``/``"max"`` for the best point of a metric, ``None`` for learning rates."""
        if name in self.mode:
            return self.mode[name]
        for pattern, m in self.mode.items():
            if _matches(name, [pattern]):
                return m
        if name.startswith("lr-"):
            return None
        low = name.lower()
        return "min" if "loss" in low or "err" in low else "max"

    def plot_data(self) -> dict[str, Any]:
        """The history as :func:`~lightning_viz.render.curves.render_curves` takes it (fresh copies)."""
        self._flush()
        names = sorted(self.history)
        panels = [
            {"title": t, "series": [n for n in names if _matches(n, p)]} for t, p in self.panels.items()
        ]
        if self.include_other:
            claimed = {n for p in panels for n in p["series"]}
            panels.append({"title": OTHER_PANEL, "series": [n for n in names if n not in claimed]})
        series = {}
        for name in names:
            points = sorted(self.history[name], key=lambda p: (p[0], p[1]))
            series[name] = {
                "step": [int(p[0]) for p in points],
                "epoch": [int(p[1]) for p in points],
                "value": [float(p[2]) for p in points],
                "mode": self.mode_for(name),
                "smooth": name in self.step_level and not name.startswith("lr-"),
            }
        return {
            "x_axis": self.x_axis,
            "smoothing": self.smoothing,
            "mark_best": self.mark_best,
            "panels": [p for p in panels if p["series"]],
            "series": series,
        }

    def _draw(self, trainer: Trainer) -> None:
        self._flush()
        if self._version == self._drawn_version or not self.emitting(trainer):
            return
        self._drawn_version = self._version
        with self.guard(trainer, "curve drawing"):
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
                cumulative=True,
            )
            self.emit_data(trainer, "curves", {**data, "figure": stem})  # `lightning-viz render` redraws it
            self._check_panels(trainer)

    def _check_panels(self, trainer: Trainer) -> None:
        """After the first training epoch, one warning naming the patterns of user-set ``panels`` that
        matched no logged metric, against the names that were logged."""
        if self._panels_checked or trainer.sanity_checking or not self._check_patterns:
            return
        self._panels_checked = True
        names = sorted(self.history)
        unmatched = [
            f"{title}: {p!r}"
            for title, patterns in self.panels.items()
            for p in patterns
            if not any(_matches(n, [p]) for n in names)
            and not (p.lower().startswith("lr") and not self.log_lr)
        ]
        if not unmatched or not names:
            return
        closest = sorted(
            {
                c
                for u in unmatched
                for c in get_close_matches(u.split(": ", 1)[1].strip("'*"), names, n=3, cutoff=0.3)
            }
        )
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

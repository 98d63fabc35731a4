"""Figures while every core trains: the training thread waits for a late one, a bounded share.

The render process runs at ``nice`` 19 and ``SCHED_IDLE`` (:mod:`lightning_viz.core.renderer`), so that it
never takes a time slice from training; when every core trains it gets no CPU at all, and a process that is
not root cannot raise its priority again (Linux allows leaving ``SCHED_IDLE`` only within ``RLIMIT_NICE``,
which is 0 by default). So on rank zero, at every batch boundary (training and validation), :class:`Pacer`
asks the render queue whether a figure is *late*: due for ``LATE_AFTER_S`` (1 s) while the render
process used less than half a core (:meth:`~lightning_viz.core.writer.BackgroundWriter.late`; asked at most
10 times a second, so that the check costs a short step nothing). If so the
training thread waits for the figures due by then: the cores go idle and the render process draws on one of
them. One wait lasts at most ``WAIT_AT_MOST_S`` (2 s; under DDP the other ranks wait no longer than that in
their next collective, and no rank but zero ever waits), and all the waits together at most ``WAIT_SHARE``
(25%) of the training's own time, a budget that fills as training runs; ``LIGHTNING_VIZ_WAIT_SHARE`` sets
it, and 0 turns waiting off. With a core left for the rest nothing is late and training never waits. Nor
does it wait when, at its pace so far, training ends within the redraw interval (:meth:`Pacer.ends_soon`):
the fit-end flush draws the latest figures then, and a short run pays for each figure once. For that flush
the render process gets its normal priority back where Linux allows it (root, ``CAP_SYS_NICE``), so that other
busy processes on the machine do not starve the fit's last drawing.

An epoch's cumulative figures are then on disk within about the redraw interval
(:data:`~lightning_viz.core.writer.REDRAW_EVERY_S`, 6 s) plus their drawing time after the epoch ends, or
within their drawing time over ``WAIT_SHARE`` when that is longer. At fit end one line says how drawing kept
up (:meth:`Pacer.summary`), only when figures were replaced, waited on disk, or training waited.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_viz.core import renderer, settings, writer

WAIT_AT_MOST_S = 2.0  # one wait of the training thread at a batch boundary
WAIT_SHARE = 0.25  # all the waits together, as a share of the training's own time
MIN_WAIT_S = 0.5  # the budget is spent in waits this long or longer (the render process draws in chunks)
STARVED_BELOW = 0.5  # the render process used less than this share of a core: it gets no CPU
SHARE_ENV = "LIGHTNING_VIZ_WAIT_SHARE"
CHECKS_PER_LATE = 10  # batch boundaries look at the render queue at most this often per LATE_AFTER_S


def wait_share() -> float:
    """The most the training thread may wait for late figures, as a share of its time
    (``LIGHTNING_VIZ_WAIT_SHARE``, default 0.25; 0: never wait).

    Raises:
        ValueError: the variable is not a number from 0 to 1 (names the variable and the value).
    """
    return settings.env_float(SHARE_ENV, WAIT_SHARE, upper=1.0)


class Pacer:
    """The training thread's side of the render queue (rank zero only; see the module docstring).

    :meth:`batch_boundary` runs at every batch boundary: when a cumulative figure is late and the render
    process got less than ``STARVED_BELOW`` of a core over the last ``LATE_AFTER_S`` of training, the
    training thread waits for it, at most ``WAIT_AT_MOST_S`` at a time and ``WAIT_SHARE`` of its time in all
    (a budget that fills as training runs, spent in waits of ``MIN_WAIT_S`` or more). :meth:`summary` is the
    one line at fit end.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start counting for a new fit."""
        self.started = self.last = time.monotonic()
        self.budget, self.waited, self.waits = WAIT_AT_MOST_S, 0.0, 0
        self.share = wait_share()  # read once a fit, not at every batch boundary
        self._mark: tuple[float, float] | None = None  # (time, render CPU seconds) while a figure is late
        w = writer._writers.get("render")
        self._counts = {k: getattr(w, k, 0) for k in ("completed", "superseded", "spilled")}
        self.soon_s = settings.redraw_every_s()
        self._total: float | None = None  # optimizer steps the fit will take, when known
        self._from: tuple[int, float] = (0, self.started)  # (step, time) training started at
        self._checked = float("-inf")  # when batch_boundary last looked at the queue

    def plan(self, total_steps: float, step: int) -> None:
        """Training starts at ``step`` and runs ``total_steps`` optimizer steps in all (``inf``: unknown)."""
        self._total = float(total_steps) if math.isfinite(total_steps) and total_steps > 0 else None
        self._from = (step, time.monotonic())

    def ends_soon(self, step: int, now: float) -> bool:
        """Training will end within the redraw interval at its pace so far: the fit-end flush draws the late
        figures then, and newer versions of them will have taken their place; waiting now would only
        draw a version that is about to be replaced."""
        start_step, start = self._from
        if self._total is None or step <= start_step:
            return False
        return (self._total - step) * (now - start) / (step - start_step) < self.soon_s

    def _starved(self, w: writer.BackgroundWriter, now: float) -> bool:
        """Whether the render process got (almost) no CPU over the last ``LATE_AFTER_S`` of training; the
        first call after a figure turns late starts the measurement. True where its CPU time is unknown."""
        cpu = w.cpu_seconds()
        if cpu is None:
            return True
        mark = self._mark
        if mark is None or now - mark[0] > 4 * writer.LATE_AFTER_S:
            self._mark = (now, cpu)
            return False
        if now - mark[0] < writer.LATE_AFTER_S:
            return False
        self._mark = (now, cpu)
        return (cpu - mark[1]) / (now - mark[0]) < STARVED_BELOW

    def batch_boundary(self, step: int = 0) -> None:
        now = time.monotonic()
        # At most CHECKS_PER_LATE checks per LATE_AFTER_S: lateness is measured in seconds, and a check
        # (the queue's lock, the render process's CPU clock) would cost a few percent of a short step.
        if now - self._checked < writer.LATE_AFTER_S / CHECKS_PER_LATE:
            return
        self._checked = now
        w = writer._writers.get("render")
        if w is None:
            return
        share = self.share
        self.budget = min(WAIT_AT_MOST_S, self.budget + share * (now - self.last))
        self.last = now
        if share <= 0 or not w.late(now):
            self._mark = None
            return
        if not self._starved(w, now) or self.budget < min(MIN_WAIT_S, WAIT_AT_MOST_S):
            return
        if self.ends_soon(step, now):
            return
        waited = w.wait_late(self.budget)
        self.budget -= waited
        self.waited += waited
        self.waits += 1
        self.last = time.monotonic()  # waiting does not fill the budget: a share of training's own time
        cpu = w.cpu_seconds()
        self._mark = (self.last, cpu) if cpu is not None else None

    def summary(self) -> str | None:
        """How drawing kept up during this fit, in one line; None when every figure was drawn as it came."""
        w = writer._writers.get("render")
        if w is None:
            return None
        got = {k: getattr(w, k) - v for k, v in self._counts.items()}
        if not (got["superseded"] or got["spilled"] or self.waits):
            return None
        parts = [f"lightning-viz: drew {got['completed']} figure{'s' if got['completed'] != 1 else ''}"]
        if got["superseded"]:
            parts.append(
                f"{got['superseded']} replaced by newer versions before they were drawn (their data files are "
                "kept; `lightning-viz render DIR` draws them)"
            )
        if got["spilled"]:
            parts.append(f"{got['spilled']} waited in temporary files while drawing was behind")
        if self.waits:
            total = max(time.monotonic() - self.started, 1e-9)
            parts.append(
                f"training paused {self.waited:.1f} s ({100 * self.waited / total:.0f}% of the fit) at batch "
                "boundaries so that figures were drawn while every core was busy"
            )
        return "; ".join(parts) + "."


class DrawingPacer(Callback):
    """The :class:`Pacer` of one trainer, added to ``trainer.callbacks`` by the first lightning-viz callback
    that draws (rank zero only) in its ``setup``: a lightning-viz callback may override any hook without
    calling ``super()``, so the pacing has a callback of its own. Last in the list, its ``on_fit_end`` runs
    after every other callback has drawn its final figures."""

    SAYS_WHERE = (
        "_lightning_viz_says_where"  # a Trainer attribute: the lightning-viz command names the folders
    )

    def __init__(self) -> None:
        self.pacer = Pacer()
        self.dirs: list[Path] = []  # the callbacks' output folders, named at fit end

    @classmethod
    def attach(cls, trainer: Trainer, viz_dir: Path | None = None) -> None:
        """Add one to ``trainer`` unless it has one, and note ``viz_dir``, a callback's output folder;
        checks the environment variables (``ValueError``)."""
        settings.redraw_every_s(), wait_share()  # a wrong value fails here, naming the variable
        pacer = next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)  # type: ignore[attr-defined]
        if pacer is None:
            pacer = cls()
            trainer.callbacks.append(pacer)  # type: ignore[attr-defined]
        if viz_dir is not None and viz_dir not in pacer.dirs:
            pacer.dirs.append(viz_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.pacer.reset()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        renderer.get_renderer().demote()  # from now on it must not take a time slice from training
        self.pacer.plan(trainer.estimated_stepping_batches, trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.pacer.batch_boundary(trainer.global_step)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.pacer.batch_boundary(trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        renderer.get_renderer().promote()  # training is over: the last drawing need not yield to anything
        writer.flush()
        line = self.pacer.summary()
        if line:
            rank_zero_info(line)
        if not getattr(trainer, self.SAYS_WHERE, False):  # a fit of the user's own script, a Ray Train worker
            written = [d for d in self.dirs if d.is_dir() and any(f.is_file() for f in d.rglob("*"))]
            if written:
                rank_zero_info(f"lightning-viz: pictures are in {', '.join(str(d) for d in written)}")

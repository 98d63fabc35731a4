"""The background writer: figures drawn and sinks fed in background threads, flushed at fit end.

Rendering (matplotlib, PNG encoding) and file I/O stay off the training step: callbacks submit jobs to
bounded queues, each served by one background thread: figures to the "render" queue (its thread has them
drawn by the render process, :mod:`lightning_viz.core.renderer`), and everything that reaches a sink to the
"io" queue, on one thread so that no sink is ever called from two threads. The queues are flushed at fit
end, when training raises, and at interpreter exit, so no picture is lost.

**Pictures while training runs.** Figures are submitted with a key, one per series (a callback's tag: the
learning curves, the weight evolution, each epoch's feature maps, a metric's confusion matrix), and wait in
their key's line, not in the queue; the render thread draws a due one before anything else in the queue,
the cumulative series before the snapshots.
They are drawn in rounds, each series at most once a round and rounds at least ``REDRAW_EVERY_S`` seconds
apart (6 s; the environment variable ``LIGHTNING_VIZ_REDRAW_S`` sets it; at 0 every snapshot goes through
the queue, drawn in its turn, and only cumulative figures keep a key), and at fit
end, so drawing takes a bounded share of a core however short the epochs are: a newer figure that arrives
while an older one of its series waits for its round takes its place (the latest of a series is always
drawn; the data file of every figure is written, and ``lightning-viz render`` draws the others).
A *cumulative* series (the curves, the evolution, the statistics: each figure shows everything so far) loses
nothing that way; a series of snapshots loses intermediate pictures only when its epochs are shorter than
the interval. With a core left for the rest (training on a GPU, or on all cores but one) the render process
draws there, and an epoch's figures are on disk a few seconds after it ends. When every core trains, the
render process (``SCHED_IDLE``) gets no CPU; :mod:`lightning_viz.core.pacing` then has the training thread
wait for a figure that is :meth:`~BackgroundWriter.late`, for a bounded share of its time.

When the queue is full, the submitting callback's policy applies: ``"wait"`` blocks the training step until
there is room (nothing is lost), ``"drop_oldest"`` discards the oldest pending job and warns once.

Under ``"wait"``, a job without a key still to be run does not wait in the queue once drawing is behind
(``SUPERSEDE_ABOVE`` or more jobs waiting): it joins an overflow list that refills the queue as the render
process catches up, its input in a temporary file (:class:`DiskBacked`); the flush at fit end draws what is
left (at most ``SPILL_MAX`` wait on disk; beyond that the training step waits again). A job that cannot wait
on disk waits in memory in its turn, never ahead of older ones.

A key's line keeps the order of the steps. When drawing is behind (``SUPERSEDE_ABOVE`` or more jobs
waiting), or the waiting version is held back by the redraw interval, the newer figure takes the place of
the waiting ones of its key: the older picture is not drawn (its data file is written as usual, and
``lightning-viz render`` draws it from there), and the backlog, and the memory it holds, does not grow with
every epoch. A key has at most one figure being drawn and the next is taken only after it, so each logger
receives the figures of a key in the order of their steps, never an older one after a newer one.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from lightning_viz.core.settings import REDRAW_ENV, REDRAW_EVERY_S, redraw_every_s
from lightning_viz.core.spill import DiskBacked, Spilled
from lightning_viz.core.warn import warn_once

__all__ = [
    "REDRAW_ENV",
    "REDRAW_EVERY_S",
    "BackgroundWriter",
    "DiskBacked",
    "flush",
    "get_writer",
    "redraw_every_s",
]

WhenFull = Literal["wait", "drop_oldest"]
QUEUE_SIZE = 32
SUPERSEDE_ABOVE = 8  # jobs waiting: drawing is behind (snapshots wait on disk, keyed twins are replaced)
SPILL_MAX = 1000  # figures waiting in temporary files; beyond it "wait" waits for the render process again
LATE_AFTER_S = 0.5  # a cumulative figure due this long, with no job started or ended meanwhile, is late


class _Version:
    """One version of a cumulative figure waiting in its key's line."""

    __slots__ = ("job", "key", "label", "since")

    def __init__(self, key: Any, job: Callable[[], None], label: str, since: float) -> None:
        self.key, self.job, self.label = key, job, label
        self.since = since  # when the oldest version it stands for was submitted (that epoch's end)


class BackgroundWriter:
    """One daemon thread that runs submitted jobs: the queue in order, cumulative figures by key.

    Args:
        maxsize: jobs the queue holds.
        name: the thread's name.
        cadence: seconds between two runs of one key's jobs (a number, or a function read at each use).
        cpu_probe: CPU seconds used so far by whatever runs the jobs (the render process), or None when
            unknown (:meth:`cpu_seconds`).
    """

    def __init__(
        self,
        maxsize: int = QUEUE_SIZE,
        name: str = "lightning-viz-writer",
        cadence: float | Callable[[], float] = 0.0,
        cpu_probe: Callable[[], float | None] | None = None,
    ) -> None:
        self._queue: queue.Queue[tuple[Callable[[], None], str, Any] | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # slots changed, a job finished, the queue got one
        self.name = name
        self._cadence, self._cpu_probe = cadence, cpu_probe
        self._overflow: deque[tuple[Callable[[], None], str, Any]] = deque()  # spilled jobs, in order
        self._lines: dict[Any, deque[_Version]] = {}  # figures waiting, per series (key), oldest first
        self._snapshots: set[Any] = set()  # the keys of snapshot series (drawn after the cumulative ones)
        self._round = float("-inf")  # when the current redraw round began (see _due_at)
        self._in_round: set[Any] = set()  # the keys drawn in it
        self._running: tuple[_Version, float] | None = None  # the cumulative figure being drawn, its due time
        self._flushing = 0  # flushes under way: every waiting figure is due now
        self._progress = time.monotonic()  # when a job last started or ended
        self.dropped = 0
        self.superseded = 0
        self.spilled = 0
        self.completed = 0

    # ------------------------------------------------------------------ the thread
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _cadence_s(self) -> float:
        return float(self._cadence() if callable(self._cadence) else self._cadence)

    def _due_at(self, key: Any, index: int, line: deque[_Version], cadence: float) -> float:
        """When ``line[index]`` may be drawn. Cumulative figures are drawn in rounds at least ``cadence``
        apart, each key at most once a round: a key's head is due at once if its key has not been drawn in
        the current round, else when the next round may begin. Rounds keep an epoch's figures together (one
        wait of the training thread draws them all, see :mod:`~lightning_viz.core.pacing`). The versions
        behind the head wait for it (never due, as seen now), unless there is no interval or a flush runs."""
        if self._flushing or cadence <= 0:
            return line[index].since if index == 0 else 0.0
        if index > 0:
            return float("inf")
        return max(line[0].since, self._round + cadence) if key in self._in_round else line[0].since

    def _next_slot(self, now: float) -> tuple[_Version, float] | float | None:
        """The due cumulative figure drawn next (taken out of its line), else when the next one is due."""
        cadence = self._cadence_s()
        best: tuple[tuple[bool, bool, float], float, Any] | None = None
        for key, line in self._lines.items():
            if line:
                due = self._due_at(key, 0, line, cadence)
                rank = (due > now, key in self._snapshots, due)  # due ones first, cumulative before snapshots
                if best is None or rank < best[0]:
                    best = (rank, due, key)
        if best is None:
            return None
        _, due, key = best
        if due > now:
            return due
        version = self._lines[key].popleft()
        if not self._lines[key]:
            del self._lines[key]
        return version, due

    def _mark_progress(self) -> None:
        self._progress = time.monotonic()

    def _execute(self, job: Callable[[], None], label: str) -> None:
        self._mark_progress()
        try:
            job()
        except Exception as err:  # a failed picture never reaches the training loop
            warn_once(("writer", label, type(err).__name__), f"lightning-viz: {label} failed: {err!r}")
        self.completed += 1
        self._mark_progress()

    def _run(self) -> None:
        while True:
            slot = None
            with self._cond:
                while True:
                    now = time.monotonic()
                    nxt = self._next_slot(now)
                    if isinstance(nxt, tuple):
                        slot = nxt
                        self._running = slot
                        if now >= self._round + self._cadence_s():  # a new redraw round begins
                            self._round = now
                            self._in_round.clear()
                        self._in_round.add(slot[0].key)
                        break
                    if self._queue.qsize():
                        break
                    self._cond.wait(None if nxt is None else max(nxt - now, 0.001))
            if slot is not None:
                try:
                    self._execute(slot[0].job, slot[0].label)
                finally:
                    with self._cond:
                        self._running = None
                        self._cond.notify_all()
                continue
            try:
                item = self._queue.get_nowait()
            except queue.Empty:  # "drop_oldest" took it meanwhile
                continue
            try:
                if item is None:
                    return
                self._execute(item[0], item[1])
            finally:
                self._refill()  # before task_done: flush() (queue.join) then waits for the overflow too
                self._queue.task_done()
                with self._cond:
                    self._cond.notify_all()

    def _put(self, item: tuple[Callable[[], None], str, Any], block: bool = True) -> None:
        self._queue.put(item, block=block)
        with self._cond:
            self._cond.notify_all()

    def _refill(self) -> None:
        """Move spilled jobs back into the queue while it is below the backlog mark (and wake the thread:
        a submitting thread calls this too)."""
        with self._cond:
            while self._overflow and self._queue.qsize() < SUPERSEDE_ABOVE:
                try:
                    self._queue.put_nowait(self._overflow[0])
                except queue.Full:
                    break
                self._overflow.popleft()
            self._cond.notify_all()

    # ------------------------------------------------------------------ submitting
    def _waiting(self) -> int:
        """Jobs waiting to run (the queue, the overflow, every key's line); with the lock held."""
        return self._queue.qsize() + len(self._overflow) + sum(len(line) for line in self._lines.values())

    def _in_memory(self) -> int:
        """Snapshot jobs waiting in the overflow in memory (their payload could not go to disk)."""
        with self._lock:  # the writer's thread takes jobs out meanwhile
            return sum(1 for item in self._overflow if not isinstance(item[0], Spilled))

    def _spill(self, job: Callable[[], None], label: str) -> bool:
        """Under "wait", send a job to the overflow when behind (or when older jobs already wait there, so
        that it does not overtake them): a :class:`DiskBacked` payload to disk; a job that cannot be
        pickled in memory, at most as many as the queue holds."""
        with self._lock:
            if not self._overflow and (
                not isinstance(job, DiskBacked) or self._queue.qsize() < SUPERSEDE_ABOVE
            ):
                return False
        while len(self._overflow) >= SPILL_MAX:  # bounded on disk too: wait for the render process
            time.sleep(0.01)
        held: Callable[[], None] | None = job.spill() if isinstance(job, DiskBacked) else None
        if held is None:  # unpicklable payload or no temporary file: waits in memory, in its turn
            held = job
            while self._overflow and self._in_memory() >= self._queue.maxsize:
                time.sleep(0.01)
        with self._lock:
            self._overflow.append((held, label, None))
            self.spilled += isinstance(held, Spilled)  # those in temporary files
        self._refill()  # the queue may have drained meanwhile
        return True

    def submit(
        self,
        job: Callable[[], None],
        label: str,
        when_full: WhenFull = "wait",
        key: Any = None,
        snapshot: bool = False,
    ) -> None:
        """Queue ``job``; ``label`` names it in warnings (e.g. ``"WeightHistogramCallback step 40"``).

        ``key`` (hashable) marks a figure series: a job that makes any waiting job with the same key
        redundant. It never blocks and is run by key, not in the queue's order: see the module docstring.
        ``snapshot``: the series is of snapshots (each figure shows one moment), so when several series are
        due, the cumulative ones are drawn first (they show everything so far).
        """
        self._ensure_thread()
        if key is not None:
            if snapshot:
                with self._lock:
                    self._snapshots.add(key)
            self._submit_keyed(job, label, key)
            return
        if when_full == "wait":
            if not self._spill(job, label):
                self._put((job, label, None))
            return
        while True:
            try:
                self._put((job, label, None), block=False)
                return
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                    self._queue.task_done()
                except queue.Empty:
                    continue
                if old is not None:
                    self.dropped += 1
                    warn_once(
                        ("writer-drop",),
                        "lightning-viz: the rendering queue is full and `when_full='drop_oldest'`; dropped "
                        f"{old[1]}. Use `when_full='wait'` to keep every picture.",
                    )

    def _submit_keyed(self, job: Callable[[], None], label: str, key: Any) -> None:
        """Add ``job`` to its key's line, or put it in the place of the waiting ones it makes redundant:
        all of them when drawing is behind, the newest one when that is held back by the redraw interval."""
        now = time.monotonic()
        with self._cond:
            line = self._lines.setdefault(key, deque())
            if line and self._waiting() >= SUPERSEDE_ABOVE:
                self.superseded += len(line)
                since = line[0].since
                line.clear()
                line.append(_Version(key, job, label, since))
            elif line and self._due_at(key, len(line) - 1, line, self._cadence_s()) > now:
                self.superseded += 1
                line[-1] = _Version(key, job, label, line[-1].since)
            else:
                line.append(_Version(key, job, label, now))
            self._cond.notify_all()

    # ------------------------------------------------------------------ waiting for figures
    def _oldest_due(self) -> float | None:
        """The earliest due time of a cumulative figure waiting or being drawn; with the lock held."""
        cadence = self._cadence_s()
        dues = [self._due_at(key, 0, line, cadence) for key, line in self._lines.items() if line]
        if self._running is not None:
            dues.append(self._running[1])
        return min(dues) if dues else None

    def late(self, now: float | None = None) -> bool:
        """A cumulative figure has been due for ``LATE_AFTER_S`` and no job started or ended meanwhile:
        either whatever draws gets no CPU, or the figure in hand is long (:meth:`cpu_seconds` tells them
        apart). Cheap: the training thread asks at every batch boundary."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = self._oldest_due()
        return due is not None and now - due >= LATE_AFTER_S and now - self._progress >= LATE_AFTER_S

    def cpu_seconds(self) -> float | None:
        """CPU seconds used so far by whatever draws (the render process), or None when unknown."""
        return self._cpu_probe() if self._cpu_probe is not None else None

    def wait_late(self, timeout: float) -> float:
        """Block until every cumulative figure due by now is drawn, or ``timeout`` seconds; the seconds
        waited."""
        start = time.monotonic()

        def drawn() -> bool:
            due = self._oldest_due()
            return due is None or due > start

        with self._cond:
            self._cond.wait_for(drawn, timeout)
        return time.monotonic() - start

    def flush(self) -> None:
        """Block until every queued job has run and every cumulative figure waiting is drawn."""
        if self._thread is None or not self._thread.is_alive():
            return
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
        try:
            while True:
                self._queue.join()
                with self._cond:
                    while (self._lines or self._running is not None) and self._thread.is_alive():
                        self._cond.wait(1.0)
                    if not self._thread.is_alive() or (
                        not self._queue.unfinished_tasks and not self._overflow
                    ):
                        return
        finally:
            with self._cond:
                self._flushing -= 1

    def pending(self) -> int:
        """Jobs submitted and not yet finished (spilled ones and cumulative figures included)."""
        with self._lock:
            keyed = sum(len(line) for line in self._lines.values()) + (self._running is not None)
        return self._queue.unfinished_tasks + len(self._overflow) + keyed


_writers: dict[str, BackgroundWriter] = {}
_writer_lock = threading.Lock()


def _render_cpu() -> float | None:
    from lightning_viz.core import renderer  # renderer imports this module at exit only

    return renderer.get_renderer().cpu_seconds()


def get_writer(kind: Literal["io", "render"] = "io") -> BackgroundWriter:
    """One of the two process-wide queues (created on first use, flushed at interpreter exit).

    ``"io"``: everything that reaches a sink (files, logger calls), on one thread, in order. ``"render"``:
    figures waiting to be drawn (in the render process, see :mod:`lightning_viz.core.renderer`); a drawn
    figure is handed on to the ``"io"`` queue. Two queues, so that cheap writes (a step's histograms) never
    wait behind a figure being drawn.
    """
    with _writer_lock:
        if kind not in _writers:
            if kind == "render":
                w = BackgroundWriter(QUEUE_SIZE, "lightning-viz-render", redraw_every_s, _render_cpu)
            else:
                w = BackgroundWriter(QUEUE_SIZE, f"lightning-viz-{kind}")
            _writers[kind] = w
            if len(_writers) == 1:
                atexit.register(flush)
        return _writers[kind]


def flush() -> None:
    """Wait until every queued figure is drawn and every pending write has reached its sink."""
    for kind in ("render", "io"):  # drawing queues writes: drain it first
        w = _writers.get(kind)
        if w is not None:
            w.flush()

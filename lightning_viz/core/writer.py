"""Background rendering and atomic file writes.

Rendering (matplotlib, PNG encoding) and file I/O stay off the training step: callbacks submit jobs to
bounded queues, each served by one background thread: figures to the "render" queue (its thread has them
drawn by the render process, :mod:`lightning_viz.core.renderer`), and everything that reaches a sink to the
"io" queue, on one thread so that no sink is ever called from two threads. The queues are flushed at fit
end, when training raises, and at interpreter exit, so no picture is lost.

When the queue is full, the submitting callback's policy applies: ``"wait"`` blocks the training step until
there is room (nothing is lost), ``"drop_oldest"`` discards the oldest pending job and warns once.

Under ``"wait"``, a figure still to be drawn does not wait in the queue once drawing is behind
(``SUPERSEDE_ABOVE`` or more jobs waiting): it joins an overflow list that refills the queue as the render
process catches up, a snapshot with its input in a temporary file (:class:`DiskBacked`), a cumulative
figure in memory in the place of its waiting older version (one per key); the flush at fit end
draws what is left (at most ``SPILL_MAX`` wait on disk; beyond that the training step waits again). On a
machine whose every core trains, the render process gets almost no time until then,
and a long run would otherwise fill the queue with per-epoch pictures and make each epoch end wait for one
to be drawn. Nothing is lost; the picture arrives later.

A figure that shows everything so far (an evolution figure, learning curves) is submitted with a key. When
drawing falls behind (``SUPERSEDE_ABOVE`` or more jobs waiting, or any in the overflow) and an older figure
with the same key is still waiting, the newer one takes its place instead of queueing behind it: the older
picture is not drawn (its data file is written as usual, and ``lightning-viz render`` draws it from there),
one warning says so, and the backlog, and the memory it holds, stops growing with every epoch. The queue and
the overflow behind it count as one line here: the newer figure takes the place of the oldest waiting one
of its key, wherever it waits, and any other waiting one of the key is dropped. So each logger receives the
figures of a key in the order of their steps, and never an older figure after a newer one (when the newer
one took the place of one in the queue while another waited in the overflow, that one used to arrive last:
TensorBoard showed ``gradients_evolution`` at step 115 and then at step 69). A job that cannot wait on disk
waits in memory in its turn, never ahead of older ones.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import queue
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_viz.core.warn import info_once, warn_once

WhenFull = Literal["wait", "drop_oldest"]
QUEUE_SIZE = 32
SUPERSEDE_ABOVE = 8  # jobs waiting: from here on a keyed job replaces a waiting one with the same key
SPILL_MAX = 1000  # figures waiting in temporary files; beyond it "wait" waits for the render process again


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same directory, fsync it, then rename it into place.

    A process killed at any moment leaves either the old file, the new file, or a stray ``.tmp`` file,
    never a truncated ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` (numpy arrays become lists, NaN stays NaN) and write it atomically."""
    return atomic_write_bytes(path, json.dumps(obj, default=_json_default, indent=1).encode())


def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save arrays as an uncompressed ``.npz`` atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def unwritable_reason(directory: str | os.PathLike) -> str | None:
    """Why files cannot be written under ``directory`` (created if missing), or ``None`` when they can.

    Creates the directory and writes and removes one temporary file, so a read-only parent, a file in
    the way of a directory, a full disk or missing permissions are found before training, not per file.
    """
    try:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".lightning-viz-probe.", suffix=".tmp")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    return None


def drop_unwritable_files(sinks: list, directory: Any, owner: str) -> list:
    """``sinks`` without the file sink when ``directory`` is not writable, with one warning per directory.

    The other sinks (TensorBoard, W&B, MLflow, ...) still receive every figure, histogram and scalar.
    """
    if directory is None or not sinks:
        return sinks
    reason = unwritable_reason(directory)
    if reason is None:
        return sinks
    from lightning_viz.core.sinks import FileSink  # sinks imports this module

    kept = [s for s in sinks if not isinstance(s, FileSink)]
    others = ", ".join(getattr(s, "name", type(s).__name__) for s in kept) or "none attached"
    warn_once(
        ("unwritable", str(directory)),
        f"{owner}: cannot write to the output directory {str(directory)!r} ({reason}); its files (PNG, "
        f"JSON, NPZ) are skipped for this run. Other destinations still receive everything ({others}); "
        "training continues. Set `output_dir` to a writable folder.",
    )
    return kept


class DiskBacked:
    """A job ``run(payload)`` whose payload can wait on disk instead of in memory (see the module docstring).

    Args:
        payload: picklable input (a figure's render function and its data).
        run: what to do with it, on the writer's thread.
    """

    def __init__(self, payload: Any, run: Callable[[Any], None]) -> None:
        self.payload, self.run = payload, run

    def __call__(self) -> None:
        self.run(self.payload)

    def spill(self) -> _Spilled | None:
        """Pickle the payload to a temporary file; None when it cannot be (it then waits in memory)."""
        try:
            fd, path = tempfile.mkstemp(prefix="lightning-viz-spill-", suffix=".pkl")
        except OSError:  # no writable temporary directory
            return None
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(self.payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # unpicklable payload, disk full
            _unlink(path)
            return None
        return _Spilled(path, self.run)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _Spilled:
    """A :class:`DiskBacked` job whose payload is in a file: read back, removed, then run."""

    def __init__(self, path: str, run: Callable[[Any], None]) -> None:
        self.path, self.run = path, run

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                payload = pickle.load(fh)
        finally:
            _unlink(self.path)
        self.run(payload)


class BackgroundWriter:
    """One daemon thread that runs submitted jobs in order."""

    def __init__(self, maxsize: int = QUEUE_SIZE, name: str = "lightning-viz-writer") -> None:
        self._queue: queue.Queue[tuple[Callable[[], None], str, Any] | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.name = name
        self._overflow: deque[tuple[Callable[[], None], str, Any]] = deque()  # spilled jobs, in order
        self.dropped = 0
        self.superseded = 0
        self.spilled = 0
        self.completed = 0

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                job, label, _ = item
                try:
                    job()
                except Exception as err:  # a failed picture never reaches the training loop
                    warn_once(
                        ("writer", label, type(err).__name__), f"lightning-viz: {label} failed: {err!r}"
                    )
                self.completed += 1
            finally:
                self._refill()  # before task_done: flush() (queue.join) then waits for the overflow too
                self._queue.task_done()

    def _refill(self) -> None:
        """Move spilled jobs back into the queue while it is below the backlog mark."""
        with self._lock:
            while self._overflow and self._queue.qsize() < SUPERSEDE_ABOVE:
                try:
                    self._queue.put_nowait(self._overflow[0])
                except queue.Full:
                    return
                self._overflow.popleft()

    def _in_memory(self) -> int:
        """Snapshot jobs waiting in the overflow in memory (their payload could not go to disk)."""
        with self._lock:  # the writer's thread takes jobs out meanwhile
            return sum(1 for item in self._overflow if item[2] is None and not isinstance(item[0], _Spilled))

    def _spill(self, job: Callable[[], None], label: str, key: Any) -> bool:
        """Under "wait", send a job to the overflow when behind (or when older jobs already wait there, so
        that it does not overtake them): a :class:`DiskBacked` payload to disk; a cumulative figure
        (``key``; at most one per key waits, see :meth:`_supersede`) in memory, with no pickling; a job that
        cannot be pickled in memory too, at most as many as the queue holds."""
        with self._lock:
            if not self._overflow and (
                not isinstance(job, DiskBacked) or self._queue.qsize() < SUPERSEDE_ABOVE
            ):
                return False
        while len(self._overflow) >= SPILL_MAX:  # bounded on disk too: wait for the render process
            time.sleep(0.01)
        held: Callable[[], None] | None = job
        if key is None and isinstance(job, DiskBacked):
            held = job.spill()
        if held is None:  # unpicklable payload or no temporary file: waits in memory, in its turn
            held = job
        if held is job and key is None:
            while self._overflow and self._in_memory() >= self._queue.maxsize:
                time.sleep(0.01)
        with self._lock:
            self._overflow.append((held, label, key))
            self.spilled += isinstance(held, _Spilled)  # those in temporary files
        info_once(
            ("writer-spill", self.name),
            f"lightning-viz: figures are produced faster than they are drawn ({SUPERSEDE_ABOVE} or more "
            f"waiting, e.g. every core is busy training); {label} and later ones wait in temporary files until "
            "the render process catches up, at the latest at fit end. Nothing is lost and training does not "
            "wait for them.",
        )
        self._refill()  # the queue may have drained meanwhile
        return True

    def submit(
        self, job: Callable[[], None], label: str, when_full: WhenFull = "wait", key: Any = None
    ) -> None:
        """Queue ``job``; ``label`` names it in warnings (e.g. ``"WeightHistogramCallback step 40"``).

        ``key`` (hashable) marks a job that makes any waiting job with the same key redundant: see the
        module docstring.
        """
        self._ensure_thread()
        if key is not None and self._supersede(job, label, key):
            return
        if when_full == "wait":
            if not self._spill(job, label, key):
                self._queue.put((job, label, key))
            return
        while True:
            try:
                self._queue.put_nowait((job, label, key))
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

    def _supersede(self, job: Callable[[], None], label: str, key: Any) -> bool:
        """Put ``job`` in the place of the oldest waiting job with the same key, when drawing is behind.

        The queue and the overflow behind it are one line: the oldest waiting job of the key (in the
        queue, else in the overflow) gives its place to ``job`` and every later one is dropped, so that
        at most one per key waits and no older figure of the key can reach the sinks after a newer one.
        """
        with self._lock, self._queue.mutex:
            waiting, overflow = self._queue.queue, self._overflow
            if not overflow and len(waiting) < SUPERSEDE_ABOVE:
                return False
            in_queue = [i for i, item in enumerate(waiting) if item is not None and item[2] == key]
            in_overflow = [i for i, item in enumerate(overflow) if item[2] == key]
            if not in_queue and not in_overflow:
                return False
            from_queue = bool(in_queue)  # one in the overflow is replaced silently: the spill warning told
            line, place = (waiting, in_queue.pop(0)) if from_queue else (overflow, in_overflow.pop(0))
            old = line[place][1]
            line[place] = (job, label, key)  # the oldest one's place in the line
            for i in reversed(in_queue):  # later ones are redundant too
                del waiting[i]
                self._queue.unfinished_tasks -= 1
                self._queue.not_full.notify()
            for i in reversed(in_overflow):
                dropped = overflow[i][0]
                del overflow[i]
                if isinstance(dropped, _Spilled):
                    _unlink(dropped.path)
            self.superseded += 1 + len(in_queue) + len(in_overflow)
        if not from_queue:
            return True
        info_once(
            ("writer-supersede", self.name),
            f"lightning-viz: figures are produced faster than they are drawn ({SUPERSEDE_ABOVE} or more "
            f"waiting); {old} was replaced by the newer {label}, which shows the same history and more. Data "
            "files are written as usual (`lightning-viz render DIR` draws figures from them). Figures that are not cumulative "
            "are all drawn. Training continues.",
        )
        return True

    def flush(self) -> None:
        """Block until every queued job has run."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def pending(self) -> int:
        """Jobs submitted and not yet finished (spilled ones included)."""
        return self._queue.unfinished_tasks + len(self._overflow)


_writers: dict[str, BackgroundWriter] = {}
_writer_lock = threading.Lock()


def get_writer(kind: Literal["io", "render"] = "io") -> BackgroundWriter:
    """One of the two process-wide queues (created on first use, flushed at interpreter exit).

    ``"io"``: everything that reaches a sink (files, logger calls), on one thread, in order. ``"render"``:
    figures waiting to be drawn (in the render process, see :mod:`lightning_viz.core.renderer`); a drawn
    figure is handed on to the ``"io"`` queue. Two queues, so that cheap writes (a step's histograms) never
    wait behind a figure being drawn.
    """
    with _writer_lock:
        if kind not in _writers:
            _writers[kind] = BackgroundWriter(QUEUE_SIZE, f"lightning-viz-{kind}")
            if len(_writers) == 1:
                atexit.register(flush)
        return _writers[kind]


def flush() -> None:
    """Wait until every queued figure is drawn and every pending write has reached its sink."""
    for kind in ("render", "io"):  # drawing queues writes: drain it first
        w = _writers.get(kind)
        if w is not None:
            w.flush()

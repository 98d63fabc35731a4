"""Figures are drawn in a separate low-priority process, so that drawing never slows the training loop.

Drawing a figure is seconds of pure-Python matplotlib work. In a thread of the training process it holds the
GIL, and a training loop that releases and takes back the GIL around every kernel launch then waits a GIL
switch interval each time: a step of the example CNN takes several times as long while figures are drawn in
a thread, and about as long as alone while they are drawn in this process (``make bench`` measures the three
side by side: ``drawing`` in benchmarks/results.json and RESULTS.md).
So the render queue's thread hands each ``render(data) -> Figure`` call to one
child process (started when a callback is set up; it loads matplotlib and the render functions, then
drops to ``nice`` 19 and ``SCHED_IDLE``; one torch thread, matplotlib's Agg backend), which draws,
rasterises and PNG-encodes the figure and sends the pixels back; the writer thread then hands them to the
sinks as before. The child holds no GIL of ours and, at the lowest priority, takes CPU time only when the
training processes leave some.

The child is a plain ``python -m lightning_viz.core.render_child`` (not ``multiprocessing``, which would import
the user's training script again in the child). Requests and replies are length-prefixed pickles over its
stdin and stdout. A request whose function or data cannot be pickled (a lambda, a closure) is drawn in the
writer thread instead, silently; if the child dies, drawing falls back to the writer thread for the rest of
the process, with one warning. Set the environment variable ``LIGHTNING_VIZ_RENDER=thread`` to always draw
in the writer thread.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np

ENV = "LIGHTNING_VIZ_RENDER"
MODES = ("process", "thread")
_HEADER = struct.Struct("<Q")

Rendered = tuple[np.ndarray, bytes]  # RGBA pixels [H, W, 4] uint8, and the same picture as PNG


def mode() -> str:
    """Where figures are drawn: ``"process"`` (default) or ``"thread"``, from ``LIGHTNING_VIZ_RENDER``.

    Raises:
        ValueError: the variable is set to something else (names the variable and the valid choices).
    """
    value = os.environ.get(ENV, "process").strip().lower() or "process"
    if value not in MODES:
        raise ValueError(f"environment variable {ENV} must be one of {list(MODES)}; got {value!r}")
    return value


def draw(render: Callable[[Any], Any], data: Any) -> Rendered:
    """``render(data)`` drawn here: rasterised once, closed, PNG-encoded."""
    from lightning_viz.render._figure import close_figure, png_bytes, to_rgba

    fig = render(data)
    try:
        rgba = to_rgba(fig)
    finally:
        close_figure(fig)
    return rgba, png_bytes(rgba)


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes | None:
    """One frame, or None at end of stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


class RenderProcess:
    """The child process that draws, and the fallback to drawing in the calling thread."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.broken: str | None = None  # why drawing fell back to the thread for good
        self.drawn_in_process = 0
        self.drawn_in_thread = 0
        self._preloaded: set[str] = set()  # modules the child was asked to import
        self.costs: dict[
            str, list[float]
        ] = {}  # render function -> [figures drawn, CPU seconds drawing them]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self, preload: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        # the child imports what the parent can (render functions are pickled by module and name)
        env["PYTHONPATH"] = os.pathsep.join(p if p else os.getcwd() for p in sys.path)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
        return subprocess.Popen(
            [sys.executable, "-m", "lightning_viz.core.render_child", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )

    def _fail(self, why: str) -> None:
        from lightning_viz.core.warn import warn_once  # imports Lightning: not in the child

        self.broken = why
        self.close()
        warn_once(
            ("renderer", "broken"),
            f"lightning-viz: the rendering process stopped ({why}); figures are drawn in a background "
            "thread of the training process from now on. Training continues.",
        )

    def start(self, preload: Sequence[str] = ()) -> None:
        """Start the child now, if figures are to be drawn in it, so that it loads matplotlib and the
        render functions before training takes the CPU (it does so at normal priority, then drops to
        the lowest priority: :func:`~lightning_viz.core.render_child.lowest_priority`). Callbacks call
        this in ``setup``; otherwise the child starts on the first figure. The ``lightning-viz`` command calls it before it imports
        Lightning (:mod:`lightning_viz.command`), so that both import side by side.

        Args:
            preload: modules the child imports too, at start-up (a child already running imports them
                when it reads the request, at its low priority): what some render function needs, such as
                ``torchmetrics`` for :mod:`lightning_viz.render.metrics`.
        """
        with self._lock:
            if self.broken is not None or mode() != "process":
                return
            wanted = [m for m in preload if m not in self._preloaded]
            self._preloaded.update(wanted)
            if self._proc is None:
                self._ensure_started(wanted)
            elif wanted:
                self._call(pickle.dumps(("preload", wanted)))

    def promote(self) -> bool:
        """Give the child its normal priority back (``SCHED_OTHER``, ``nice`` 0) when training is over, so that
        the fit-end drawing is not starved by other processes; whether it worked. Linux allows it to root and
        to processes with ``CAP_SYS_NICE`` (an unprivileged one cannot raise a priority it lowered); elsewhere
        the child stays at the lowest priority. The next :meth:`demote` lowers it again."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.sched_setscheduler(proc.pid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, proc.pid, 0)
        except (AttributeError, OSError):
            return False
        return True

    def demote(self) -> None:
        """Drop the child to the lowest priority now, from this process: when training starts, while it may
        still be importing a preload at normal priority. Its first figure does the same from inside
        (:func:`~lightning_viz.core.render_child.lowest_priority`)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
        except (AttributeError, OSError):
            pass
        try:
            os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            pass

    def _ensure_started(self, preload: Sequence[str] = ()) -> bool:
        if self._proc is None:
            try:
                self._proc = self._start(preload)
            except OSError as err:
                self._fail(f"could not start: {err!r}")
                return False
        return True

    def _call(self, request: bytes) -> tuple[Any, ...] | None:
        """Send one request and wait for its reply; None when the child is gone (it is then given up)."""
        if not self._ensure_started():
            return None
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, request)
            reply = _receive(proc.stdout)
        except (OSError, ValueError) as err:
            reply, why = None, repr(err)
        else:
            why = "it closed its output"
        if reply is None:
            code = proc.poll()
            self._fail(f"exit code {code}" if code is not None else why)
            return None
        return pickle.loads(reply)

    def render(self, render: Callable[[Any], Any], data: Any) -> Rendered:
        """Draw ``render(data)`` in the child process if possible, else in the calling thread.

        Raises:
            Exception: whatever ``render`` raised (re-raised here, with the child's traceback in the
                message when it was drawn there).
        """
        with self._lock:
            if self.broken is None and mode() == "process":
                try:
                    request = pickle.dumps(("render", render, data), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # a lambda or closure: draw it here
                    request = None
                reply = self._call(request) if request is not None else None
                if reply is not None and reply[0] == "ok":
                    self.drawn_in_process += 1
                    self._count(render, reply[3])
                    return reply[1], reply[2]
                if reply is not None and reply[0] == "error":
                    raise RuntimeError(f"{reply[1]} in the rendering process: {reply[2]}\n{reply[3]}")
                # "load_error" (the child cannot import the function) or the child is gone: draw here
            self.drawn_in_thread += 1
        start = time.thread_time()
        rendered = draw(render, data)
        self._count(render, time.thread_time() - start)
        return rendered

    def _count(self, render: Callable[[Any], Any], cpu_s: float) -> None:
        """Add one drawing of ``render`` and its CPU seconds to :attr:`costs` (``make bench`` reads them)."""
        name = f"{getattr(render, '__module__', '?')}.{getattr(render, '__qualname__', repr(render))}"
        entry = self.costs.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += cpu_s

    def cpu_seconds(self) -> float | None:
        """CPU time the child has used so far (user and system, from ``/proc``), or None where unknown.

        Read without the lock (which a drawing holds): the render queue uses it to tell a child that is
        drawing from one that gets no CPU (:meth:`~lightning_viz.core.writer.BackgroundWriter.late`).
        """
        proc = self._proc
        if proc is None or self.broken is not None:
            return None
        try:
            with open(f"/proc/{proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def child_stats(self) -> dict[str, Any]:
        """Figures still open in the child, and its resident memory in MB (empty when no child runs)."""
        with self._lock:
            if self._proc is None or self.broken is not None:
                return {}
            reply = self._call(pickle.dumps(("stats",)))
        return dict(reply[1]) if reply is not None else {}

    def close(self) -> None:
        """Stop the child (it also stops by itself when this process's end of the pipe closes)."""
        proc, self._proc = self._proc, None
        self._preloaded.clear()
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


_process: RenderProcess | None = None
_process_lock = threading.Lock()


def get_renderer() -> RenderProcess:
    """The process-wide renderer (its child starts on the first figure, and stops at interpreter exit)."""
    global _process
    with _process_lock:
        if _process is None:
            import atexit

            _process = RenderProcess()
            atexit.register(_shutdown)
        return _process


def stop_renderer() -> None:
    """Stop the render process if one runs (a later figure starts it again)."""
    with _process_lock:
        if _process is not None:
            _process.close()


def _shutdown() -> None:
    """At interpreter exit: draw what is still queued, then stop the child."""
    from lightning_viz.core import writer

    writer.flush()
    if _process is not None:
        _process.close()


def render_png(render: Callable[[Any], Any], data: Any) -> Rendered:
    """Draw ``render(data)`` (a pure function from plain data to a Figure) off the training thread's GIL."""
    return get_renderer().render(render, data)

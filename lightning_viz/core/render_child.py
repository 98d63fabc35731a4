"""The render process itself: ``python -m lightning_viz.core.render_child [module ...]``.

:class:`lightning_viz.core.renderer.RenderProcess` starts it and talks to it; this module is what runs in
the child. It loads matplotlib, the render functions and the modules named on its command line, draws once,
then serves length-prefixed pickled requests from stdin (``("render", fn, data)``, ``("stats",)``,
``("preload", modules)``) and writes the replies to its original stdout. Its priority drops to ``nice`` 19
and ``SCHED_IDLE`` at the first figure (the parent demotes it when training starts).
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from lightning_viz.core.renderer import _receive, _send, draw


def _child_stats() -> dict[str, Any]:
    from lightning_viz.render._figure import open_figure_count

    rss = None
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / float(1 << 20)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "open_figures": open_figure_count(),
        "rss_mb": rss,
        "pid": os.getpid(),
        "imports_torch": "torch" in sys.modules,
        "warmed_up": "lightning_viz.render.histograms" in sys.modules,
        "sched_idle": hasattr(os, "SCHED_IDLE") and os.sched_getscheduler(0) == os.SCHED_IDLE,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "preloaded": list(_preloaded),
    }


def _warm_up(preload: Sequence[str] = ()) -> None:
    """Load matplotlib, the render functions, the ``preload`` modules and a font, and draw once: the child's
    one-off start-up work, done before it lowers its priority (at ``nice`` 19 on a busy machine it could
    take minutes)."""
    import matplotlib

    matplotlib.use("Agg")
    from lightning_viz.render import _figure, activations, curves, health, histograms, summary  # noqa: F401

    _import(preload)
    fig = _figure.new_figure(1.0, 0.5, layout=None)
    try:
        fig.text(0.1, 0.5, "warm-up 0.1", fontsize=8)
        _figure.to_rgba(fig)
    finally:
        _figure.close_figure(fig)


_preloaded: list[str] = []  # in the child: the preload modules it imported


def _import(modules: Sequence[str]) -> None:
    """Import each module; one that fails is left for the figure that needs it to report."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            continue
        _preloaded.append(name)


def _freeze() -> None:
    """Collect, then move every object alive now out of the collector's view (``gc.freeze``).

    A figure is a web of reference cycles, so the child collects after each one; a full collection also
    walks every object of the loaded libraries (torch alone has hundreds of thousands), which took longer
    than drawing the figure. The modules and their caches live as long as the child, so they are frozen
    after start-up and whenever a figure imported more; each collection then walks one figure's objects.
    """
    gc.collect()
    gc.freeze()


def lowest_priority() -> None:
    """``nice`` 19, and on Linux the ``SCHED_IDLE`` policy: the child then runs only when no training thread
    wants the core. At ``nice`` 19 alone it still took time slices from training threads, and a training
    step whose intra-op threads wait for one another at a barrier stalls whenever one of them is preempted;
    with ``SCHED_IDLE`` it is not preempted by the child at all."""
    try:
        os.nice(19)
    except (AttributeError, OSError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _malloc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (return freed heap memory to the system), or a no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


def main() -> None:
    """Serve render requests from stdin until it closes; replies go to the original stdout only. The
    arguments name modules to import at start-up (:meth:`RenderProcess.start`'s ``preload``)."""
    with os.fdopen(os.dup(1), "wb") as out:  # closed at the end (no ResourceWarning at exit)
        _serve(out, sys.argv[1:])


def _serve(out: IO[bytes], preload: Sequence[str] = ()) -> None:
    os.dup2(2, 1)  # anything a render function prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    try:
        _warm_up(preload)
    except Exception:  # a failure here shows again, with its reason, on the first real figure
        pass
    _freeze()
    lowered = False  # the priority drops at the first figure: preloads before it run at normal priority
    import traceback

    trim = _malloc_trim()
    modules = len(sys.modules)
    inp = sys.stdin.buffer
    while True:
        frame = _receive(inp)
        if frame is None:
            return
        try:
            request = pickle.loads(frame)
        except Exception as err:
            reply: tuple[Any, ...] = ("load_error", repr(err))
        else:
            if request[0] == "stats":
                reply = ("stats", _child_stats())
            elif request[0] == "preload":  # answered first: the parent goes on while this imports
                _send(out, pickle.dumps(("preloading",)))
                _import(request[1])
                continue
            else:
                if not lowered:
                    lowest_priority()
                    lowered = True
                try:
                    start = time.process_time()
                    rgba, png = draw(request[1], request[2])
                    reply = ("ok", rgba, png, time.process_time() - start)
                except Exception as err:
                    reply = ("error", type(err).__name__, str(err), traceback.format_exc(limit=8))
        _send(out, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        del reply, frame
        # A figure is a web of reference cycles, and a big one leaves freed heap that glibc keeps: collect
        # and hand it back, so the child's memory follows the figure in hand, not the largest ever drawn.
        if len(sys.modules) != modules:  # the figure imported more (a torchmetrics plot): freeze those too
            _freeze()
            modules = len(sys.modules)
        else:
            gc.collect()
        trim()


if __name__ == "__main__":
    main()

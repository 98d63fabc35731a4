"""Figure life cycle without pyplot: create, rasterise once, close; and a registry of open figures."""

from __future__ import annotations

import io
import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_lock = threading.Lock()
_open: set[int] = set()


def new_figure(width: float = 6.4, height: float = 4.8, dpi: int = 100) -> Figure:
    """A matplotlib Figure on an Agg canvas, registered as open until :func:`close_figure`."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    with _lock:
        _open.add(id(fig))
    return fig


def close_figure(fig: Figure) -> None:
    """Release a figure made by :func:`new_figure`."""
    with _lock:
        _open.discard(id(fig))
    fig.clear()


def open_figure_count() -> int:
    """Figures created by lightning-viz and not yet closed."""
    with _lock:
        return len(_open)


def to_rgba(fig: Figure) -> np.ndarray:
    """Rasterise the figure once: an ``[H, W, 4]`` uint8 array."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def png_bytes(rgba: np.ndarray) -> bytes:
    """Encode an RGBA array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", optimize=False, compress_level=4)
    return buf.getvalue()

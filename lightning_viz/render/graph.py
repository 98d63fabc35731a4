"""The model graph figure: the Graphviz DOT source of the module graph, drawn by ``dot`` and shown at its
own pixel size.

The data (as ``ModelGraphCallback`` makes it and saves as ``model_graph.json``)::

    {"dot": "digraph model { ... }", "model": "ResNet", "depth": 3, "meta": true, "modules": 53}

``dot`` (Graphviz) draws it; :func:`dot_pipe` is also how the callback writes the SVG beside the PNG.

Pure function: plain data in, a matplotlib ``Figure`` out; the caller closes it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import matplotlib.image
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure

DOT_TIMEOUT_S = 120
DPI = 96
# The largest drawing kept at its natural size: dot scales a larger one down to fit (the PNG is read back as
# float32 RGBA, 16 bytes a pixel, to be drawn: 12 M pixels is ~190 MB for a moment in the render process).
MAX_SIDE_PX = 24_000
MAX_PIXELS = 12_000_000


def dot_binary() -> str | None:
    """The path of Graphviz's ``dot``, or ``None``."""
    return shutil.which("dot")


def dot_pipe(source: str, fmt: str, dpi: int = DPI) -> bytes:
    """``source`` (DOT) drawn by ``dot`` as ``fmt`` (``png``, ``svg``); raises ``RuntimeError`` with ``dot``'s
    own message when it fails or is not installed."""
    dot = dot_binary()
    if dot is None:
        raise RuntimeError("Graphviz's `dot` is not on PATH")
    args = [dot, f"-T{fmt}"] + ([f"-Gdpi={dpi}"] if fmt == "png" else [])
    done = subprocess.run(
        args, input=source.encode(), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout


def bounded_size(source: str) -> str | None:
    """The ``size`` graph attribute (inches) that bounds ``source``'s drawing (DOT, with no ``size``) by
    ``MAX_SIDE_PX`` and ``MAX_PIXELS`` at ``DPI``, or ``None`` when its natural size is within them (dot lays
    it out once to tell)."""
    first = dot_pipe(source, "plain").decode().split("\n", 1)[0].split()  # "graph <scale> <width> <height>"
    w, h = float(first[2]), float(first[3])
    scale = min(1.0, MAX_SIDE_PX / (max(w, h) * DPI), (MAX_PIXELS / (w * h * DPI * DPI)) ** 0.5)
    return None if scale >= 1.0 else f"{w * scale:.2f},{h * scale:.2f}"


def render_graph(data: Mapping[str, Any]) -> Figure:
    """The module graph as ``dot`` draws it, with a title line.

    Args:
        data: see the module docstring.

    Returns:
        The figure (the caller closes it).
    """
    image = matplotlib.image.imread(io.BytesIO(dot_pipe(str(data["dot"]), "png")), format="png")
    h, w = image.shape[:2]
    how = "on the meta device" if data.get("meta") else "on the model itself"
    lines = [
        f"{data.get('model', 'model')}: the module graph to depth {data.get('depth', '?')}",
        f"{data.get('modules', '?')} modules, traced {how}",
    ]
    title_px = 52
    width = max(w, 7 * max(map(len, lines)) + 40)  # about 7 pixels a character at 10 points
    height = h + title_px
    fig = new_figure(width / DPI, height / DPI, dpi=DPI, layout=None)
    fig.figimage(image, xo=(width - w) // 2, yo=0, origin="upper")
    fig.text(0.5, 1 - 8 / height, "\n".join(lines), ha="center", va="top", fontsize=10, linespacing=1.4)
    return fig

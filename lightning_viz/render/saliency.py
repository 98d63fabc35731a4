"""The saliency figure: where the model looks in each example of a fixed sample.

The data (as ``SaliencyCallback`` makes it and saves as ``saliency_stepNNNNNN.json``)::

    {"step": 40, "epoch": 1, "method": "gradcam" | "input_gradient", "layer": "features.conv2" or null,
     "explain": "predicted" | "true" | "value" (one output value explained as it is), "maps": [[[...]]] (N x H x W, or N x F; each scaled to its maximum),
     "peak": [...] (each map's maximum before scaling), "images": N x C x H x W or null,
     "target": [class explained, ...], "kind": "class" | "value", "pred": [...], "conf": [...] or nulls,
     "true": [...] or null, "class_names": [...] or null}

Image inputs: for each example its input above, and the map over the input (``jet``, half transparent)
below, titled ``true → predicted (probability)`` in green when right and red when wrong. Flat inputs: one
heatmap, an example per row, a feature per column.

Pure function: plain data in, a matplotlib ``Figure`` out; the caller closes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_label

PER_ROW = 8
TITLE_PT = 8  # each example's "true -> predicted" title
RIGHT, WRONG = "#1a7f37", "#cf222e"


def _name(i: Any, names: Sequence[str] | None) -> str:
    if isinstance(i, float) and not i.is_integer():
        return f"{i:.3g}"
    k = int(i)
    return str(names[k]) if names and 0 <= k < len(names) else str(k)


def _parts(data: Mapping[str, Any], i: int) -> tuple[str | None, str, str]:
    """(true, predicted (confidence), colour) of example ``i``; true is ``None`` when unknown."""
    names, pred, true = data.get("class_names"), data["pred"][i], (data.get("true") or [None] * (i + 1))[i]
    conf = (data.get("conf") or [None] * (i + 1))[i]
    p = _name(pred, names) + (f" ({conf:.2f})" if conf is not None else "")
    if true is None:
        return None, p, "0.2"
    if data.get("kind") == "value":
        return _name(true, None), p, "0.2"
    return _name(true, names), p, RIGHT if int(true) == int(pred) else WRONG


def _label(data: Mapping[str, Any], i: int) -> tuple[str, str]:
    true, p, colour = _parts(data, i)
    return (p if true is None else f"{true} → {p}"), colour


def _image(x: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` as an ``[H, W]`` or ``[H, W, 3]`` image on its own range."""
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def render_saliency(data: Mapping[str, Any]) -> Figure:
    """The sample's saliency maps, beside (image inputs: under) the inputs.

    Args:
        data: see the module docstring.

    Returns:
        The figure (the caller closes it).
    """
    maps = np.asarray(data["maps"], dtype=np.float64)
    n = len(maps)
    what = (
        f"Grad-CAM of {data.get('layer')}" if data.get("method") == "gradcam" else "input-gradient saliency"
    )
    of = {"predicted": "the predicted class", "true": "the true class", "value": "the predicted value"}.get(
        str(data.get("explain")), "the output"
    )
    title = (
        f"{what} for {of}\nstep {data.get('step', '?')} (epoch {data.get('epoch', '?')}); "
        "each map scaled to its own maximum"
    )
    cmap = matplotlib.colormaps["jet"]
    if data.get("images") is not None and maps.ndim == 3:
        images = np.asarray(data["images"], dtype=np.float64)
        cols = min(n, PER_ROW)
        rows = math.ceil(n / cols)
        fig = new_figure(max(6.0, 1.45 * cols + 1.2), 2.9 * rows + 0.6)
        grid = fig.add_gridspec(2 * rows, cols)
        art = None
        titled = []
        for i in range(n):
            r, c = divmod(i, cols)
            top, bottom = fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c])
            img = _image(images[i])
            gray = "gray" if img.ndim == 2 else None
            top.imshow(img, cmap=gray, interpolation="nearest")
            bottom.imshow(img, cmap=gray, interpolation="nearest")
            art = bottom.imshow(maps[i], cmap=cmap, alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            true, p, colour = _parts(data, i)
            room = 0.9 * top.get_position().width * fig.get_figwidth()  # inches, before the layout
            text, size = (p, TITLE_PT) if true is None else fit_label(fig, true, p, room, TITLE_PT)
            top.set_title(text, fontsize=size, color=colour, linespacing=1.1)
            titled.append(top.title)
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
            if c == 0:
                top.set_ylabel("input", fontsize=8)
                bottom.set_ylabel("saliency", fontsize=8)
        common = min((t.get_fontsize() for t in titled), default=TITLE_PT)  # one size for every title
        for t in titled:
            t.set_fontsize(common)
        if art is not None:
            fig.colorbar(art, ax=fig.axes, shrink=0.6, label="share of the map's maximum")
        fig.suptitle(title, fontsize=10)
        return fig
    flat = maps.reshape(n, -1)
    fig = new_figure(max(6.0, min(14.0, 0.25 * flat.shape[1] + 3)), max(3.0, 0.35 * n + 1.5))
    ax = fig.add_subplot()
    art = ax.imshow(flat, aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    labels = [_label(data, i) for i in range(n)]
    ax.set_yticks(range(n), [t for t, _ in labels], fontsize=8)
    for tick, (_, colour) in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(colour)
    ax.set_xlabel("input feature")
    ax.set_ylabel("example (true → predicted)")
    fig.colorbar(art, ax=ax, label="share of the map's maximum")
    ax.set_title(title, fontsize=10)
    return fig

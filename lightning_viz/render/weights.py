"""Weight pictures: a convolution's filters as an image grid, and Linear weight matrices as heatmaps.

The data (as ``WeightPictureCallback`` makes it and saves as ``weights_stepNNNNNN.json``)::

    {"step": 40, "epoch": 1,
     "filters": {"name": "conv1", "kind": "Conv2d", "tiles": [K, h, w] or [K, h, w, 3], "shape": [out, in,
                 kh, kw], "channels": "RGB" | "mean over 16 input channels" | "one input channel"} or null,
     "matrices": [{"name": "fc1", "values": [r, c], "shape": [out, in], "block": [br, bc]}, ...]}

Filter tiles are each scaled to their own range (white = the filter's largest value): the pattern a filter
looks for, not its magnitude. A matrix larger than the cap arrives as means over ``block`` cells; its title
says so. Matrices use one diverging colour scale each, symmetric around zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import (
    PAD,
    Room,
    colorbar_room,
    fit_axes,
    flatten_ticks,
    place_grid,
    suptitle,
)
from lightning_viz.render.activations import tile_grid

CBAR_WIDTH, CBAR_GAP = 0.12, 0.1  # inches


def filter_grid(tiles: np.ndarray) -> np.ndarray:
    """``[K, h, w]`` or ``[K, h, w, 3]`` filters, each scaled to [0, 1] by its own range, laid out in a
    near-square grid with one pixel of white between them."""
    t = np.asarray(tiles, dtype=np.float64)
    k = t.shape[0]
    flat = t.reshape(k, -1)
    lo, hi = flat.min(1), flat.max(1)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (t - lo.reshape((k,) + (1,) * (t.ndim - 1))) / span.reshape((k,) + (1,) * (t.ndim - 1))
    nrow = math.ceil(math.sqrt(k))
    if scaled.ndim == 3:
        return tile_grid(scaled, nrow, 1, 1.0)
    return np.stack([tile_grid(scaled[..., c], nrow, 1, 1.0) for c in range(3)], axis=-1)


def render_weight_pictures(data: Mapping[str, Any]) -> Figure:
    """The filter grid (when there is one) and one heatmap per matrix, in a column.

    Args:
        data: see the module docstring.

    Returns:
        The figure (the caller closes it).
    """
    filters = data.get("filters")
    matrices = list(data.get("matrices") or [])
    n = (filters is not None) + len(matrices)
    fig = new_figure(7.0, 0.6 + 3.2 * max(n, 1), layout=None)
    top = suptitle(fig, f"weights at step {data.get('step', '?')} (epoch {data.get('epoch', '?')})", 10)
    axes, rooms, bars = [], [], []
    if filters is not None:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        grid = filter_grid(np.asarray(filters["tiles"]))
        ax.imshow(grid, cmap=None if grid.ndim == 3 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        shape = " x ".join(str(int(v)) for v in filters["shape"])
        shown = len(filters["tiles"])
        ax.set_title(
            f"{filters['name']} ({filters['kind']}, {shape}): {shown} of {int(filters['shape'][0])} filters, "
            f"{filters['channels']}\neach scaled to its own range",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
        rooms.append(fit_axes(ax))
    for m in matrices:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        values = np.asarray(m["values"], dtype=np.float64)
        vmax = float(np.nanmax(np.abs(values))) if values.size else 1.0
        vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="magenta")
        out_f, in_f = (int(v) for v in m["shape"])
        # in the matrix's own indices, also when shown as block means
        extent = (-0.5, in_f - 0.5, out_f - 0.5, -0.5)
        im = ax.imshow(
            values, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest", extent=extent
        )
        br, bc = (int(v) for v in m.get("block", (1, 1)))
        title = f"{m['name']} (Linear, {out_f} x {in_f})"
        if (br, bc) != (1, 1):
            title += f": means over {br} x {bc} blocks"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("input feature", fontsize=8)
        ax.set_ylabel("output unit", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5, integer=True))
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5, integer=True))
        cax = fig.add_axes((0.0, 0.0, 0.01, 0.5), label="<colorbar>")
        cb = fig.colorbar(im, cax=cax)
        cb.locator = matplotlib.ticker.MaxNLocator(5)
        cb.set_label("weight", fontsize=8)
        axes.append(ax)
        rooms.append(fit_axes(ax) | Room(right=CBAR_GAP + CBAR_WIDTH + colorbar_room(cb) + PAD))
        bars.append((ax, cax))
    if not axes:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.text(0.5, 0.5, "no convolution or Linear layer chosen", ha="center", va="center")
        ax.set_axis_off()
        axes.append(ax)
        rooms.append(Room())
    boxes = place_grid(fig, axes, 1, rooms, top=top)
    fig_w, fig_h = fig.get_size_inches()
    for ax, cax in bars:
        x, y, w, h = boxes[axes.index(ax)]
        cax.set_position(((x + w + CBAR_GAP) / fig_w, y / fig_h, CBAR_WIDTH / fig_w, h / fig_h))
        flatten_ticks(ax)
        flatten_ticks(cax)
    return fig

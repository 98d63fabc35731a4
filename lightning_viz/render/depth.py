"""A quantity per layer across depth, one line per logging step: how it changed from the input side to
the output side, and over training.

The data (as ``ActivationHistogramCallback`` makes it and saves as ``activation_grad_norms.json``)::

    {"title": "...", "ylabel": "...", "layers": ["conv1", ...], "steps": [0, 50, ...],
     "values": [[...per layer...], ...per step...]}

``values`` may hold NaN (the layer did not run, or had no gradient, at that step: no point drawn). Up to
``MAX_LINES`` steps are drawn, evenly spread, the first and the latest always among them; the colour of a
line is its step, on the colour bar. The y axis is logarithmic when every value is positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import (
    PAD,
    Room,
    colorbar_room,
    fit_axes,
    flatten_ticks,
    nice_ticks,
    place_grid,
    plain_log_axis,
)

MAX_LINES = 12
CBAR_WIDTH, CBAR_GAP = 0.15, 0.15  # inches


def shown_steps(n: int, most: int = MAX_LINES) -> list[int]:
    """Indices of at most ``most`` of ``n`` steps, evenly spread, with the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def render_depth_profile(data: Mapping[str, Any]) -> Figure:
    """One line per logging step over the layers in model order (x), the value on y.

    Args:
        data: see the module docstring.

    Returns:
        The figure (the caller closes it).
    """
    layers = [str(n) for n in data.get("layers", [])]
    steps = [int(s) for s in data.get("steps", [])]
    values = np.asarray(data.get("values", []), dtype=np.float64).reshape(len(steps), len(layers))
    width = min(16.0, max(6.0, 0.35 * len(layers) + 2.0))
    fig = new_figure(width, 5.0, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_title(str(data.get("title", "")), fontsize=10)
    finite = values[np.isfinite(values)]
    if not layers or not steps or not finite.size:
        ax.text(0.5, 0.5, "nothing recorded yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        place_grid(fig, [ax], 1, fit_axes(ax))
        return fig
    norm = Normalize(vmin=min(steps), vmax=max(steps) if max(steps) > min(steps) else min(steps) + 1)
    cmap = matplotlib.colormaps["viridis"]
    x = np.arange(len(layers))
    for i in shown_steps(len(steps)):
        row = values[i]
        ok = np.isfinite(row)
        ax.plot(x[ok], row[ok], color=cmap(norm(steps[i])), linewidth=1.2, marker="o", markersize=2.5)
    if (finite > 0).all() and finite.max() > finite.min():
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    else:
        nice_ticks(ax.yaxis, 6)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xticks(x, layers, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer (model order: input side left)", fontsize=8)
    ax.set_ylabel(str(data.get("ylabel", "")), fontsize=8)
    ax.grid(True, alpha=0.3)
    room = fit_axes(ax)
    fig_w, fig_h = fig.get_size_inches()
    cax = fig.add_axes((0.0, 0.0, CBAR_WIDTH / fig_w, 0.5), label="<colorbar>")
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="step")
    cb.locator = MaxNLocator(5, integer=True)
    strip = CBAR_GAP + CBAR_WIDTH + colorbar_room(cb) + PAD
    (box,) = place_grid(fig, [ax], 1, room | Room(right=strip))
    cax.set_position(
        ((box[0] + box[2] + CBAR_GAP) / fig_w, box[1] / fig_h, CBAR_WIDTH / fig_w, box[3] / fig_h)
    )
    flatten_ticks(ax)
    flatten_ticks(cax)
    return fig

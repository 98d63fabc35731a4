"""How each parameter's distribution moved over training: one step x value heatmap per parameter.

Pure functions: plain numpy data in, a matplotlib ``Figure`` out (made with :func:`new_figure`, never
pyplot). The caller closes the figure (``VizCallback.emit_figure`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogLocator

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import (
    MINOR_SUBS,
    PAD,
    PlainLogFormatter,
    colorbar_room,
    fit_axes,
    flatten_ticks,
    nice_ticks,
    place_grid,
    shrink_title,
    suptitle,
)

MAX_PANELS = 16
MAX_COLS = 4
CMAP = "viridis"
CBAR_WIDTH = 0.2  # inches


def rebin(edges: np.ndarray, counts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Counts on ``edges`` spread onto the bins of ``grid``, assuming values uniform within each bin.

    Interpolates the cumulative count at the grid edges, so the total is preserved for every value
    inside the grid and a source bin that lines up with grid bins is copied exactly.
    """
    cum = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=np.float64))])
    return np.diff(np.interp(grid, np.asarray(edges, dtype=np.float64), cum))


def step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell boundaries for (possibly unevenly spaced) steps: midpoints, extended by half a gap at the ends."""
    s = np.asarray(steps, dtype=np.float64)
    if s.size == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def value_grid(lo: float, hi: float, width: float, max_cells: int = 512) -> np.ndarray:
    """Edges of a common value grid over [lo, hi]: multiples of ``width`` (doubled until at most
    ``max_cells`` cells), so that power-of-two aligned source bins split into whole cells, never parts."""
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        lo, hi = (lo - 0.5, lo + 0.5) if math.isfinite(lo) else (-0.5, 0.5)
    if not (math.isfinite(width) and width > 0):
        width = (hi - lo) / max_cells
    while (hi - lo) / width > max_cells:
        width *= 2
    start, stop = math.floor(lo / width), math.ceil(hi / width)
    return (np.arange(stop - start + 1, dtype=np.float64) + start) * width


def choose_panels(params: Sequence[Mapping[str, Any]], max_panels: int = MAX_PANELS) -> list[int]:
    """Indices of the parameters to draw, in their given order.

    Parameters with non-finite values come first, then the largest (most values); at most ``max_panels``.
    """
    order = sorted(
        range(len(params)),
        key=lambda i: (-int(np.sum(params[i]["nonfinite"]) > 0), -int(params[i].get("numel", 0)), i),
    )
    return sorted(order[:max_panels])


def panel_matrix(p: Mapping[str, Any], max_cells: int = 512) -> tuple[np.ndarray, np.ndarray] | None:
    """A parameter's snapshots on one value grid: ``(grid_edges, share[cells, steps])``.

    ``share`` is the fraction of each snapshot's finite values in each cell; None when no snapshot holds a
    finite value. The grid spans the occupied bins of all snapshots.
    """
    counts = np.asarray(p["counts"], dtype=np.float64)
    if "edges" in p:
        edges = np.asarray(p["edges"], dtype=np.float64)
    else:  # the compact form: bin i of snapshot j is [(k[j] + i) * w[j], (k[j] + i + 1) * w[j])
        k, w = np.asarray(p["k"], dtype=np.float64), np.asarray(p["w"], dtype=np.float64)
        edges = (k[:, None] + np.arange(counts.shape[1] + 1)) * w[:, None]
    filled = counts.sum(axis=1) > 0
    if not filled.any():
        return None
    occupied = counts[filled] > 0
    lo = min(e[np.argmax(o)] for e, o in zip(edges[filled], occupied))
    hi = max(e[len(o) - np.argmax(o[::-1])] for e, o in zip(edges[filled], occupied))
    grid = value_grid(lo, hi, float(np.min(edges[filled, 1] - edges[filled, 0])), max_cells)
    z = np.zeros((grid.size - 1, counts.shape[0]))
    for j in np.flatnonzero(filled):
        z[:, j] = rebin(edges[j], counts[j], grid) / counts[j].sum()
    return grid, z


def _panel(
    ax: Axes,
    p: Mapping[str, Any],
    matrix: tuple[np.ndarray, np.ndarray] | None,
    norm: LogNorm,
    *,
    xlabels: bool = True,
    ylabel: bool = True,
) -> None:
    steps = np.asarray(p["steps"])
    nonfinite = np.asarray(p["nonfinite"])
    ax.set_title(f"{p['name']} ({int(p.get('numel', 0)):,} values)", fontsize=8)
    ax.tick_params(labelsize=7, labelbottom=xlabels)
    if xlabels:
        ax.set_xlabel("step", fontsize=7)
    if ylabel:
        ax.set_ylabel("value", fontsize=7)
    xe = step_edges(steps)
    if matrix is not None:
        grid, z = matrix
        ax.pcolormesh(xe, grid, np.ma.masked_less_equal(z, 0.0), norm=norm, cmap=CMAP, shading="flat")
        ax.set_ylim(grid[0], grid[-1])
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_xlim(xe[0], xe[-1])
    bad = nonfinite > 0
    if bad.any():
        first = int(steps[np.argmax(bad)])
        ax.text(
            0.02,
            0.97,
            f"non-finite: {int(nonfinite.sum()):,} values at {int(bad.sum())} step(s), first at step {first}",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            color="red",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "red", "pad": 1.5},
        )
        for x in steps[bad]:
            ax.axvline(float(x), color="red", lw=0.8, alpha=0.7)


def render_evolution(data: Mapping[str, Any], max_panels: int = MAX_PANELS) -> Figure:
    """One heatmap panel per parameter: x is the step, y the value, colour the share of values (log).

    Each panel re-bins every snapshot's histogram onto one value grid that spans the occupied range of
    all its snapshots. Steps with NaN/Inf values get a red line and a red note with the count.

    Args:
        data: ``{"title": str, "params": [{"name": str, "numel": int, "steps": [n],
            "edges": [n, bins + 1], "counts": [n, bins], "nonfinite": [n]}, ...]}`` with steps increasing;
            ``"k": [n], "w": [n]`` may stand for ``edges = (k[:, None] + arange(bins + 1)) * w[:, None]``.
        max_panels: at most this many panels; the title says how many parameters were left out.

    Returns:
        The figure (the caller closes it).
    """
    params = list(data.get("params", []))
    title = str(data.get("title", "distribution over training"))
    shown = choose_panels(params, max_panels)
    kept = set(shown)
    omitted = [p["name"] for i, p in enumerate(params) if i not in kept]
    if omitted:
        names = ", ".join(omitted[:4]) + (", ..." if len(omitted) > 4 else "")
        title += f"\n{len(shown)} of {len(params)} parameters shown; omitted {len(omitted)} smaller: {names}"

    n = max(len(shown), 1)
    ncols = min(MAX_COLS, n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(3.0 * ncols + 1.2, 2.3 * nrows + 0.9, layout=None)
    top = suptitle(fig, title, 9)

    max_cells = int(
        np.clip(4 * max((np.asarray(p["counts"]).shape[-1] for p in params), default=64), 64, 512)
    )
    matrices = [panel_matrix(params[i], max_cells) for i in shown]
    positive = [m[1][m[1] > 0].min() for m in matrices if m is not None and (m[1] > 0).any()]
    vmin = float(np.clip(min(positive), 1e-6, 0.1)) if positive else 1e-3
    norm = LogNorm(vmin=vmin, vmax=1.0)

    # When every panel covers the same steps, the step labels go under the lowest panel of each column
    # only, and "value" beside the first column only: the same reading, less text to lay out and draw.
    same_steps = all(np.array_equal(params[i]["steps"], params[shown[0]]["steps"]) for i in shown)
    axes, rooms = [], []
    for slot, (i, matrix) in enumerate(zip(shown, matrices)):
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        xlabels = not same_steps or slot + ncols >= len(shown)
        _panel(ax, params[i], matrix, norm, xlabels=xlabels, ylabel=not same_steps or slot % ncols == 0)
        nice_ticks(ax.xaxis, 4, integer=True)
        if len(params[i]["steps"]) < 3:  # a step or two: ticks at the steps, not at fractions between
            ax.xaxis.set_major_locator(FixedLocator(np.asarray(params[i]["steps"], dtype=float)))
        nice_ticks(ax.yaxis, 5)
        rooms.append(fit_axes(ax, xticklabels=xlabels))
        axes.append(ax)
    if not axes:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.text(0.5, 0.5, "nothing captured yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        axes.append(ax)
        rooms.append(fit_axes(ax))

    # the shared colour bar: right of the panels, 90% of their height
    fig_w, fig_h = fig.get_size_inches()
    bar_h = 0.9 * (fig_h - top - 2 * PAD)
    bar_y = (fig_h - top - bar_h) / 2
    cax = fig.add_axes((0.0, bar_y / fig_h, CBAR_WIDTH / fig_w, bar_h / fig_h), label="<colorbar>")
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax, label="share of values per bin")
    cb.formatter = PlainLogFormatter()
    cb.minorlocator = LogLocator(subs=MINOR_SUBS)  # not every 2..9: each tick is costly to build
    strip = 2 * PAD + CBAR_WIDTH + colorbar_room(cb) + PAD
    cax.set_position(((fig_w - strip + 2 * PAD) / fig_w, bar_y / fig_h, CBAR_WIDTH / fig_w, bar_h / fig_h))
    boxes = place_grid(fig, axes, ncols, rooms, top=top, right=strip)
    for ax, (_, _, w, _) in zip(axes, boxes):
        shrink_title(ax, w + 2 * PAD)
        flatten_ticks(ax)
    flatten_ticks(cax)
    return fig

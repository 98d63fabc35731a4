"""Learning curves: plain metric history in, one axes per panel out.

The data (as ``CurvePlotCallback`` makes it and saves as ``curves.json``)::

    {"x_axis": "step" | "epoch", "smoothing": 0.6, "mark_best": true,
     "panels": [{"title": "loss", "series": ["train_loss_step", "val_loss"]}, ...],
     "series": {"val_loss": {"step": [...], "epoch": [...], "value": [...], "mode": "min",
                             "mode_from": "loss"}, ...}}

``mode`` is ``"min"``, ``"max"`` or ``null`` (no best point marked); ``mode_from`` (optional) says what gave
it, and ``"unknown"`` puts ``direction unknown`` in the legend instead of a best point (a learning rate,
``"learning rate"``, has none and says nothing); ``smooth`` (default true) says whether the series gets the
EMA (the callback smooths step-level series, not the few epoch-level points). Panels fill a grid of up to
four columns, so that a run logging many metrics still reads at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_axes, nice_ticks, place_grid

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def ema(values: Sequence[float], factor: float) -> list[float]:
    """Exponential moving average ``s[0] = v[0]``, ``s[t] = factor * s[t-1] + (1 - factor) * v[t]``.

    Non-finite values are skipped (the average carries over them); ``factor == 0`` returns the values.
    """
    out: list[float] = []
    s: float | None = None
    for v in values:
        v = float(v)
        if math.isfinite(v):
            s = v if s is None else factor * s + (1.0 - factor) * v
        out.append(math.nan if s is None else s)
    return out


def best_index(values: Sequence[float], mode: str | None) -> int | None:
    """Index of the smallest (``"min"``) or largest (``"max"``) finite value; the first one on ties."""
    if mode not in ("min", "max"):
        return None
    best: int | None = None
    for i, v in enumerate(values):
        v = float(v)
        if not math.isfinite(v):
            continue
        if best is None or (v < float(values[best]) if mode == "min" else v > float(values[best])):
            best = i
    return best


def epoch_bounds(series: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[int, tuple[int, int]]:
    """For each epoch, the first and last step at which any series has a point."""
    bounds: dict[int, tuple[int, int]] = {}
    for s in series.values():
        for step, epoch in zip(s["step"], s["epoch"]):
            e, st = int(epoch), int(step)
            lo, hi = bounds.get(e, (st, st))
            bounds[e] = (min(lo, st), max(hi, st))
    return bounds


def epoch_positions(
    steps: Sequence[int], epochs: Sequence[int], bounds: Mapping[int, tuple[int, int]]
) -> list[float]:
    """x in epochs completed: a point at step ``s`` of epoch ``e`` sits at ``e + (s - lo + 1) / (hi - lo + 1)``.

    So the end of epoch ``e`` (where epoch-level values are recorded) is ``e + 1`` and step-level points
    spread evenly inside the epoch.
    """
    out = []
    for step, epoch in zip(steps, epochs):
        e = int(epoch)
        lo, hi = bounds.get(e, (int(step), int(step)))
        out.append(e + (int(step) - lo + 1) / (hi - lo + 1))
    return out


def render_curves(data: Mapping[str, Any]) -> Figure:
    """One axes per panel: the raw values (thin, when smoothed), the EMA-smoothed line and the best point.

    Args:
        data: see the module docstring. Panels with no series are left out.

    Returns:
        The figure (the caller closes it).
    """
    series: Mapping[str, Mapping[str, Any]] = data.get("series", {})
    panels = [p for p in data.get("panels", []) if any(n in series for n in p["series"])]
    by_epoch = data.get("x_axis", "step") == "epoch"
    factor = float(data.get("smoothing", 0.0))
    mark_best = bool(data.get("mark_best", True))
    bounds = epoch_bounds(series) if by_epoch else {}

    n = max(len(panels), 1)
    ncols = grid_columns(n)
    nrows = math.ceil(n / ncols)
    width = 6.0 if ncols <= 2 else 4.8  # inches per panel
    fig = new_figure(width * ncols, 3.4 * nrows, layout=None)
    if not panels:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.text(0.5, 0.5, "no metric recorded yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig

    axes, rooms = [], []
    for panel in panels:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        names = [name for name in panel["series"] if name in series]
        xs_all = [x for name in names for x in series[name]["step"]]
        for j, name in enumerate(names):
            s = series[name]
            values = [float(v) for v in s["value"]]
            steps = [int(v) for v in s["step"]]
            x = epoch_positions(steps, s["epoch"], bounds) if by_epoch else steps
            color = COLORS[j % len(COLORS)]
            smooth = factor > 0 and s.get("smooth", True) and len(values) > 1
            label = f"{name} (EMA {factor:g})" if smooth else name
            i = best_index(values, s.get("mode")) if mark_best else None
            if i is not None:
                label += f"; {best_text(s, i, by_epoch)}"
            elif mark_best and s.get("mode_from") == "unknown":
                label += "; direction unknown"
            if smooth:
                ax.plot(x, values, color=color, linewidth=0.8, alpha=0.35)
                ax.plot(x, ema(values, factor), color=color, linewidth=1.6, label=label)
            else:
                marker = "o" if len(values) <= 40 else None
                ax.plot(x, values, color=color, linewidth=1.4, marker=marker, markersize=3, label=label)
            if i is not None:
                ax.plot([x[i]], [values[i]], marker="*", markersize=11, color=color, markeredgecolor="black")
                right = bool(xs_all) and steps[i] > min(xs_all) + 0.7 * (max(xs_all) - min(xs_all))
                up = s.get("mode") == "min"  # a maximum is the curve's top: its value goes below it
                ax.annotate(
                    f"{values[i]:.4g}",
                    (x[i], values[i]),
                    textcoords="offset points",
                    xytext=(-6 if right else 6, (6 + 9 * (j % 3)) * (1 if up else -1)),
                    ha="right" if right else "left",
                    va="bottom" if up else "top",
                    fontsize=7,
                    color=color,
                )
        ax.set_title(str(panel["title"]), fontsize=10)
        ax.set_xlabel("epoch" if by_epoch else "step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        nice_ticks(ax.xaxis, 6)
        nice_ticks(ax.yaxis, 6)
        rooms.append(fit_axes(ax))
        axes.append(ax)
    place_grid(fig, axes, ncols, rooms)
    return fig


def grid_columns(n: int) -> int:
    """Columns of the panel grid for ``n`` panels: 1, 2 up to 4 panels, 3 up to 9, then 4."""
    return 1 if n <= 1 else 2 if n <= 4 else 3 if n <= 9 else 4


def best_text(series: Mapping[str, Any], i: int, by_epoch: bool) -> str:
    """``"min 0.1234 at step 40"`` (or ``at epoch 3``) for point ``i`` of a series."""
    where = f"epoch {int(series['epoch'][i])}" if by_epoch else f"step {int(series['step'][i])}"
    return f"{series['mode']} {float(series['value'][i]):.4g} at {where}"

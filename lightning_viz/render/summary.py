"""Parameter share by top-level block, trainable vs frozen: plain summary data in, Figure out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_axes, nice_ticks, place_grid

TRAINABLE_COLOR = "#1f77b4"
FROZEN_COLOR = "#b0b0b0"
MAX_BLOCKS = 16


def human_count(n: float) -> str:
    """``1234567`` -> ``"1.23M"``; small numbers stay exact."""
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n):d}"


def _blocks(data: Mapping[str, Any], limit: int) -> list[tuple[str, int, int]]:
    """(name, trainable, frozen) sorted by size; blocks beyond ``limit`` merged into one bar."""
    rows = [(str(b["name"]), int(b["trainable"]), int(b["frozen"])) for b in data.get("blocks", [])]
    rows = [r for r in rows if r[1] + r[2] > 0]
    rows.sort(key=lambda r: r[1] + r[2], reverse=True)
    if len(rows) > limit:
        rest = rows[limit - 1 :]
        merged = (f"({len(rest)} more blocks)", sum(r[1] for r in rest), sum(r[2] for r in rest))
        rows = [*rows[: limit - 1], merged]
    return rows


def render_summary(data: Mapping[str, Any], *, max_blocks: int = MAX_BLOCKS) -> Figure:
    """Horizontal stacked bars: parameters of each top-level block, split into trainable and frozen.

    Args:
        data: ``{"model": str, "totals": {"total_params", "trainable_params", "frozen_params"},
            "blocks": [{"name", "trainable", "frozen"}, ...]}`` as made by ``ModelSummaryCallback``.
        max_blocks: the largest blocks shown one by one; the rest share one bar.

    Returns:
        The figure (the caller closes it).
    """
    blocks = _blocks(data, max_blocks)
    totals = data.get("totals", {})
    total = int(totals.get("total_params", sum(t + f for _, t, f in blocks)))
    trainable = int(totals.get("trainable_params", sum(t for _, t, _ in blocks)))
    frozen = int(totals.get("frozen_params", total - trainable))

    fig = new_figure(7.5, max(2.4, 0.9 + 0.38 * max(len(blocks), 1)), layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    title = f"{data.get('model', 'model')}: {human_count(total)} parameters"
    title += f" (trainable {human_count(trainable)}, frozen {human_count(frozen)})"
    ax.set_title(title, fontsize=10)
    if not blocks:
        ax.text(0.5, 0.5, "the model has no parameters", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        place_grid(fig, [ax], 1, fit_axes(ax))
        return fig

    names = [b[0] for b in blocks]
    y = list(range(len(blocks)))
    train_vals = [b[1] for b in blocks]
    frozen_vals = [b[2] for b in blocks]
    ax.barh(y, train_vals, color=TRAINABLE_COLOR, label="trainable")
    ax.barh(y, frozen_vals, left=train_vals, color=FROZEN_COLOR, hatch="//", label="frozen")
    widest = max(t + f for _, t, f in blocks)
    for yi, (_, t, f) in zip(y, blocks):
        share = (t + f) / total if total else 0.0
        ax.text(t + f + widest * 0.01, yi, f"{human_count(t + f)} ({share:.1%})", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, widest * 1.3)
    ax.set_xlabel("parameters (each shared parameter counted once, in its first block)")
    ax.legend(loc="lower right", fontsize=8)
    nice_ticks(ax.xaxis, 8)
    place_grid(fig, [ax], 1, fit_axes(ax))
    return fig

"""Parameter share by top-level block, trainable vs frozen: plain summary data in, Figure out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_axes, nice_ticks, place_grid, text_size

TRAINABLE_COLOR = "#1f77b4"
FROZEN_COLOR = "#b0b0b0"
FROZEN_TEXT_COLOR = "#b35900"  # names and counts of blocks with frozen parameters
MAX_BLOCKS = 16


def human_count(n: float) -> str:
    """``1234567`` -> ``"1.23M"``; small numbers stay exact."""
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n):d}"


def frozen_label(trainable: int, frozen: int) -> str:
    """What a bar's label adds about its frozen part: ``", all frozen"``, ``", 40 frozen (12%)"`` or ``""``."""
    if not frozen:
        return ""
    if not trainable:
        return ", all frozen"
    return f", {human_count(frozen)} frozen ({frozen / (trainable + frozen):.0%})"


def _share(n: int, total: int) -> str:
    share = n / total if total else 0.0
    return "<0.1%" if 0 < share < 0.001 else f"{share:.1%}"


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

    A block with frozen parameters (``requires_grad=False``) has its name and count in orange and says
    how much of it is frozen, so that a small layer frozen by mistake shows however thin its bar.

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
    labels = [f"{human_count(t + f)} ({_share(t + f, total)}){frozen_label(t, f)}" for _, t, f in blocks]
    # the x range leaves room for each label right of its bar (axes width estimated from the names' width)
    axes_w = max(fig.get_size_inches()[0] - max(text_size(fig, n, 8)[0] for n in names) - 0.7, 1.0)
    room = [
        (t + f + widest * 0.01) / max(0.98 - text_size(fig, s, 8, weight="bold")[0] / axes_w, 0.2)
        for (_, t, f), s in zip(blocks, labels)
    ]
    for yi, (_, t, f), s in zip(y, blocks, labels):
        weight, color = ("bold", FROZEN_TEXT_COLOR) if f else ("normal", "black")
        ax.text(t + f + widest * 0.01, yi, s, va="center", fontsize=8, fontweight=weight, color=color)
    ax.set_yticks(y, names, fontsize=8)
    for tick, (_, _t, f) in zip(ax.get_yticklabels(), blocks):
        if f:  # a block that does not (fully) train stands out, however thin its bar
            tick.set_color(FROZEN_TEXT_COLOR)
    ax.invert_yaxis()
    ax.set_xlim(0, max(widest * 1.3, *room))
    ax.set_xlabel("parameters (each shared parameter counted once, in its first block)")
    ax.legend(loc="lower right", fontsize=8)
    nice_ticks(ax.xaxis, 8)
    place_grid(fig, [ax], 1, fit_axes(ax))
    return fig

"""The training-health figure: gradient norms across depth, update ratios, activation fractions, and the
loss with every finding marked. Flagged layers are drawn in red.

Pure function: plain data in, a matplotlib ``Figure`` out; the caller closes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import offset_copy

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import (
    Room,
    fit_axes,
    flatten_ticks,
    nice_ticks,
    place_grid,
    plain_log_axis,
    text_size,
)

OK_COLOUR, BAD_COLOUR = "#4c72b0", "#d62728"


def _empty(ax: Axes, title: str, note: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=8, color="grey", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _note(ax: Axes, text: str) -> None:
    # on a white ground: it sits over the threshold lines and bars
    box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5}
    ax.text(
        0.01, 0.98, text, transform=ax.transAxes, fontsize=7, va="top", color="dimgrey", bbox=box, zorder=5
    )


def _bars(
    ax: Axes,
    values: Mapping[str, float],
    bad: set[str],
    title: str,
    *,
    log: bool,
    lines: Sequence[tuple[float, str]] = (),
) -> Room:
    """Bars with their threshold lines; returns the room the thresholds' names take right of the axes."""
    names = list(values)
    if not names:
        _empty(ax, title, "no data yet")
        return Room()
    y = np.array([values[n] for n in names], dtype=np.float64)
    shown = np.where(np.isfinite(y), y, np.nan)
    if log:  # a zero has no place on a log axis: no bar, the value written instead (never a fake height)
        shown = np.where(shown > 0, shown, np.nan)
    colours = [BAD_COLOUR if n in bad else OK_COLOUR for n in names]
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(shown, nan=0.0), color=colours)
    if log and not np.isfinite(shown).any():
        ax.set_ylim(1e-12, 1.0)
    for xi, v, colour in zip(x, y, colours):
        if log and v == 0:
            ax.text(
                xi, 0.02, "0", ha="center", va="bottom", fontsize=8, color=colour,
                transform=ax.get_xaxis_transform(),
            )  # fmt: skip
        if not math.isfinite(v):
            ax.text(
                xi,
                0.5,
                "NaN/Inf",
                rotation=90,
                ha="center",
                va="center",
                fontsize=7,
                color=BAD_COLOUR,
                transform=ax.get_xaxis_transform(),
            )
    if log:
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    else:
        nice_ticks(ax.yaxis, 6)
    right = 0.0
    for value, label in lines:
        ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
        ax.text(1.0, value, f" {label}", transform=ax.get_yaxis_transform(), fontsize=7, va="center")
        right = max(right, text_size(ax.get_figure(root=True), f" {label}", 7)[0])
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    return Room(right=right)


def render_health(data: Mapping[str, Any]) -> Figure:
    """Four panels: gradient norm per parameter across depth, update-to-weight ratio per weight, dead or
    saturated fraction per activation layer (each with its threshold, flagged layers in red), and the
    monitored loss over steps with a numbered marker per finding (listed under the axes).

    Args:
        data: ``grad_norms`` {param: norm}, ``grad_step``, ``vanishing_below`` (the norm under which a
            weight's gradient vanishes, or ``None``), ``update_ratios`` {param: ratio},
            ``activations`` {layer: [stat name, value]}, ``loss_steps``, ``loss_values``, ``findings``
            (dicts with ``check``, ``pathology``, ``layer``, ``step``), ``flagged`` {check: [layers]},
            ``thresholds`` (the callback's thresholds by argument name); optional ``frozen``
            (``tensors``, ``names``: parameters that do not train) and ``not_run`` (layers that did not run),
            noted in grey on the gradient and activation panels.
    """
    flagged = {k: set(v) for k, v in data.get("flagged", {}).items()}
    th = data.get("thresholds", {})
    findings: list[Mapping[str, Any]] = list(data.get("findings", []))
    fig = new_figure(11.0, 8.0 + 0.16 * min(len(findings), 12), layout=None)
    axes = np.array([fig.add_axes((0.0, 0.0, 1.0, 1.0)) for _ in range(4)]).reshape(2, 2)
    grad_bad = flagged.get("vanishing_gradients", set()) | flagged.get("exploding_gradients", set())
    grad_bad |= flagged.get("nonfinite", set())
    step = data.get("grad_step")
    lines = [(th["exploding_norm"], "exploding")] if "exploding_norm" in th else []
    if data.get("vanishing_below"):
        lines.append((data["vanishing_below"], "vanishing"))
    title = "gradient norm across depth" + (f" (step {step})" if step is not None else "")
    notes = [_bars(axes[0, 0], data.get("grad_norms", {}), grad_bad, title, log=True, lines=lines)]
    upd_bad = flagged.get("tiny_updates", set()) | flagged.get("large_updates", set())
    lines = [(th[k], k.split("_")[0]) for k in ("tiny_update_ratio", "large_update_ratio") if k in th]
    title = "update / weight norm per optimizer step"
    notes.append(_bars(axes[0, 1], data.get("update_ratios", {}), upd_bad, title, log=True, lines=lines))
    acts = data.get("activations", {})
    act_bad = flagged.get("dead_units", set()) | flagged.get("saturation", set())
    labels = {f"{n} ({'dead' if k == 'dead_fraction' else 'sat.'})": v for n, (k, v) in acts.items()}
    bad_labels = {lab for lab, n in zip(labels, acts) if n in act_bad}
    lines = [(th[k], k.split("_")[0]) for k in ("dead_threshold", "saturation_threshold") if k in th]
    title = "activations: dead (zero) / saturated fraction"
    notes.append(_bars(axes[1, 0], labels, bad_labels, title, log=False, lines=lines))
    if labels:
        axes[1, 0].set_ylim(0, 1.05)
    frozen = data.get("frozen") or {}
    if frozen.get("tensors"):
        names = ", ".join(frozen.get("names", [])[:4]) + (", ..." if frozen["tensors"] > 4 else "")
        _note(axes[0, 0], f"{frozen['tensors']} parameter tensors do not train: {names}")
    not_run = list(data.get("not_run") or [])
    if not_run:
        _note(axes[1, 0], f"not run: {', '.join(not_run[:4])}" + (", ..." if len(not_run) > 4 else ""))
    listing = _timeline(axes[1, 1], data.get("loss_steps", []), data.get("loss_values", []), findings)
    notes.append(Room())
    rooms = [
        fit_axes(ax, title_pad=12 if ax is axes[1, 1] else None) | n for ax, n in zip(axes.ravel(), notes)
    ]
    if listing is not None:  # the numbered findings: under the loss axes' labels
        down = rooms[3].bottom + 0.1
        listing.set_transform(offset_copy(axes[1, 1].transAxes, fig, 0.0, -down))
        height = text_size(fig, listing.get_text(), listing.get_fontsize())[1]
        rooms[3] = rooms[3] | Room(bottom=down + height)
    place_grid(fig, list(axes.ravel()), 2, rooms)
    for ax in axes.ravel():
        flatten_ticks(ax)
    return fig


def _timeline(
    ax: Axes, steps: Sequence[int], values: Sequence[float], findings: Sequence[Mapping[str, Any]]
) -> Text | None:
    """The loss with a numbered line per finding; returns the text that lists the findings (to be placed
    under the axes), if any."""
    title = "loss and findings"
    if not steps and not findings:
        _empty(ax, title, "no data yet")
        return None
    s, v = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    nice_ticks(ax.xaxis, 6)
    nice_ticks(ax.yaxis, 6)
    if ok.any():
        at, first = np.unique(s[ok], return_inverse=True)
        if len(at) < ok.sum():  # several batches a step (gradient accumulation): each, and the step's mean
            mean = np.bincount(first, weights=v[ok]) / np.bincount(first)
            ax.plot(s[ok], v[ok], ".", color=OK_COLOUR, markersize=2.5, alpha=0.5, label="loss of a batch")
            ax.plot(at, mean, color=OK_COLOUR, linewidth=1.0, label="mean over the step's batches")
            ax.legend(fontsize=7, loc="upper right")
        else:
            ax.plot(s[ok], v[ok], color=OK_COLOUR, linewidth=1.0, label="loss")
        lo, hi = float(v[ok].min()), float(v[ok].max())
        if lo > 0 and hi > 100 * lo:  # log scale only when the loss spans orders of magnitude
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
    numbers: dict[int, list[int]] = {}
    for i, f in enumerate(findings, start=1):
        numbers.setdefault(int(f["step"]), []).append(i)
    for at, nums in numbers.items():  # one line per step, labelled with its findings' numbers
        ax.axvline(at, color=BAD_COLOUR, linewidth=0.8, alpha=0.7)
        label = str(nums[0]) if len(nums) == 1 else f"{nums[0]}-{nums[-1]}"
        ax.text(at, 1.0, label, transform=ax.get_xaxis_transform(), color=BAD_COLOUR, fontsize=7, ha="center")
    ax.set_xlabel("step", fontsize=8)
    ax.set_title(title, fontsize=9, pad=12)
    if findings:
        text = "\n".join(
            f"{i}. step {f['step']}: {f['pathology']}: {f['layer']}"
            for i, f in enumerate(findings[:12], start=1)
        )
        if len(findings) > 12:
            text += f"\n... and {len(findings) - 12} more"
        return ax.text(0.0, 0.0, text, transform=ax.transAxes, fontsize=7, va="top", color=BAD_COLOUR)
    ax.text(0.02, 0.02, "no findings", transform=ax.transAxes, fontsize=8, color="green")
    return None

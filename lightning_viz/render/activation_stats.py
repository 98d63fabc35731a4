"""The figure of activation statistics over training: mean, std, dead and saturated fraction per layer.

A pure function: plain data (numpy arrays, lists, numbers) in, a matplotlib ``Figure`` out. It never touches
pyplot state; the caller closes the figure (:func:`lightning_viz.render.close_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_axes, nice_ticks, place_grid, suptitle

STAT_PANELS: tuple[tuple[str, str], ...] = (
    ("mean", "mean"),
    ("std", "standard deviation"),
    ("dead_fraction", "dead fraction (exact zeros)"),
    ("saturated_fraction", "saturated fraction"),
)
NOTE_LINES, NOTE_LINE_H = 16, 0.14  # the statistics figure's note under the panels: lines, inches each


def render_activation_stats(data: Mapping[str, Any]) -> Figure:
    """Per-layer activation statistics over training: mean, std, dead fraction, saturated fraction.

    Args:
        data: ``layers``: layer name -> dict with ``step``, one sequence per statistic (``mean``, ``std``,
            ``dead_fraction``, ``saturated_fraction``; NaN where a statistic does not apply) and optional
            ``nonfinite`` and ``ran`` (``False`` at a capture where the layer did not run: no point there);
            optional ``of``: layer name -> which tensor its statistics are of; optional
            ``saturation_threshold``.

    Returns:
        A figure with four axes (one per statistic), one line per layer in each, and a note under them
        naming, per layer, the tensor its statistics are of, or "not run" for a layer that never ran.
    """
    layers: Mapping[str, Mapping[str, Sequence[float]]] = data["layers"]
    of: Mapping[str, str] = data.get("of") or {}
    notes = []
    for name, hist in layers.items():
        ran = list(hist.get("ran", [True] * len(hist["step"])))
        if ran and not any(ran):
            notes.append(f"{name}: not run (in any capture)")
        elif of.get(name):
            missed = sum(1 for r in ran if not r)
            notes.append(f"{name}: {of[name]}" + (f"; not run at {missed} capture(s)" if missed else ""))
    if len(notes) > NOTE_LINES:
        notes = [*notes[: NOTE_LINES - 1], f"... and {len(notes) - NOTE_LINES + 1} more layers"]
    note_h = (NOTE_LINE_H * (len(notes) + 1) + 0.1) if notes else 0.0
    fig = new_figure(10.0, 7.0 + note_h, layout=None)
    top = suptitle(fig, "Activation statistics over training (fixed sample batch, eval mode)")
    axes = [fig.add_axes((0.0, 0.0, 1.0, 1.0)) for _ in STAT_PANELS]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    for ax, (key, label) in zip(axes, STAT_PANELS):
        drawn = 0
        for name, hist in layers.items():
            steps = np.asarray(hist["step"], dtype=np.float64)
            values = np.asarray(hist[key], dtype=np.float64)
            if values.size == 0 or not np.isfinite(values).any():
                continue
            ax.plot(steps, values, marker="o", markersize=3, label=name)
            drawn += 1
        if key == "saturated_fraction" and "saturation_threshold" in data:
            label += f" (|a| >= {data['saturation_threshold']:g} x bound)"
        if not drawn:
            never = bool(layers) and all(h.get("ran") and not any(h["ran"]) for h in layers.values())
            why = (
                "not run"
                if never
                else "no bounded (tanh/sigmoid-like) activation output"
                if key == "saturated_fraction"
                else "no data yet"
            )
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    bad_steps = sorted(
        {
            float(s)
            for hist in layers.values()
            for s, n in zip(hist["step"], hist.get("nonfinite", []))
            if n and float(n) > 0
        }
    )
    if bad_steps:  # steps with NaN/Inf activations: shaded red, the statistics cover the finite values
        firsts = [
            (next(float(s) for s, n in zip(h["step"], h.get("nonfinite", [])) if n and float(n) > 0), name)
            for name, h in layers.items()
            if any(n and float(n) > 0 for n in h.get("nonfinite", []))
        ]
        first_step, first_layer = min(firsts)
        for ax in axes:
            for s in bad_steps:
                ax.axvspan(s - 0.5, s + 0.5, color="red", alpha=0.2, lw=0)
        axes[0].text(
            0.02,
            0.97,
            f"NaN/Inf activations at {len(bad_steps)} step(s), first in {first_layer} at step {first_step:g}"
            " (statistics of the finite values)",
            transform=axes[0].transAxes,
            va="top",
            fontsize=7,
            color="red",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "red", "pad": 1.5},
        )
    for ax in axes[2:]:
        ax.set_xlabel("global step")
    if layers:
        axes[0].legend(fontsize=8, loc="best")
    nice_ticks(axes[0].xaxis, 7)  # the four share it
    rooms = []
    for k, ax in enumerate(axes):
        nice_ticks(ax.yaxis, 6)
        ax.tick_params(labelbottom=k >= 2)  # one row of step labels, under the lower panels
        rooms.append(fit_axes(ax, xticklabels=k >= 2))
    place_grid(fig, axes, 2, rooms, top=top, bottom=note_h)
    if notes:
        fig.text(
            0.01,
            (note_h - 0.05) / fig.get_size_inches()[1],
            "Statistics of what each layer passes on:\n" + "\n".join(notes),
            fontsize=7.5,
            va="top",
            ha="left",
            family="monospace",
        )
    return fig

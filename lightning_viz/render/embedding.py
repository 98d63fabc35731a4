"""The embedding figure: a fixed sample's features on their first two principal components.

The data (as ``EmbeddingCallback`` makes it and saves as ``embedding_stepNNNNNN.json``)::

    {"step": 40, "epoch": 1, "layer": "fc2", "source": "input", "pooled": true, "dims": 64, "n": 256,
     "coords": [[x, y], ...], "explained": [0.41, 0.18], "left_out": 0,
     "labels": [3, 1, ...] or [0.25, ...] or null, "label_kind": "class" | "value" | null,
     "predicted": [3, 7, ...] or null, "class_names": ["zero", ...] or null}

Classes (up to 20) get one colour each and a legend; more classes, or real-valued targets, one continuous
colour scale. Examples the model predicts wrong are drawn as crosses, right ones as dots.

Pure function: plain data in, a matplotlib ``Figure`` out; the caller closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lightning_viz.render._figure import new_figure

MAX_LEGEND_CLASSES = 20


def _class_name(i: int, names: Sequence[str] | None) -> str:
    return str(names[i]) if names and 0 <= i < len(names) else str(i)


def render_embedding(data: Mapping[str, Any]) -> Figure:
    """The 2-D PCA scatter of the sample's features, coloured by label.

    Args:
        data: see the module docstring.

    Returns:
        The figure (the caller closes it).
    """
    xy = np.asarray(data.get("coords") or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
    labels = data.get("labels")
    kind = data.get("label_kind")
    predicted = data.get("predicted")
    names = data.get("class_names")
    fig = new_figure(7.4, 5.6)
    ax = fig.add_subplot()
    where = "input of" if data.get("source") == "input" else "output of"
    pooled = ", mean over positions" if data.get("pooled") else ""
    ax.set_title(
        f"{where} {data.get('layer', '?')}: {data.get('dims', '?')} features{pooled} of {len(xy)} examples\n"
        f"step {data.get('step', '?')} (epoch {data.get('epoch', '?')}), first two principal components",
        fontsize=10,
    )
    explained = list(data.get("explained") or [0.0, 0.0])
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}% of the variance)")
    notes = []
    if data.get("left_out"):
        notes.append(f"{data['left_out']} examples with NaN/Inf features left out")
    if not len(xy):
        ax.text(0.5, 0.5, "no examples to show", ha="center", va="center", transform=ax.transAxes)
    elif labels is None or len(labels) != len(xy):
        ax.scatter(xy[:, 0], xy[:, 1], s=14, color="#4c72b0", alpha=0.8, linewidths=0)
        notes.append("no targets in the batches: one colour")
    else:
        lab = np.asarray(labels, dtype=np.float64)
        wrong = np.zeros(len(xy), dtype=bool)
        if predicted is not None and len(predicted) == len(xy) and kind == "class":
            wrong = np.asarray(predicted, dtype=np.float64) != lab
        classes = np.unique(lab[np.isfinite(lab)]).astype(int) if kind == "class" else np.array([])
        if kind == "class" and len(classes) <= MAX_LEGEND_CLASSES:
            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            handles = []
            for j, c in enumerate(classes):
                colour = cmap(j % cmap.N)
                right_c, wrong_c = (lab == c) & ~wrong, (lab == c) & wrong
                ax.scatter(xy[right_c, 0], xy[right_c, 1], s=16, color=colour, alpha=0.85, linewidths=0)
                ax.scatter(xy[wrong_c, 0], xy[wrong_c, 1], s=30, color=colour, marker="x", linewidths=1.2)
                handles.append(
                    Line2D([], [], marker="o", linestyle="", color=colour, label=_class_name(int(c), names))
                )
            if wrong.any():
                handles.append(Line2D([], [], marker="x", linestyle="", color="0.3", label="predicted wrong"))
            ax.legend(
                handles=handles, title="label", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5)
            )
        else:
            art = ax.scatter(xy[~wrong, 0], xy[~wrong, 1], c=lab[~wrong], s=16, cmap="viridis", linewidths=0)
            if wrong.any():
                ax.scatter(xy[wrong, 0], xy[wrong, 1], c=lab[wrong], s=30, cmap="viridis", marker="x")
            fig.colorbar(art, ax=ax, label="label" if kind == "class" else "target")
        if wrong.any():
            notes.append(f"{int(wrong.sum())} of {len(xy)} predicted wrong (crosses)")
    if notes:
        ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=8, color="0.35", va="bottom")
    ax.grid(True, alpha=0.25)
    return fig

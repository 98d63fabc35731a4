"""The fixed layout of the renderers: no layout engine, and no text of a figure runs into another text, into
an axes, or off the figure."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from lightning_viz.render import close_figure
from lightning_viz.render._figure import png_bytes, to_rgba
from lightning_viz.render._layout import PlainLogFormatter
from lightning_viz.render.activation_stats import render_activation_stats
from lightning_viz.render.activations import render_feature_maps, render_heatmaps
from lightning_viz.render.curves import render_curves
from lightning_viz.render.health import render_health
from lightning_viz.render.histograms import render_evolution
from lightning_viz.render.summary import render_summary

RNG = np.random.default_rng(0)


def _param(name: str, scale: float, shift: float = 0.0, steps: int = 12, nonfinite: int = 0) -> dict:
    edges, counts = [], []
    for t in range(steps):
        values = shift + RNG.normal(0.0, scale * (1 + 0.1 * t), 500)
        e = np.linspace(values.min(), values.max(), 33)
        edges.append(e)
        counts.append(np.histogram(values, bins=e)[0])
    bad = np.zeros(steps, dtype=np.int64)
    bad[steps // 2 :] = nonfinite
    return {
        "name": name,
        "numel": 500,
        "steps": np.arange(steps) * 25,
        "edges": np.array(edges),
        "counts": np.array(counts),
        "nonfinite": bad,
    }


def _evolution() -> dict:
    params = [_param(f"layers.{i}.weight", 0.1 * (i + 1)) for i in range(7)]
    params.append(_param("tiny.weight", 1e-6))  # the y axis gets a "1e-6" multiplier above it
    params.append(_param("norm.weight", 1e-4, shift=1.0))  # ... or a "+1" offset
    params.append(_param("head.bias", 0.2, nonfinite=3))
    return {"title": "weights over training", "params": params}


def _curves() -> dict:
    n = 300
    steps = list(range(n))
    epochs = [s // 50 for s in steps]
    loss = (2 * np.exp(-np.arange(n) / 80) + 0.05 * RNG.random(n)).tolist()
    return {
        "x_axis": "step",
        "smoothing": 0.6,
        "panels": [
            {"title": "loss", "series": ["train_loss", "val_loss"]},
            {"title": "learning rate", "series": ["lr"]},
            {"title": "accuracy", "series": ["val_acc"]},
        ],
        "series": {
            "train_loss": {"step": steps, "epoch": epochs, "value": loss, "mode": "min"},
            "val_loss": {"step": [49, 99, 149], "epoch": [0, 1, 2], "value": [1.0, 0.5, 0.4], "mode": "min"},
            "lr": {"step": steps, "epoch": epochs, "value": [1e-3 * 0.99**s for s in steps], "smooth": False},
            "val_acc": {"step": [49, 99, 149], "epoch": [0, 1, 2], "value": [0.5, 0.7, 0.8], "mode": "max"},
        },
    }


def _summary() -> dict:
    blocks = [("encoder", 1_200_000, 0), ("embedding", 0, 3_000_000), ("head", 5_000, 0)]
    return {
        "model": "Net",
        "totals": {"total_params": 4_205_000, "trainable_params": 1_205_000, "frozen_params": 3_000_000},
        "blocks": [{"name": n, "trainable": t, "frozen": f} for n, t, f in blocks],
    }


def _feature_maps() -> dict:
    layers = []
    for name, size, total in (("features.0", 32, 16), ("features.3", 16, 32), ("features.6", 8, 64)):
        layers.append(
            {
                "name": name,
                "kind": "Conv2d",
                "maps": RNG.normal(size=(16, size, size)).astype(np.float32),
                "channels": np.arange(16),
                "total_channels": total,
                "order": "first",
                "note": "middle depth slice of 4" if size == 8 else "",
                "nonfinite": 3 if size == 16 else 0,
            }
        )
    return {"step": 40, "sample_index": 0, "input": RNG.random((3, 32, 32)), "layers": layers}


def _heatmaps() -> dict:
    layers = [
        {"name": "fc1", "kind": "Linear", "values": RNG.normal(size=(64, 128)), "rows": "examples",
         "cols": "features", "note": "first 128 of 300 columns"},
        {"name": "rnn", "kind": "GRU", "values": 1e4 * RNG.normal(size=(40, 10)), "rows": "time steps",
         "cols": "features", "nonfinite": 2},
    ]  # fmt: skip
    return {"step": 40, "layers": layers}


def _activation_stats() -> dict:
    steps = list(range(0, 500, 25))
    layers = {
        name: {
            "step": steps,
            "mean": RNG.random(len(steps)).tolist(),
            "std": (1 + RNG.random(len(steps))).tolist(),
            "dead_fraction": (0.1 * RNG.random(len(steps))).tolist(),
            "saturated_fraction": [math.nan] * len(steps),
            "nonfinite": [0] * 10 + [4] + [0] * (len(steps) - 11),
        }
        for name in ("conv1", "relu1", "conv2", "fc")
    }
    return {"saturation_threshold": 0.99, "layers": layers}


def _health() -> dict:
    names = [f"backbone.stage{i}.block{j}.conv.weight" for i in range(3) for j in range(3)]
    findings = [
        {"check": "dead_units", "pathology": "dead units", "layer": "act1", "step": s} for s in (10, 20, 30)
    ]
    return {
        "grad_norms": {n: 10.0**-k for k, n in enumerate(names)},
        "grad_step": 40,
        "vanishing_below": 1e-7,
        "update_ratios": {n: 10.0 ** (-2 - k / 3) for k, n in enumerate(names[:4])},
        "activations": {"act1": ["dead_fraction", 0.95], "tanh1": ["saturated_fraction", 0.2]},
        "loss_steps": list(range(50)),
        "loss_values": np.logspace(1, -3, 50).tolist(),
        "findings": findings,
        "flagged": {"dead_units": ["act1"]},
        "thresholds": {"dead_threshold": 0.9, "exploding_norm": 100.0, "tiny_update_ratio": 1e-6},
    }


CASES = {
    "evolution": (render_evolution, _evolution),
    "curves": (render_curves, _curves),
    "summary": (render_summary, _summary),
    "feature_maps": (render_feature_maps, _feature_maps),
    "heatmaps": (render_heatmaps, _heatmaps),
    "activation_stats": (render_activation_stats, _activation_stats),
    "health": (render_health, _health),
}


@pytest.fixture(params=sorted(CASES))
def drawn(request):
    render, data = CASES[request.param]
    fig = render(data())
    to_rgba(fig)
    yield fig
    close_figure(fig)


def _inside(box: Bbox, ax: Axes) -> bool:
    x, y = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return ax.bbox.contains(x, y)


def _drawn_ticklabels(ax: Axes) -> list[Text]:
    """The tick labels drawn: visible, not empty, at a tick inside the view."""
    out = []
    for axis, lo, hi in ((ax.xaxis, ax.bbox.x0, ax.bbox.x1), (ax.yaxis, ax.bbox.y0, ax.bbox.y1)):
        if not axis.get_visible():
            continue
        for label in axis.get_ticklabels(which="both"):
            if label.get_visible() and label.get_text():
                at = label.get_transform().transform(label.get_position())[0 if axis is ax.xaxis else 1]
                if lo - 1 <= at <= hi + 1:
                    out.append(label)
    return out


def decorations(fig: Figure) -> list[tuple[Axes | None, Text, Bbox]]:
    """Every text drawn outside the axes boxes, with the axes it belongs to and its box in pixels."""
    renderer = fig.canvas.get_renderer()
    texts: list[tuple[Axes | None, Text]] = [(None, t) for t in fig.texts]
    texts += [(None, t) for t in fig.findobj(Text) if t.axes is None and t.get_text() == fig.get_suptitle()]
    for ax in fig.axes:
        if not ax.axison:
            texts.append((ax, ax.title))
            continue
        own = [ax.title, ax.xaxis.label, ax.yaxis.label]
        own += [ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text(), *_drawn_ticklabels(ax)]
        texts += [(ax, t) for t in own]
        texts += [(ax, t) for t in ax.texts if not _inside(t.get_window_extent(renderer), ax)]
    out, seen = [], set()
    for ax, t in texts:
        if t.get_visible() and t.get_text() and id(t) not in seen:
            seen.add(id(t))
            out.append((ax, t, t.get_window_extent(renderer)))
    return out


def _overlap(a: Bbox, b: Bbox, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def test_renderers_draw_without_a_layout_engine(drawn):
    assert drawn.get_layout_engine() is None


def test_no_text_overlaps_another_text_an_axes_or_the_figure_edge(drawn):
    texts = decorations(drawn)
    assert len(texts) >= 5
    width, height = drawn.canvas.get_width_height()
    for _, t, box in texts:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, t.get_text()
    for (ax1, t1, b1), (ax2, t2, b2) in itertools.combinations(texts, 2):
        slanted = t1.get_rotation() not in (0, 90) and t2.get_rotation() not in (0, 90)
        if not (slanted and ax1 is ax2):  # the boxes of neighbouring slanted labels overlap, their glyphs not
            assert not _overlap(b1, b2), f"{t1.get_text()!r} overlaps {t2.get_text()!r}"
    for owner, t, box in texts:
        for ax in drawn.axes:
            if ax is not owner or t in (ax.title, ax.xaxis.label, ax.yaxis.label):
                assert not _overlap(box, ax.bbox, tol=1.5), f"{t.get_text()!r} runs into an axes"


def test_evolution_keeps_the_title_above_the_y_offset_text():
    fig = render_evolution({"title": "t", "params": [_param("tiny.weight", 1e-6)]})
    try:
        to_rgba(fig)
        ax = fig.axes[0]
        renderer = fig.canvas.get_renderer()
        offset = ax.yaxis.get_offset_text()
        assert offset.get_text()  # the case this test is about
        assert offset.get_window_extent(renderer).y1 <= ax.title.get_window_extent(renderer).y0
    finally:
        close_figure(fig)


def test_plain_log_labels_read_like_matplotlibs():
    fmt = PlainLogFormatter(labelOnlyBase=False)
    assert fmt(1e-4) == "10\N{SUPERSCRIPT MINUS}\N{SUPERSCRIPT FOUR}"
    assert fmt(100.0) == "10\N{SUPERSCRIPT TWO}"
    assert fmt(1.0) == "10\N{SUPERSCRIPT ZERO}"
    assert fmt(0.2) == "2\N{MULTIPLICATION SIGN}10\N{SUPERSCRIPT MINUS}\N{SUPERSCRIPT ONE}"


def test_png_bytes_keeps_every_pixel():
    rgba = np.full((4, 5, 4), 255, dtype=np.uint8)
    rgba[..., :3] = RNG.integers(0, 256, (4, 5, 3))
    with Image.open(io.BytesIO(png_bytes(rgba))) as img:
        assert img.mode == "RGB"  # opaque: no alpha channel stored
        np.testing.assert_array_equal(np.asarray(img.convert("RGBA")), rgba)
    rgba[0, 0, 3] = 10
    with Image.open(io.BytesIO(png_bytes(rgba))) as img:
        assert img.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(img), rgba)


LONG_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def _tile_labels(fig: Figure, which: str) -> list[tuple[Text, Bbox]]:
    renderer = fig.canvas.get_renderer()
    if which == "texts":
        texts = [t for ax in fig.axes for t in ax.texts]
    else:
        texts = [ax.title for ax in fig.axes if ax.title.get_text()]
    return [(t, t.get_window_extent(renderer)) for t in texts]


@pytest.mark.parametrize("kind", ["predictions", "saliency"])
def test_tile_labels_with_long_class_names_do_not_run_into_each_other(kind):
    """'bottom-right -> top-left 43%' under (or over) a small tile ran into the next tile's label; a label
    that does not fit goes on two lines (true ->, then predicted), each one inside its tile's room."""
    from lightning_viz.render.predictions import render_predictions
    from lightning_viz.render.saliency import render_saliency

    rng = np.random.default_rng(0)
    n = 16 if kind == "predictions" else 8
    true, pred = [int(v) for v in rng.integers(0, 4, n)], [int(v) for v in rng.integers(0, 4, n)]
    images = rng.random((n, 3, 16, 16))
    if kind == "predictions":
        part = {"true": true, "pred": pred, "conf": [0.43] * n, "loss": [1.0] * n, "images": list(images)}
        data = {"step": 24, "epoch": 2, "task": "classification", "class_names": LONG_NAMES, "sample": part}
        data["worst"] = {k: v[:8] for k, v in part.items()}
        fig, which = render_predictions(data), "texts"
    else:
        data = {
            "maps": rng.random((n, 16, 16)),
            "images": images,
            "pred": pred,
            "true": true,
            "conf": [0.43] * n,
        }
        data |= {
            "class_names": LONG_NAMES,
            "method": "gradcam",
            "layer": "backbone.3",
            "explain": "predicted",
        }
        data |= {"step": 24, "epoch": 2}
        fig, which = render_saliency(data), "titles"
    try:
        to_rgba(fig)
        labels = _tile_labels(fig, which)
        assert len(labels) >= n, len(labels)
        assert any("\n" in t.get_text() for t, _ in labels)  # some did not fit on one line
        for (t1, b1), (t2, b2) in itertools.combinations(labels, 2):
            assert not _overlap(b1, b2), f"{t1.get_text()!r} overlaps {t2.get_text()!r}"
        for t, _ in labels:  # each still names both classes in full
            assert "\N{HORIZONTAL ELLIPSIS}" not in t.get_text(), t.get_text()
    finally:
        close_figure(fig)

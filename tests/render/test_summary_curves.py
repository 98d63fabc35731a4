"""Pure renderers of the summary and the curves: axes, bars, lines, markers; every figure closed."""

from __future__ import annotations

import math

import pytest
from matplotlib.patches import Rectangle

from lightning_viz.render import close_figure, open_figure_count
from lightning_viz.render.curves import best_index, ema, epoch_bounds, epoch_positions, render_curves
from lightning_viz.render.summary import FROZEN_TEXT_COLOR, human_count, render_summary


def _summary_data(blocks):
    total = sum(t + f for _, t, f in blocks)
    trainable = sum(t for _, t, _ in blocks)
    return {
        "model": "Net",
        "totals": {"total_params": total, "trainable_params": trainable, "frozen_params": total - trainable},
        "blocks": [{"name": n, "trainable": t, "frozen": f} for n, t, f in blocks],
    }


def _bar_widths(ax):
    return [p.get_width() for p in ax.patches if isinstance(p, Rectangle)]


def test_summary_bars_sorted_and_split_trainable_frozen():
    fig = render_summary(
        _summary_data([("small", 10, 0), ("big", 600, 0), ("frozen", 0, 40), ("mixed", 5, 7)])
    )
    try:
        (ax,) = fig.axes
        assert [t.get_text() for t in ax.get_yticklabels()] == ["big", "frozen", "mixed", "small"]
        widths = _bar_widths(ax)
        assert widths[:4] == [600, 0, 5, 10]  # trainable part, one bar per block
        assert widths[4:8] == [0, 40, 7, 0]  # frozen part, stacked after it
        assert "662 parameters (trainable 615, frozen 47)" in ax.get_title()
        assert any(t.get_text() == f"600 ({600 / 662:.1%})" for t in ax.texts)
    finally:
        close_figure(fig)


def test_summary_marks_blocks_with_frozen_parameters_however_small():
    fig = render_summary(_summary_data([("backbone", 600_000, 600_000), ("norm", 0, 48), ("head", 3000, 0)]))
    try:
        (ax,) = fig.axes
        texts = {t.get_text().split(" ")[0]: t for t in ax.texts}
        assert texts["48"].get_text() == "48 (<0.1%), all frozen"
        assert texts["1.2M"].get_text() == "1.2M (99.7%), 600K frozen (50%)"
        assert texts["3K"].get_text() == "3K (0.2%)"
        marked = {t.get_text() for t in ax.get_yticklabels() if t.get_color() == FROZEN_TEXT_COLOR}
        assert marked == {"backbone", "norm"}
        assert texts["48"].get_color() == FROZEN_TEXT_COLOR and texts["3K"].get_color() != FROZEN_TEXT_COLOR
        # every label ends inside the axes, the longest bar's included
        fig.canvas.draw()
        right = ax.get_window_extent().x1
        assert all(t.get_window_extent().x1 <= right for t in ax.texts)
    finally:
        close_figure(fig)


def test_summary_merges_blocks_beyond_the_limit_and_handles_no_parameters():
    blocks = [(f"b{i}", 100 - i, 0) for i in range(10)]
    fig = render_summary(_summary_data(blocks), max_blocks=4)
    try:
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert labels == ["b0", "b1", "b2", "(7 more blocks)"]
        assert _bar_widths(fig.axes[0])[3] == sum(100 - i for i in range(3, 10))
    finally:
        close_figure(fig)
    fig = render_summary(_summary_data([]))
    try:
        assert "no parameters" in fig.axes[0].texts[0].get_text()
    finally:
        close_figure(fig)
    assert open_figure_count() == 0


def test_human_count():
    assert [human_count(n) for n in (7, 1234, 2_500_000, 3e9)] == ["7", "1.23K", "2.5M", "3B"]


def test_ema_matches_hand_computation_and_skips_non_finite():
    assert ema([1.0, 3.0, 2.0], 0.5) == [1.0, 2.0, 2.0]
    assert ema([4.0, 2.0], 0.0) == [4.0, 2.0]
    out = ema([math.nan, 1.0, math.inf, 5.0], 0.25)
    assert math.isnan(out[0]) and out[1:] == [1.0, 1.0, 0.25 * 1.0 + 0.75 * 5.0]


def test_best_index():
    assert best_index([3.0, 1.0, 2.0, 1.0], "min") == 1
    assert best_index([3.0, math.nan, 5.0], "max") == 2
    assert best_index([1.0], None) is None
    assert best_index([math.nan], "min") is None


def test_epoch_positions():
    series = {
        "a": {"step": [0, 1, 2, 3, 4, 5], "epoch": [0, 0, 0, 1, 1, 1]},
        "b": {"step": [2, 5], "epoch": [0, 1]},
    }
    bounds = epoch_bounds(series)
    assert bounds == {0: (0, 2), 1: (3, 5)}
    assert epoch_positions([0, 1, 2, 3], [0, 0, 0, 1], bounds) == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3])
    assert epoch_positions([2, 5], [0, 1], bounds) == [1.0, 2.0]


def _curve_data(**overrides):
    data = {
        "x_axis": "step",
        "smoothing": 0.5,
        "mark_best": True,
        "panels": [
            {"title": "loss", "series": ["train_loss", "val_loss"]},
            {"title": "accuracy", "series": ["val_acc"]},
            {"title": "empty", "series": ["not_recorded"]},
        ],
        "series": {
            "train_loss": {
                "step": [0, 1, 2, 3],
                "epoch": [0, 0, 1, 1],
                "value": [4.0, 2.0, 3.0, 1.0],
                "mode": "min",
                "smooth": True,
            },
            "val_loss": {
                "step": [1, 3],
                "epoch": [0, 1],
                "value": [2.5, 2.0],
                "mode": "min",
                "smooth": False,
            },
            "val_acc": {"step": [1, 3], "epoch": [0, 1], "value": [0.8, 0.6], "mode": "max", "smooth": False},
        },
    }
    data.update(overrides)
    return data


def test_curves_one_axes_per_panel_with_raw_smoothed_and_best():
    fig = render_curves(_curve_data())
    try:
        assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]  # the empty panel is left out
        loss, acc = fig.axes
        labels = [line.get_label() for line in loss.lines]
        assert labels.count("train_loss (EMA 0.5); min 1 at step 3") == 1
        assert "val_loss; min 2 at step 3" in labels
        smoothed = next(line for line in loss.lines if line.get_label().startswith("train_loss (EMA"))
        assert list(smoothed.get_ydata()) == [4.0, 3.0, 3.0, 2.0]
        stars = [line for line in loss.lines if line.get_marker() == "*"]
        assert sorted((float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars) == [
            (3.0, 1.0),
            (3.0, 2.0),
        ]
        assert [t.get_text() for t in acc.texts] == ["0.8"]
        assert acc.lines[0].get_label() == "val_acc; max 0.8 at step 1"
        assert loss.get_xlabel() == "step"
    finally:
        close_figure(fig)


def test_curves_epoch_axis_and_no_best():
    fig = render_curves(_curve_data(x_axis="epoch", mark_best=False, smoothing=0.0))
    try:
        loss = fig.axes[0]
        assert loss.get_xlabel() == "epoch"
        train = next(line for line in loss.lines if line.get_label() == "train_loss")
        assert list(train.get_xdata()) == [0.5, 1.0, 1.5, 2.0]
        assert not [line for line in loss.lines if line.get_marker() == "*"] and not loss.texts
    finally:
        close_figure(fig)


def test_curves_without_data():
    fig = render_curves({"series": {}, "panels": []})
    try:
        assert len(fig.axes) == 1 and "no metric" in fig.axes[0].texts[0].get_text()
    finally:
        close_figure(fig)


def test_curves_of_unknown_direction_have_no_best_and_many_panels_fill_a_grid():
    """A series whose direction nothing gave has no star and says so; a learning rate says nothing; ten
    panels take a grid of four columns (three rows), not one column ten panels high."""
    series = {
        f"m{k}": {"step": [0, 1, 2], "epoch": [0, 0, 0], "value": [0.2, 0.9, 0.5], "mode": None}
        for k in range(10)
    }
    series["m0"]["mode_from"] = "unknown"
    series["m1"]["mode_from"] = "learning rate"
    series["m2"].update(mode="max", mode_from="ModelCheckpoint")
    panels = [{"title": name, "series": [name]} for name in series]
    fig = render_curves(
        {"x_axis": "step", "smoothing": 0.0, "mark_best": True, "panels": panels, "series": series}
    )
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert [ln.get_label() for ln in axes["m0"].lines] == ["m0; direction unknown"]
        assert [ln.get_label() for ln in axes["m1"].lines] == ["m1"]
        for name in ("m0", "m1"):
            assert not [ln for ln in axes[name].lines if ln.get_marker() == "*"] and not axes[name].texts
        star = [ln for ln in axes["m2"].lines if ln.get_marker() == "*"]
        assert [(float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in star] == [(1.0, 0.9)]
        assert len({round(ax.get_position().x0, 3) for ax in fig.axes}) == 4
        assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 3
    finally:
        close_figure(fig)

"""render.activations: pure functions from plain data to Figures with the expected panels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from lightning_viz.render import close_figure
from lightning_viz.render._figure import to_rgba
from lightning_viz.render._stamp import LABELS_GID
from lightning_viz.render.activation_stats import render_activation_stats
from lightning_viz.render.activations import (
    PAD_VALUE,
    feature_grid,
    render_feature_maps,
    render_heatmaps,
)


@pytest.fixture
def figures():
    made: list[Figure] = []
    yield made
    for fig in made:
        close_figure(fig)


def maps_layer(name: str, k: int, total: int, h: int = 6, w: int = 6) -> dict:
    rng = np.random.default_rng(len(name))
    return {
        "name": name,
        "kind": "Conv2d",
        "maps": rng.normal(size=(k, h, w)).astype(np.float32),
        "channels": np.arange(k)[::-1].copy(),
        "scores": np.linspace(1, 0, k),
        "total_channels": total,
        "order": "mean_activation",
        "note": "",
    }


def image_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.images]


def test_feature_maps_show_the_input_beside_one_labelled_grid_per_layer(figures):
    data = {
        "step": 12,
        "sample_index": 3,
        "input": np.random.default_rng(0).random((1, 8, 8)).astype(np.float32),
        "layers": [maps_layer("features.0", 4, 4), maps_layer("features.3", 5, 32)],
    }
    fig = render_feature_maps(data)
    figures.append(fig)
    assert isinstance(fig, Figure)
    axes = image_axes(fig)
    assert len(axes) == 3
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "input (example 3)"
    assert titles[1].startswith("features.0 (Conv2d): 4 of 4 channels, highest mean activation")
    assert titles[2].startswith("features.3 (Conv2d): 5 of 32 channels")
    # each tile carries its channel index, in display order: one overlay of stamped labels per layer
    (overlay,) = [im for im in axes[2].images if im.get_gid() == LABELS_GID]
    assert overlay.get_label() == "4,3,2,1,0" and not axes[2].texts
    assert overlay.get_zorder() > axes[2].images[0].get_zorder()
    assert "step 12" in fig.get_suptitle()


def test_feature_maps_without_an_image_input_and_rgb_input(figures):
    fig = render_feature_maps({"step": 1, "input": None, "layers": [maps_layer("c", 2, 2)]})
    figures.append(fig)
    assert len(image_axes(fig)) == 1
    rgb = np.random.default_rng(1).normal(size=(3, 8, 8)).astype(np.float32)
    fig = render_feature_maps({"step": 1, "input": rgb, "layers": [maps_layer("c", 2, 2)]})
    figures.append(fig)
    shown = image_axes(fig)[0].images[0].get_array()
    assert shown.shape == (8, 8, 3) and float(shown.min()) == 0.0 and float(shown.max()) == 1.0


def test_feature_grid_scales_each_channel_on_its_own():
    maps = np.stack([np.arange(4.0).reshape(2, 2), 100 + 10 * np.arange(4.0).reshape(2, 2)])
    grid, nrow, scale = feature_grid(maps)
    assert nrow == 2 and scale == (0.0, 1.0)
    tiles = grid[grid != PAD_VALUE]
    assert tiles.min() == 0.0 and tiles.max() == 1.0
    # both tiles become the same picture after per-channel scaling
    np.testing.assert_allclose(grid[1:3, 1:3], grid[1:3, 4:6])
    np.testing.assert_allclose(grid[1:3, 1:3], np.arange(4.0).reshape(2, 2) / 3, atol=1e-6)


def test_heatmaps_one_panel_per_layer(figures):
    data = {
        "step": 5,
        "layers": [
            {
                "name": "fc1",
                "kind": "Linear",
                "values": np.ones((8, 16)),
                "rows": "examples",
                "cols": "features",
            },
            {
                "name": "rnn",
                "kind": "GRU",
                "values": np.zeros((10, 4)),
                "rows": "time steps (example 0)",
                "cols": "features",
                "note": "first 128 of 300 columns",
            },
        ],
    }
    fig = render_heatmaps(data)
    figures.append(fig)
    axes = image_axes(fig)
    assert len(axes) == 2
    assert axes[0].get_title() == "fc1 (Linear)"
    assert axes[1].get_title() == "rnn (GRU): first 128 of 300 columns"
    assert axes[0].get_ylabel() == "examples" and axes[1].get_xlabel() == "features"
    assert axes[0].images[0].get_array().shape == (8, 16)


def test_activation_stats_four_panels_one_line_per_layer(figures):
    nan = math.nan
    data = {
        "saturation_threshold": 0.9,
        "layers": {
            "conv1": {
                "step": [1, 2, 3],
                "mean": [0.1, 0.2, 0.3],
                "std": [1.0, 0.9, 0.8],
                "dead_fraction": [0.0, 0.1, 0.2],
                "saturated_fraction": [nan, nan, nan],
            },
            "tanh": {
                "step": [1, 2, 3],
                "mean": [0.0, 0.0, 0.1],
                "std": [0.5, 0.6, 0.7],
                "dead_fraction": [0.0, 0.0, 0.0],
                "saturated_fraction": [0.01, 0.05, 0.2],
            },
        },
    }
    fig = render_activation_stats(data)
    figures.append(fig)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "mean",
        "standard deviation",
        "dead fraction (exact zeros)",
        "saturated fraction (|a| >= 0.9 x bound)",
    ]
    assert [len(ax.lines) for ax in axes] == [2, 2, 2, 1]  # NaN-only series are not drawn
    np.testing.assert_allclose(axes[3].lines[0].get_ydata(), [0.01, 0.05, 0.2])
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["conv1", "tanh"]


def test_activation_stats_says_when_no_layer_is_bounded(figures):
    hist = {
        "step": [1],
        "mean": [0.0],
        "std": [1.0],
        "dead_fraction": [0.0],
        "saturated_fraction": [math.nan],
    }
    fig = render_activation_stats({"layers": {"conv1": hist}})
    figures.append(fig)
    assert "no bounded" in fig.axes[3].texts[0].get_text()


def test_absolute_scale_draws_a_dead_map_as_zero_with_a_colour_bar(figures):
    dead = np.zeros((2, 4, 4), dtype=np.float32)  # a dead ReLU layer: every value exactly 0
    live = np.stack([np.zeros((4, 4)), np.full((4, 4), 3.0)]).astype(np.float32)
    grid, _, (lo, hi) = feature_grid(dead, "absolute")
    assert (lo, hi) == (0.0, 1.0) and np.all(grid[grid <= hi] == 0.0)  # zero, not stretched noise
    grid, _, (lo, hi) = feature_grid(live, "absolute")
    assert (lo, hi) == (0.0, 3.0)  # one range for the layer, including 0
    np.testing.assert_array_equal(grid[1:5, 1:5], 0.0)
    np.testing.assert_array_equal(grid[1:5, 6:10], 3.0)
    # per_map would stretch a tiny-range map to the full colour range
    noise = np.full((1, 4, 4), 1e-3, dtype=np.float32)
    noise[0, 0, 0] = 2e-3
    assert feature_grid(np.concatenate([noise, noise]), "per_map")[0].max() == PAD_VALUE
    layer = {**maps_layer("features.conv1", 2, 2), "maps": dead, "shows": "output of act1 (ReLU) after conv1"}
    fig = render_feature_maps({"step": 3, "input": None, "color_scale": "absolute", "layers": [layer]})
    figures.append(fig)
    (ax,) = image_axes(fig)
    im = ax.images[0]
    assert im.get_clim() == (0.0, 1.0)
    shown = np.ma.filled(im.get_array().astype(float), np.nan)
    assert np.all(shown[shown <= 1.0] == 0.0)
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 1  # the colour bar says what the colours are
    assert "output of act1 (ReLU) after conv1" in ax.get_title()
    assert "one colour scale per layer" in fig.get_suptitle()


def test_conv1d_heatmap_rows_are_channel_numbers_and_the_input_signal_is_beside(figures):
    values = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)
    data = {
        "step": 2,
        "input": {"values": np.sin(np.arange(40.0))[None], "example": 1, "source": "batch[0]", "note": ""},
        "layers": [
            {
                "name": "conv",
                "kind": "Conv1d",
                "values": values,
                "rows": "channel (example 1)",
                "cols": "position",
                "row_ticks": [7, 2, 30],
                "shows": "output of act (ReLU) after conv",
            }
        ],
    }
    fig = render_heatmaps(data)
    figures.append(fig)
    main = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(main) == 2
    signal, heat = main
    assert signal.get_title() == "input (example 1)" and len(signal.lines) == 1
    np.testing.assert_allclose(signal.lines[0].get_ydata(), np.sin(np.arange(40.0)), rtol=1e-6)
    assert signal.get_xlabel() == "position"
    assert [t.get_text() for t in heat.get_yticklabels()] == ["7", "2", "30"]
    assert list(heat.get_yticks()) == [0, 1, 2]
    assert heat.get_ylabel() == "channel (example 1)" and heat.get_xlabel() == "position"
    assert heat.get_title() == "conv (Conv1d)\noutput of act (ReLU) after conv"


def test_activation_stats_say_what_each_layer_is_of_and_which_never_ran(figures):
    nan = math.nan
    data = {
        "layers": {
            "features.conv1": {
                "step": [1, 2, 3],
                "mean": [0.1, nan, 0.3],
                "std": [1.0, nan, 0.8],
                "dead_fraction": [0.5, nan, 0.6],
                "saturated_fraction": [nan] * 3,
                "ran": [True, False, True],
            },
            "attn.out_proj": {
                "step": [1, 2, 3],
                "mean": [nan] * 3,
                "std": [nan] * 3,
                "dead_fraction": [nan] * 3,
                "saturated_fraction": [nan] * 3,
                "nonfinite": [0, 0, 0],
                "ran": [False] * 3,
            },
        },
        "of": {"features.conv1": "output of features.act1 (ReLU) after features.conv1"},
    }
    fig = render_activation_stats(data)
    figures.append(fig)
    note = "\n".join(t.get_text() for t in fig.texts)
    assert (
        "features.conv1: output of features.act1 (ReLU) after features.conv1; not run at 1 capture(s)" in note
    )
    assert "attn.out_proj: not run (in any capture)" in note
    assert "NaN" not in note
    ax = fig.axes[2]
    assert len(ax.lines) == 1  # the never-run layer draws nothing
    ydata = np.asarray(ax.lines[0].get_ydata(), dtype=float)
    assert np.isnan(ydata[1]) and ydata[0] == 0.5  # no point at the capture where it did not run
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["features.conv1"]


def test_maps_and_heatmaps_name_the_layers_that_did_not_run(figures):
    data = {"step": 3, "input": None, "layers": [maps_layer("c", 2, 2)], "not_run": ["alt"]}
    fig = render_feature_maps(data)
    figures.append(fig)
    assert fig._suptitle.get_text().splitlines()[1] == "not run in this pass (nothing to show): alt"
    heat = {"name": "fc", "kind": "Linear", "values": np.ones((4, 4)), "rows": "examples", "cols": "features"}
    fig = render_heatmaps({"step": 3, "layers": [heat], "not_run": ["branch.fc", "head"]})
    figures.append(fig)
    assert "not run in this pass (nothing to show): branch.fc, head" in fig._suptitle.get_text()
    fig = render_heatmaps({"step": 3, "layers": [heat]})
    figures.append(fig)
    assert "not run" not in fig._suptitle.get_text()


def test_stamped_labels_are_white_text_on_a_dark_box_at_each_tile(figures):
    # the rendered pixels: at each tile's top-left corner a dark box with white text; elsewhere the map itself
    maps = np.full((4, 16, 16), 0.5, dtype=np.float32)
    maps[:, 0, 0] = 0.0
    maps[:, -1, -1] = 1.0
    layer = {**maps_layer("c", 4, 4), "maps": maps, "channels": np.array([11, 7, 3, 0])}
    fig = render_feature_maps({"step": 1, "input": None, "layers": [layer]})
    figures.append(fig)
    rgba = to_rgba(fig).astype(float)
    (ax,) = image_axes(fig)
    ax.apply_aspect()
    box = ax.get_window_extent()
    h = rgba.shape[0]
    x0, x1 = int(box.x0), int(box.x1)
    y0 = int(h - box.y1)  # rows from the top
    tile = (x1 - x0) // 2  # a 2 x 2 grid of tiles
    for r in range(2):
        for c in range(2):
            corner = rgba[y0 + r * tile + 3 : y0 + r * tile + 14, x0 + c * tile + 3 : x0 + c * tile + 14, :3]
            assert corner.max() > 240, (r, c)  # white glyph pixels
            assert corner.min() < 80, (r, c)  # the dark box
    middle = rgba[y0 + tile // 2 - 2 : y0 + tile // 2 + 2, x0 + tile // 2 - 2 : x0 + tile // 2 + 2, :3]
    assert np.ptp(middle.reshape(-1, 3), axis=0).max() < 10  # the map's own constant colour: no label there

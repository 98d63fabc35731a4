"""render_evolution: the step x value heatmaps of the weight histogram callback."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from lightning_viz.render import close_figure, open_figure_count
from lightning_viz.render._figure import to_rgba
from lightning_viz.render.histograms import (
    MAX_PANELS,
    panel_matrix,
    rebin,
    render_evolution,
    step_edges,
    value_grid,
)


def param(name, steps, values_per_step=None, bins=8, w=2.0**-3, k=-4, numel=None, nonfinite=None):
    """A parameter's history built from raw values, histogrammed with numpy on power-of-two edges."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    steps = np.asarray(steps)
    edges = np.tile((np.arange(bins + 1) + k) * w, (len(steps), 1))
    if values_per_step is None:
        values_per_step = [np.clip(rng.normal(0, 0.15, 50), edges[0, 0], edges[0, -1]) for _ in steps]
    counts = np.stack([np.histogram(v, bins=e)[0] for v, e in zip(values_per_step, edges)])
    nf = np.zeros(len(steps), dtype=np.int64) if nonfinite is None else np.asarray(nonfinite)
    return {
        "name": name,
        "numel": int(numel if numel is not None else counts[0].sum()),
        "steps": steps,
        "edges": edges,
        "counts": counts,
        "nonfinite": nf,
    }


def panels(fig: Figure):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def draw_and_close(fig: Figure) -> np.ndarray:
    try:
        return to_rgba(fig)
    finally:
        close_figure(fig)


def test_one_panel_per_parameter_plus_colorbar():
    data = {"title": "weights over training", "params": [param(f"l{i}.weight", [0, 5, 10]) for i in range(6)]}
    before = open_figure_count()
    fig = render_evolution(data)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 7  # 6 panels and one shared colour bar
    assert [ax.get_title().split(" ")[0] for ax in panels(fig)] == [f"l{i}.weight" for i in range(6)]
    rgba = draw_and_close(fig)
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and rgba[..., :3].std() > 0
    assert open_figure_count() == before


def test_panels_capped_largest_and_nonfinite_first_and_title_says_what_is_omitted():
    params = [param(f"p{i:02d}", [0, 1], numel=100 + i) for i in range(20)]
    params[0] = param("p00", [0, 1], numel=1, nonfinite=[0, 2])  # smallest, but it has NaN: must be shown
    fig = render_evolution({"title": "gradients", "params": params})
    try:
        shown = [ax.get_title().split(" ")[0] for ax in panels(fig)]
        assert len(fig.axes) == MAX_PANELS + 1
        expected = ["p00"] + [f"p{i:02d}" for i in range(5, 20)]  # the 15 largest others, in model order
        assert shown == expected
        title = fig.get_suptitle()
        assert "16 of 20 parameters shown" in title and "omitted 4" in title and "p01" in title
    finally:
        close_figure(fig)


def test_single_step_heatmap_values():
    # two values in [0, 0.5) and two in [0.5, 1): shares 0.5 / 0.5 on the grid of the source bins
    p = param("b", [7], values_per_step=[np.array([0.1, 0.2, 0.6, 0.9])], bins=2, w=0.5, k=0)
    fig = render_evolution({"title": "one step", "params": [p]})
    try:
        ax = panels(fig)[0]
        mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
        np.testing.assert_allclose(np.ma.filled(mesh.get_array(), 0).ravel(), [0.5, 0.5])
        assert ax.get_xlim() == (6.5, 7.5)
        assert ax.get_ylim() == (0.0, 1.0)
    finally:
        draw_and_close(fig)


def test_all_zero_counts_and_empty_params_render():
    p = param("dead", [0, 1, 2])
    p["counts"] = np.zeros_like(p["counts"])
    p["nonfinite"] = np.array([4, 4, 4])
    fig = render_evolution({"title": "all NaN", "params": [p]})
    ax = panels(fig)[0]
    texts = [t.get_text() for t in ax.texts]
    assert "no finite values" in texts
    assert any(t.startswith("non-finite: 12 values at 3 step(s), first at step 0") for t in texts)
    draw_and_close(fig)
    fig = render_evolution({"title": "nothing", "params": []})
    assert len(fig.axes) == 2
    draw_and_close(fig)


def test_nan_annotation_names_count_and_first_step():
    p = param("fc.weight", [0, 10, 20, 30], nonfinite=[0, 3, 0, 1])
    q = param("fc.bias", [0, 10, 20, 30])
    fig = render_evolution({"title": "t", "params": [p, q]})
    try:
        ax_p, ax_q = panels(fig)
        notes = [t.get_text() for t in ax_p.texts if t.get_gid() not in ("xtick", "ytick")]
        assert notes == ["non-finite: 4 values at 2 step(s), first at step 10"]
        marks = [line for line in ax_p.lines if line.get_linestyle() != "None"]  # not the tick marks
        assert sorted(line.get_xdata()[0] for line in marks) == [10.0, 30.0]
        assert all(t.get_gid() in ("xtick", "ytick") for t in ax_q.texts)
        assert not [line for line in ax_q.lines if line.get_linestyle() != "None"]  # tick marks only
    finally:
        draw_and_close(fig)


def test_rebin_onto_aligned_coarser_grid_equals_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.3, 1000)
    fine = (np.arange(129) - 64) * 2.0**-5
    x = x[(x >= fine[0]) & (x < fine[-1])]
    coarse = value_grid(fine[0], fine[-1], 2.0**-3)
    counts, _ = np.histogram(x, bins=fine)
    np.testing.assert_allclose(rebin(fine, counts, coarse), np.histogram(x, bins=coarse)[0], atol=1e-9)
    finer = value_grid(fine[0], fine[-1], 2.0**-7)
    assert rebin(fine, counts, finer).sum() == pytest.approx(x.size)


def test_panel_matrix_common_grid_spans_every_step():
    a = param("w", [0], values_per_step=[np.array([0.01, 0.02])], bins=4, w=2.0**-4, k=0)
    b = param("w", [5], values_per_step=[np.array([-1.0, 0.9])], bins=4, w=0.5, k=-2)
    p = {**a, "steps": np.array([0, 5]), "edges": np.vstack([a["edges"], b["edges"]])}
    p["counts"] = np.vstack([a["counts"], b["counts"]])
    grid, z = panel_matrix(p)
    assert grid[0] <= -1.0 and grid[-1] >= 0.9
    widths = np.diff(grid)
    assert np.all(widths == widths[0]) and np.all(np.mod(grid, widths[0]) == 0)  # aligned to the width
    np.testing.assert_allclose(z.sum(axis=0), [1.0, 1.0])
    col0 = z[:, 0]
    assert col0[np.searchsorted(grid, 0.01, side="right") - 1] == pytest.approx(1.0)


def test_step_edges_uneven_steps():
    np.testing.assert_allclose(step_edges(np.array([0, 2, 10])), [-1, 1, 6, 14])
    np.testing.assert_allclose(step_edges(np.array([4])), [3.5, 4.5])

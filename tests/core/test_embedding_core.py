"""The embedding machinery alone: features_of's pooling rules, pca_2d against numpy.linalg.svd (NaN rows left
out, one feature, too few rows), the projector's sprite layout and metadata rule, and the scatter's legend,
colour scale and notes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colorbar import Colorbar

from lightning_viz.core.embedding import features_of, pca_2d
from lightning_viz.core.projector import _metadata, sprite
from lightning_viz.render import close_figure
from lightning_viz.render.embedding import render_embedding


def test_features_of_pools_along_the_right_dimension():
    conv = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    torch.testing.assert_close(features_of(conv, "mean"), conv.mean((2, 3)))
    torch.testing.assert_close(features_of(conv, "flatten"), conv.reshape(2, -1))
    tokens = torch.randn(2, 7, 6)
    torch.testing.assert_close(features_of(tokens, "mean", channels_last=True), tokens.mean(1))
    torch.testing.assert_close(features_of((tokens, "mask"), "mean", channels_last=True), tokens.mean(1))
    assert features_of(torch.arange(4), "mean") is None  # integers
    assert features_of(torch.randn(4), "mean") is None  # one dimension: no examples x features


def test_pca_equals_numpy_svd_and_leaves_out_non_finite_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    x[[3, 17]] = np.nan
    x[20, 2] = np.inf
    proj = pca_2d(x.astype(np.float32))
    keep = np.isfinite(x).all(1)
    assert proj.kept.tolist() == keep.tolist()
    c = x[keep].astype(np.float32).astype(np.float64)
    c = c - c.mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    top = vt[:2] * np.sign(vt[np.arange(2), np.abs(vt[:2]).argmax(1)])[:, None]
    np.testing.assert_allclose(proj.coords, c @ top.T, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(proj.explained, s[:2] ** 2 / (s**2).sum(), rtol=1e-9)
    assert all(abs(v).argmax() == v.argmax() for v in proj.components)  # largest entry positive


def test_pca_of_one_feature_and_of_too_few_rows():
    one = pca_2d(np.array([[1.0], [3.0], [5.0]]))
    np.testing.assert_allclose(one.coords, [[-2, 0], [0, 0], [2, 0]])
    np.testing.assert_allclose(one.explained, [1.0, 0.0])
    few = pca_2d(np.ones((1, 4)))
    assert few.coords.tolist() == [[0.0, 0.0]] and few.explained.tolist() == [0.0, 0.0]


def test_sprite_is_a_square_grid_row_by_row_and_metadata_has_a_header_only_with_two_columns():
    images = np.zeros((5, 1, 3, 2))  # tiles 3 high, 2 wide
    for i in range(5):
        images[i] = i / 4
    grid = sprite(images)
    assert grid.shape == (9, 6, 3)  # ceil(sqrt(5)) = 3 tiles a side
    assert (grid[3:6, 0:2] == round(255 * 3 / 4)).all()  # example 3: row 1, column 0
    assert (grid[0:3, 2:4] == round(255 * 1 / 4)).all()  # example 1: row 0, column 1
    assert (grid[3:6, 2:4] == 255).all()  # example 4
    assert grid[3:, 4:].max() == 0 and grid[6:].max() == 0  # the unused tiles
    assert _metadata({"label": ["a", "b"]}) == b"a\nb\n"
    assert _metadata({"label": ["a", "b"], "predicted": ["b", "b"]}) == b"label\tpredicted\na\tb\nb\tb\n"


def _data(**kw):
    rng = np.random.default_rng(1)
    base = {
        "step": 5, "epoch": 0, "layer": "fc", "source": "input", "pooled": False, "dims": 8,
        "coords": rng.normal(size=(30, 2)).tolist(), "explained": [0.5, 0.25], "left_out": 0,
        "labels": None, "label_kind": None, "predicted": None, "class_names": None,
    }  # fmt: skip
    return base | kw


def _texts(fig) -> list[str]:
    ax = fig.axes[0]
    legend = ax.get_legend()
    return [t.get_text() for t in ax.texts] + ([t.get_text() for t in legend.get_texts()] if legend else [])


@pytest.mark.parametrize("case", ["classes", "many classes", "values", "none"])
def test_the_scatter_says_what_its_colours_are(case):
    labels = {"classes": [i % 3 for i in range(30)], "many classes": list(range(30)), "values": None}
    lab = labels.get(case) or ([i / 30 for i in range(30)] if case == "values" else None)
    kind = {"values": "value", "none": None}.get(case, "class")
    predicted = [0] * 30 if case == "classes" else None
    fig = render_embedding(
        _data(labels=lab, label_kind=kind, predicted=predicted, class_names=["x", "y", "z"])
    )
    try:
        _check_scatter(fig, case)
    finally:
        close_figure(fig)


def _check_scatter(fig, case):
    texts = _texts(fig)
    ax = fig.axes[0]
    assert (
        ax.get_xlabel() == "PC 1 (50.0% of the variance)"
        and ax.get_ylabel() == "PC 2 (25.0% of the variance)"
    )
    colorbars = [a for a in fig.axes[1:] if isinstance(getattr(a, "_colorbar", None), Colorbar)]
    if case == "classes":
        assert (
            texts[-4:] == ["x", "y", "z", "predicted wrong"]
            and "20 of 30 predicted wrong (crosses)" in texts[0]
        )
    elif case == "many classes":
        assert ax.get_legend() is None and len(fig.axes) == 2
    elif case == "values":
        assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "target"
    else:
        assert "no targets in the batches: one colour" in texts[0]
    assert colorbars == [] or len(colorbars) == 1

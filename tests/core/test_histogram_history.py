"""HistogramSeries of core/histogram_history.py: even thinning in preallocated arrays, first and latest kept."""

from __future__ import annotations

import numpy as np

from lightning_viz.core.histogram_history import FIELDS, HistogramSeries


def test_thinning_is_even_and_keeps_first_and_last():
    series = HistogramSeries(13, 2)
    buffers = {key: getattr(series, key) for key in FIELDS}
    for step in range(0, 1000, 10):
        series.append(step, 0, 1.0, np.array([step, 1]), 0, 12)
        steps = series.arrays()["steps"]
        assert len(steps) <= 12
        assert steps[0] == 0 and steps[-1] == step
        np.testing.assert_array_equal(series.arrays()["counts"][:, 0], steps)  # rows move with their steps
    gaps = np.diff(series.arrays()["steps"][:-1])
    assert len(set(gaps.tolist())) == 1 and len(series.arrays()["steps"]) >= 6
    # written in place: the arrays allocated at the start are the ones still in use
    assert all(getattr(series, key) is buffers[key] for key in FIELDS)


def test_thinning_matches_the_list_reference():
    """The preallocated series keeps exactly the snapshots a plain list implementation keeps."""
    kept: list[tuple[int, int]] = []  # (capture index, step)
    stride = 1
    series = HistogramSeries(8, 1)
    steps = list(range(0, 300, 3)) + list(range(150, 400, 5))  # a resumed run goes back to step 150
    for seen, step in enumerate(steps):
        while kept and kept[-1][1] >= step:
            kept.pop()
        if kept and kept[-1][0] % stride:
            kept.pop()
        kept.append((seen, step))
        while len(kept) > 7:
            stride *= 2
            kept = [c for j, c in enumerate(kept) if c[0] % stride == 0 or j == len(kept) - 1]
        series.append(step, 0, 1.0, np.array([step]), 0, 7)
        assert series.arrays()["steps"].tolist() == [s for _, s in kept]
        assert series.arrays()["index"].tolist() == [c for c, _ in kept]

"""Property tests: the activation statistics equal numpy on the finite values, for random shapes, dtypes
and NaN/Inf mixes, and the per-rank sums pool exactly."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lightning_viz.core.activation_stats import output_sums, stat_view, stats_from_sums

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool]
BOUNDS = [None, (-1.0, 1.0), (0.0, 1.0)]


@st.composite
def activations(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=6))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.one_of(
                st.floats(-4, 4, allow_nan=False, width=16),
                st.sampled_from([0.0, 1.0, -1.0, 0.999, math.nan, math.inf, -math.inf]),
            ),
        )
    )
    t = torch.from_numpy(values)
    if dtype == torch.bool:
        t = torch.nan_to_num(t, nan=0.0) > 0
    elif not dtype.is_floating_point:
        t = torch.nan_to_num(t, nan=0.0, posinf=7.0, neginf=-7.0).round().to(dtype)
    else:
        t = t.to(dtype)
    return t


def reference(t: torch.Tensor, bounds, threshold: float) -> tuple[dict[str, float], int]:
    """numpy on the values as the statistics see them (float32 for half and integer types)."""
    x = stat_view(t).double().numpy().ravel()
    ok = np.isfinite(x)
    f = x[ok]
    if f.size == 0:
        return dict.fromkeys(("mean", "std", "dead_fraction", "saturated_fraction"), math.nan), int(
            (~ok).sum()
        )
    sat = math.nan
    if bounds is not None:
        centre, half = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2
        sat = float(np.mean(np.abs(f - centre) >= threshold * half))
    stats = {
        "mean": f.mean(),
        "std": f.std(),
        "dead_fraction": float(np.mean(f == 0)),
        "saturated_fraction": sat,
    }
    return stats, int((~ok).sum())


def check(got: dict[str, float], want: dict[str, float], scale: float) -> None:
    for key, w in want.items():
        g = got[key]
        if math.isnan(w):
            assert math.isnan(g), (key, g)
        elif key in ("dead_fraction", "saturated_fraction"):
            assert g == w, (key, g, w)
        else:
            assert math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-6 * max(scale, 1.0)), (key, g, w)


@settings(max_examples=150, deadline=None)
@given(activations(), st.sampled_from(BOUNDS), st.sampled_from([0.5, 0.99, 1.0]))
def test_statistics_equal_numpy_on_the_finite_values(t, bounds, threshold):
    sums = output_sums(stat_view(t), bounds, threshold).numpy()
    want, bad = reference(t, bounds, threshold)
    assert int(sums[6]) == bad
    assert int(sums[0]) == t.numel() - bad
    finite = stat_view(t).double().numpy()
    scale = float(np.abs(finite[np.isfinite(finite)]).max()) if np.isfinite(finite).any() else 1.0
    check(stats_from_sums(sums, bounds is not None), want, scale)


@settings(max_examples=80, deadline=None)
@given(st.lists(activations(), min_size=2, max_size=4), st.sampled_from(BOUNDS))
def test_sums_of_parts_pool_to_the_statistics_of_the_whole(parts, bounds):
    """What the SUM all-reduce over ranks (or repeated calls of one module) relies on."""
    parts = [stat_view(p).double().ravel() for p in parts]
    total = sum(output_sums(p, bounds, 0.9) for p in parts)
    whole = output_sums(torch.cat(parts), bounds, 0.9)
    np.testing.assert_allclose(total[[0, 4, 5, 6]].numpy(), whole[[0, 4, 5, 6]].numpy())
    got = stats_from_sums(total.numpy(), bounds is not None)
    want = stats_from_sums(whole.numpy(), bounds is not None)
    scale = max(
        (float(p[torch.isfinite(p)].abs().max()) for p in parts if torch.isfinite(p).any()), default=1.0
    )
    check(got, want, scale)

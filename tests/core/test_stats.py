"""Property tests of the histogram engine against numpy on the same edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_viz.core import cpu_histograms, stats

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INT_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]
SPECIALS = [math.nan, math.inf, -math.inf]


@st.composite
def tensors(draw) -> torch.Tensor | None:
    """A tensor of any supported dtype and shape (empty included), possibly constant or with NaN/Inf; or None."""
    kind = draw(st.sampled_from(["float", "float", "float", "int", "bool", "none"]))
    if kind == "none":
        return None
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
    n = math.prod(shape)
    if kind == "bool":
        return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool).reshape(
            shape
        )
    if kind == "int":
        dtype = draw(st.sampled_from(INT_DTYPES))
        lo, hi = (0, 255) if dtype == torch.uint8 else (-(2**15), 2**15 - 1)
        values = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
        return torch.tensor(values, dtype=dtype).reshape(shape)
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    scale = 2.0 ** draw(st.integers(-40, 40))
    finite = st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: v * scale)
    element = st.one_of(finite, finite, finite, st.sampled_from(SPECIALS)) if draw(st.booleans()) else finite
    if draw(st.integers(0, 5)) == 0:  # a constant tensor (e.g. a freshly initialised bias)
        values = [draw(element)] * n
    else:
        values = draw(st.lists(element, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).to(dtype).reshape(shape)


def reference(t: torch.Tensor | None) -> np.ndarray:
    """The tensor's values as exact float64 (every generated value is exactly representable)."""
    if t is None:
        return np.zeros(0)
    return t.detach().to(torch.float64).reshape(-1).numpy()


def check_one(hs: stats.HistogramSet, i: int, t: torch.Tensor | None, bins: int) -> None:
    x = reference(t)
    finite = x[np.isfinite(x)]
    edges = hs.edges[i]
    assert edges.shape == (bins + 1,) and hs.counts[i].shape == (bins,)
    assert hs.numel[i] == x.size
    assert hs.nonfinite[i] == np.count_nonzero(~np.isfinite(x))
    if finite.size == 0:
        assert hs.counts[i].sum() == 0
        assert np.isnan(hs.minimum[i]) and np.isnan(hs.maximum[i])
        assert hs.sum[i] == 0 and hs.sum_squares[i] == 0
        return
    assert hs.minimum[i] == finite.min() and hs.maximum[i] == finite.max()
    assert edges[0] <= finite.min() and finite.max() <= edges[-1]
    expected, _ = np.histogram(finite, bins=edges)
    np.testing.assert_array_equal(hs.counts[i], expected)
    # float32 accumulation (float64 tensors accumulate in float64): error below n * eps32 * sum |x|
    n = finite.size
    tol_sum = 4 * n * 2.0**-24 * np.abs(finite).sum() + 1e-300
    assert abs(hs.sum[i] - finite.sum()) <= tol_sum
    ss = np.sum(finite**2)
    tol_ss = 4 * n * 2.0**-24 * ss + 4 * n * np.finfo(np.float32).tiny  # squares below float32's range vanish
    assert abs(hs.sum_squares[i] - ss) <= tol_ss
    assert hs.norm[i] == pytest.approx(math.sqrt(hs.sum_squares[i]))


@SETTINGS
@given(items=st.lists(tensors(), min_size=1, max_size=4), bins=st.integers(2, 70))
def test_histogram_set_matches_numpy(items, bins):
    names = [f"t{i}" for i in range(len(items))]
    hs, failed = stats.histogram_set(items, names, bins)
    assert not failed
    assert hs.names == names
    for i, t in enumerate(items):
        check_one(hs, i, t, bins)


def test_histogram_set_chunked_large_tensor_with_nan():
    """More elements than one CPU chunk, with NaN/Inf scattered through several chunks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3 * cpu_histograms.CPU_CHUNK + 123, generator=g) * 0.02
    x[::100_003] = math.nan
    x[7::200_011] = -math.inf
    y = torch.randn(1000, generator=g, dtype=torch.float64)
    hs, failed = stats.histogram_set([x, None, y], ["x", "none", "y"], 64)
    assert not failed
    check_one(hs, 0, x, 64)
    check_one(hs, 1, None, 64)
    check_one(hs, 2, y, 64)
    assert hs.nonfinite[0] == len(range(0, x.numel(), 100_003)) + len(range(7, x.numel(), 200_011))


def test_histogram_set_constant_and_all_nan():
    const = torch.full((5, 3), 0.375)
    nan = torch.full((4,), math.nan)
    hs, failed = stats.histogram_set([const, nan, torch.empty(0, 3)], ["c", "nan", "empty"], 8)
    assert not failed
    check_one(hs, 0, const, 8)
    assert hs.counts[0].sum() == 15 and np.count_nonzero(hs.counts[0]) == 1
    check_one(hs, 1, nan, 8)
    assert hs.nonfinite[1] == 4 and hs.numel[1] == 4
    check_one(hs, 2, torch.empty(0, 3), 8)


finite_floats = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(a=finite_floats, b=finite_floats, bins=st.integers(2, 300))
def test_bin_plan_invariants(a, b, bins):
    lo, hi = min(a, b), max(a, b)
    w, k = stats.bin_plan(lo, hi, bins)
    edges = stats.edges_for(w, k, bins)
    assert len(edges) == bins + 1  # exactly `bins` bins
    assert math.frexp(w)[0] == 0.5  # a power of two
    assert edges[0] == k * w and np.all(np.diff(edges) == w)  # exact multiples of the width
    assert edges[0] <= lo and hi <= edges[-1]  # covers [lo, hi]
    if hi > lo and w > 2.0**-126:  # the smallest such width: half of it would need more than `bins` bins
        half = w / 2
        k_half = math.floor(lo / half)
        if lo < k_half * half:  # lo / half underflowed to -0.0 (tiny negative lo): its bin is the one below
            k_half -= 1
        assert math.floor(hi / half) - k_half >= bins


@pytest.mark.parametrize(
    ("values", "dtype"),
    [([-1.4e-45, 200.0], torch.float32), ([-1e-39, 3e30], torch.float32), ([-1e-320, 1e13], torch.float64)],
)
def test_tiny_negative_values_next_to_a_wide_range(values, dtype):
    x = torch.tensor(values, dtype=dtype)
    hs, failed = stats.histogram_set([x], ["x"], 64)
    assert not failed
    check_one(hs, 0, x, 64)


def test_bin_plan_edges_stay_put_when_range_changes_a_little():
    """Power-of-two aligned edges: two nearby ranges share their bin boundaries."""
    w1, k1 = stats.bin_plan(-0.101, 0.098, 64)
    w2, k2 = stats.bin_plan(-0.099, 0.1002, 64)
    assert w1 == w2
    shared = np.intersect1d(stats.edges_for(w1, k1, 64), stats.edges_for(w2, k2, 64))
    assert len(shared) >= 60


def test_bin_plan_non_finite_range_falls_back():
    w, k = stats.bin_plan(math.nan, math.inf, 10)
    edges = stats.edges_for(w, k, 10)
    assert len(edges) == 11 and edges[0] <= 0 <= edges[-1]


def test_many_tensors_batched_chunked_and_threaded(monkeypatch):
    """Small float32 tensors counted together in one batch, large ones in chunks, shared by two threads.

    Includes a small tensor whose bin indices need int64 (a narrow range far from zero), one whose tiny
    negative value underflows next to a wide range, NaN/Inf in a small and in a large tensor, a float64 and
    an integer tensor, all checked against numpy on the same edges.
    """
    monkeypatch.setattr(cpu_histograms, "CPU_WORKERS", 2)
    monkeypatch.setattr(cpu_histograms, "CPU_PARALLEL_ABOVE", 1000)
    g = torch.Generator().manual_seed(1)
    items: list[torch.Tensor] = []
    for j in range(30):
        items.append(
            torch.randn(int(torch.randint(1, 3000, (1,), generator=g)), generator=g) * 2.0 ** (j - 15)
        )
    items.append(torch.tensor([1.0, 1.0 + 2.0**-23, 1.0 + 2.0**-22], dtype=torch.float32))  # int64 indices
    items.append(torch.tensor([-1.4e-45, 200.0], dtype=torch.float32))  # -0.0 after scaling
    small_nan = torch.randn(500, generator=g)
    small_nan[::7] = math.nan
    small_nan[3] = math.inf
    items.append(small_nan)
    big = torch.randn(cpu_histograms.CPU_CHUNK + cpu_histograms.CPU_BATCH_BELOW + 5, generator=g) * 1e-3 + 0.5
    big[::1001] = -math.inf
    items += [big, torch.randn(2 * cpu_histograms.CPU_BATCH_BELOW, generator=g)]
    items += [torch.randn(777, generator=g, dtype=torch.float64), torch.arange(-50, 5000, dtype=torch.int32)]
    for bins in (64, 300):
        hs, failed = stats.histogram_set(items, [f"t{i}" for i in range(len(items))], bins)
        assert not failed
        for i, t in enumerate(items):
            check_one(hs, i, t, bins)


def test_map_cpu_shares_work_keeps_order_and_raises(monkeypatch):
    import threading

    monkeypatch.setattr(cpu_histograms, "CPU_WORKERS", 2)
    monkeypatch.setattr(cpu_histograms, "CPU_PARALLEL_ABOVE", 0)
    seen: set[int] = set()
    gate = threading.Barrier(2, timeout=10)

    def fn(x: int) -> int:
        seen.add(threading.get_ident())
        if x >= 98:  # the two largest items go first, one to each thread: both threads must take part
            gate.wait()
        return x * x

    items = list(range(100))
    assert cpu_histograms.map_cpu(fn, items, items) == [x * x for x in items]
    assert len(seen) == 2

    def bad(x: int) -> int:
        if x == 50:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError, match="boom"):
        cpu_histograms.map_cpu(bad, items, items)
    monkeypatch.setattr(cpu_histograms, "CPU_WORKERS", 1)
    seen.clear()
    assert cpu_histograms.map_cpu(lambda x: seen.add(threading.get_ident()) or -x, items, items) == [
        -x for x in items
    ]
    assert seen == {threading.get_ident()}

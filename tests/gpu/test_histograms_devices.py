"""Histogram counts of fp32, bf16 and fp16 tensors on the CPU and on CUDA equal ``numpy.histogram`` on the
same edges, constant tensors, NaN/Inf, subnormal-sized values and values on the edges included.

The reference is independent: each tensor is converted to float64 (exact for all three dtypes) and counted
by numpy on the edges :func:`lightning_viz.core.stats.histogram_set` returns. On CUDA one tensor is larger
than a counting chunk (``MAX_EXACT_CHUNK``) and puts more values in one bin than float32 counts exactly
(2**24).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_viz.core import device_histograms, stats
from lightning_viz.core.cpu_histograms import MAX_EXACT_CHUNK
from tests.gpu.devices import DEVICES

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]


def tensors(device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Named test tensors in ``dtype`` on ``device`` (the same values on every device)."""
    g = torch.Generator().manual_seed(0)
    nan_inf = torch.randn(5000, generator=g)
    nan_inf[::97] = math.nan
    nan_inf[5::101] = math.inf
    nan_inf[7::103] = -math.inf
    # bigger than one counting chunk, its zero bin holding more values than float32 counts exactly (CUDA)
    size = MAX_EXACT_CHUNK + (1 << 20) + 5 if device == "cuda" else (1 << 20) + 5
    big = torch.zeros(size)
    big[::4096] = torch.randn(big[::4096].numel(), generator=g)
    cases = {
        "normal": torch.randn(10_000, generator=g) * 0.02,
        "conv_weight": torch.randn(64, 3, 3, 3, generator=g),
        "wide": torch.randn(4096, generator=g) * 100.0,
        "tiny": torch.randn(2000, generator=g) * 1e-6,  # fp16 subnormals
        "on_edges": torch.randint(-8, 9, (3000,), generator=g).float(),
        "constant": torch.full((1000,), 0.125),
        "constant_negative": torch.full((33,), -3.0),
        "zeros": torch.zeros(77),
        "nan_inf": nan_inf,
        "all_nan": torch.full((10,), math.nan),
        "one_value": torch.tensor([7.5]),
        "big": big,
    }
    return {name: t.to(dtype).to(device) for name, t in cases.items()}


# which engine counts: the device's own (the CPU engine on the CPU, device_histograms on CUDA), or on the CPU
# the accelerator engine, with its usual groups or with groups so small that tensors span several of them
ENGINES = [
    pytest.param("native", id="native"),
    pytest.param("device-engine", id="device-engine"),
    pytest.param("small-groups", id="small-groups"),
    pytest.param("deterministic", id="deterministic"),  # counted by index_add_: CUDA's histc has no such mode
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bins", [64, 7])
def test_counts_equal_numpy_on_the_same_edges(device, dtype, bins, engine, monkeypatch):
    if engine in ("device-engine", "small-groups") and device != "cpu":
        pytest.skip("on CUDA the accelerator engine is the native one")
    if engine != "native" and device == "cpu":
        monkeypatch.setattr(stats, "_on_cpu", lambda xs: False)
    if engine == "small-groups":
        monkeypatch.setattr(device_histograms, "ROW", 16)
        monkeypatch.setattr(device_histograms, "GROUP", 16 * 256)
    named = tensors(device, dtype)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(engine == "deterministic" or was)
    try:
        hs, failed = stats.histogram_set(list(named.values()), list(named), bins)
    finally:
        torch.use_deterministic_algorithms(was)
    assert not failed, "histogram_set reported a failure"
    assert hs.names == list(named) and hs.counts.shape == (len(named), bins)
    for i, (name, t) in enumerate(named.items()):
        v = t.double().cpu().numpy().ravel()  # exact for fp32, bf16 and fp16
        fin = v[np.isfinite(v)]
        edges = hs.edges[i]
        where = f"{name} ({device}, {dtype}, {bins} bins)"
        expected = np.histogram(fin, bins=edges)[0]
        mismatch = np.flatnonzero(expected != hs.counts[i])
        assert mismatch.size == 0, (
            f"{where}: counts differ from numpy.histogram in bins {mismatch[:5].tolist()}: "
            f"{hs.counts[i][mismatch[:5]].tolist()} != {expected[mismatch[:5]].tolist()}"
        )
        assert hs.counts[i].sum() == fin.size, (
            f"{where}: {fin.size - hs.counts[i].sum()} finite values unbinned"
        )
        assert (hs.numel[i], hs.nonfinite[i]) == (v.size, v.size - fin.size), where
        w = edges[1] - edges[0]
        assert math.frexp(w)[0] == 0.5 and np.all(edges / w == np.round(edges / w)), (
            f"{where}: edges {edges[:3]}"
        )
        if fin.size == 0:
            assert np.isnan(hs.minimum[i]) and np.isnan(hs.maximum[i]), where
            continue
        assert (hs.minimum[i], hs.maximum[i]) == (fin.min(), fin.max()), where
        scale = float(np.abs(fin).sum())
        assert hs.sum[i] == pytest.approx(fin.sum(), rel=1e-5, abs=1e-6 * scale + 1e-30), where
        assert hs.sum_squares[i] == pytest.approx(np.sum(fin**2), rel=1e-4), where


@pytest.mark.parametrize("device", DEVICES)
def test_the_accelerator_engine_mixes_dtypes_and_skips_no_tensor(device, monkeypatch):
    """float64 and float32 tensors in one call (counted in groups of their own dtype), with a ``None``
    gradient and an empty tensor between them, by the accelerator engine (forced on the CPU)."""
    if device == "cpu":
        monkeypatch.setattr(stats, "_on_cpu", lambda xs: False)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3000, generator=g, dtype=torch.float64) * 1e-3
    a[10] = math.nan
    b = torch.randn(5000, generator=g)
    c = torch.randn(700, generator=g, dtype=torch.float64) + 1e6  # a narrow range far from zero
    ts = [a.to(device), None, b.to(device), torch.empty(0, device=device), c.to(device)]
    hs, failed = stats.histogram_set(ts, ["a", "none", "b", "empty", "c"], 32)
    assert not failed
    for i, t in [(0, a), (2, b), (4, c)]:
        v = t.double().numpy()
        fin = v[np.isfinite(v)]
        assert np.array_equal(hs.counts[i], np.histogram(fin, bins=hs.edges[i])[0]), hs.names[i]
        assert hs.nonfinite[i] == v.size - fin.size and hs.numel[i] == v.size
        assert hs.sum[i] == pytest.approx(fin.sum(), rel=1e-9)
        assert hs.sum_squares[i] == pytest.approx(np.sum(fin**2), rel=1e-9)
    for i in (1, 3):
        assert hs.counts[i].sum() == 0 and hs.nonfinite[i] == 0

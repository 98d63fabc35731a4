"""Tensor statistics and exact histograms, computed on the tensor's own device.

The histogram engine is built for the logging step of a training loop:

* two passes over memory: one for min/max (``aminmax``), then one that reads each cache-sized chunk once and,
  while it is in cache, sums it, squares it and counts it (no tensor-sized temporaries); on the CPU small
  tensors are counted together in one batch and the work is shared by ``CPU_WORKERS`` threads (the CPU
  engine is :mod:`lightning_viz.core.cpu_histograms`); on an accelerator the tensors are cut into groups
  and every per-tensor quantity is one segmented reduction per group, a few kernels for all the tensors
  rather than a dozen for each (:mod:`lightning_viz.core.device_histograms`);
* bin widths are powers of two and edges are multiples of the width, so ``floor(x / width)`` is exact in
  floating point: counts equal ``numpy.histogram`` on the same edges, bit for bit, and edges stay put from
  one step to the next (the evolution figures line up);
* non-finite values are counted, never silently dropped; the histogram covers the finite values;
* across ranks (DDP, FSDP2 shards) the global min/max take one MAX all-reduce and counts, sums and
  non-finite tallies one SUM all-reduce, through :mod:`lightning_viz.core.distributed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from lightning_viz.core import cpu_histograms, device_histograms, distributed, sharding
from lightning_viz.core.cpu_histograms import cpu_counts, cpu_threads, map_cpu


@dataclass
class HistogramSet:
    """Histograms and statistics of a list of tensors, as plain host data.

    Attributes:
        names: one name per tensor.
        edges: ``[P, bins + 1]`` float64 bin edges (the last bin is closed, as in numpy).
        counts: ``[P, bins]`` int64 counts of the finite values.
        numel: ``[P]`` elements of each full tensor.
        nonfinite: ``[P]`` NaN and infinite values of each tensor.
        minimum: ``[P]`` smallest finite value (NaN when there is none).
        maximum: ``[P]`` largest finite value (NaN when there is none).
        sum: ``[P]`` sum of the finite values.
        sum_squares: ``[P]`` sum of squares of the finite values.
    """

    names: list[str]
    edges: np.ndarray
    counts: np.ndarray
    numel: np.ndarray
    nonfinite: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    sum: np.ndarray
    sum_squares: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def finite(self) -> np.ndarray:
        return self.numel - self.nonfinite

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.finite > 0, self.sum / np.maximum(self.finite, 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        n = np.maximum(self.finite, 1)
        var = np.maximum(self.sum_squares / n - self.mean**2, 0.0)
        return np.where(self.finite > 0, np.sqrt(var), np.nan)

    @property
    def norm(self) -> np.ndarray:
        return np.sqrt(self.sum_squares)

    def index(self, name: str) -> int:
        return self.names.index(name)


def bin_plan(lo: float, hi: float, bins: int) -> tuple[float, int]:
    """Choose a power-of-two bin width ``w`` and offset ``k`` so that ``[k*w, (k+bins)*w]`` covers [lo, hi].

    Returns:
        ``(w, k)``: bin ``i`` is ``[(k+i)*w, (k+i+1)*w)``, the last one closed.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        lo = hi = 0.0
    span = hi - lo
    if span <= 0:  # constant tensor: a unit-wide range around it, like numpy's (v - 0.5, v + 0.5)
        span = max(1.0, abs(lo) * 2.0**-20)
    ratio = span / bins  # may underflow to 0 for subnormal spans: then the smallest width will do
    e = -126 if ratio <= 0 else max(-126, min(127, math.ceil(math.log2(ratio))))
    while True:
        w = 2.0**e
        k = math.floor(lo / w)
        if lo < k * w or (lo < 0 and k == 0):  # lo / w underflowed to -0.0 (tiny negative lo, wide range)
            k -= 1
        if math.floor(hi / w) - k < bins or e >= 127:
            return w, k
        e += 1


def edges_for(w: float, k: int, bins: int) -> np.ndarray:
    """Bin edges of a :func:`bin_plan` (exact in float64)."""
    return (np.arange(bins + 1, dtype=np.float64) + k) * w


def _as_float(t: torch.Tensor) -> torch.Tensor:
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.to(torch.float32)


def _on_cpu(xs: Sequence[torch.Tensor]) -> bool:
    """Whether the CPU engine counts ``xs`` (:mod:`cpu_histograms`); else :mod:`device_histograms` does."""
    return all(x.device.type == "cpu" for x in xs)


def histogram_set(
    tensors: Sequence[torch.Tensor | None],
    names: Sequence[str],
    bins: int,
    *,
    pooled: bool = False,
    failed: bool = False,
) -> tuple[HistogramSet, bool]:
    """Exact histograms and statistics of many tensors, reduced over every rank.

    Every rank must call this with the same names in the same order (each rank passes its own tensors:
    replicas under DDP, local shards under FSDP2). A tensor may be ``None`` (a parameter with no
    gradient this step); it then shows as empty. Costs two collectives when distributed, none otherwise.
    CPU tensors are processed with ``CPU_THREADS`` intra-op threads (see :func:`cpu_threads`), the tensors
    shared among ``CPU_WORKERS`` Python threads (see :func:`map_cpu`).

    Args:
        tensors: the tensors (plain or ``DTensor``), or ``None``.
        names: a name for each tensor.
        bins: number of bins per histogram (>= 2).
        pooled: every rank's plain tensors are its own data (activations of its batch), all counted;
            by default a plain tensor is a replica (DDP) and rank zero's counts alone.
        failed: this rank's capture failed: it still takes part in the collectives, and every rank is told.

    Returns:
        The histograms as host data, and whether the computation failed on some rank (then the
        result is empty and should be skipped).
    """
    tensors = list(tensors)
    on_cpu = all(t is None or t.device.type == "cpu" for t in tensors)
    with cpu_threads(cpu_histograms.CPU_THREADS) if on_cpu else nullcontext():
        return _histogram_set(tensors, names, bins, pooled, failed)


def _histogram_set(
    tensors: Sequence[torch.Tensor | None],
    names: Sequence[str],
    bins: int,
    pooled: bool = False,
    failed: bool = False,
) -> tuple[HistogramSet, bool]:
    """The work of :func:`histogram_set` (which sets the thread count around it)."""
    names = list(names)
    p = len(names)
    locals_: list[torch.Tensor | None] = []
    contrib: list[bool] = []
    numel = np.zeros(p)
    for t in tensors:
        if t is None:
            locals_.append(None)
            contrib.append(False)
            continue
        local, c = sharding.local_view(t)
        locals_.append(_as_float(local.detach()).reshape(-1))
        contrib.append(c or (pooled and not sharding.is_sharded(t)))

    ref = next((t for t in locals_ if t is not None), None)
    dev = distributed.collective_device(ref)
    mins = np.full(p, math.inf)  # host arrays: set element by element below (a tensor's costs ~us each)
    maxs = np.full(p, -math.inf)
    nonfinite = np.zeros(p)
    finite_parts: dict[int, torch.Tensor] = {}
    try:
        present = [i for i, t in enumerate(locals_) if t is not None and t.numel() > 0]
        if present:
            xs = [locals_[i] for i in present]
            if _on_cpu(xs):
                pairs = map_cpu(lambda x: torch.stack(torch.aminmax(x)), xs, [x.numel() for x in xs])
                mm = torch.stack(pairs).to(torch.float64)
            else:
                mm = device_histograms.ranges(xs)
            host_mm = mm.cpu().numpy()  # one small host copy: which tensors hold non-finite values
            for row, i in enumerate(present):
                lo, hi = float(host_mm[row, 0]), float(host_mm[row, 1])
                if math.isfinite(lo) and math.isfinite(hi):
                    mins[i], maxs[i] = lo, hi
                    continue
                x = locals_[i]
                assert x is not None
                keep = x[torch.isfinite(x)]
                finite_parts[i] = keep
                if contrib[i]:  # counted where numel is: replicas once
                    nonfinite[i] = x.numel() - keep.numel()
                if keep.numel():
                    a, b = torch.aminmax(keep)
                    mins[i], maxs[i] = float(a), float(b)
        for i, x in enumerate(locals_):
            if x is not None and contrib[i]:
                numel[i] = x.numel()  # local shard sizes sum to the full size; replicas count once
    except Exception:
        failed = True
        mins.fill(math.inf)
        maxs.fill(-math.inf)
    red, any_failed = distributed.reduce_values(
        {"min": torch.from_numpy(mins), "max": torch.from_numpy(maxs)},
        {"min": "min", "max": "max"},
        failed=failed,
        device=dev,
    )
    lo_all = red["min"].cpu().numpy()
    hi_all = red["max"].cpu().numpy()

    edges = np.zeros((p, bins + 1))
    counts = torch.zeros((p, bins), dtype=torch.float64, device=dev)
    sums = torch.zeros(p, dtype=torch.float64, device=dev)
    sumsq = torch.zeros(p, dtype=torch.float64, device=dev)
    try:
        if any_failed:
            raise RuntimeError("skipped: failed on some rank")
        plans = [bin_plan(float(lo_all[i]), float(hi_all[i]), bins) for i in range(p)]
        for i in range(p):
            edges[i] = edges_for(plans[i][0], plans[i][1], bins)
        work = [
            (i, finite_parts.get(i, locals_[i])) for i in range(p) if contrib[i] and locals_[i] is not None
        ]
        work = [(i, x) for i, x in work if x is not None and x.numel() > 0]
        if work:
            xs = [x for _, x in work]
            idx = torch.tensor([i for i, _ in work])
            if _on_cpu(xs):
                c, sm, sq = cpu_counts(xs, [plans[i] for i, _ in work], bins)
                counts = counts.cpu().index_copy(0, idx, c.to(torch.float64)).to(dev)
                for j, (i, x) in enumerate(work):  # float32 squares overflow past |x| ~ 1.8e19: float64
                    if max(abs(lo_all[i]), abs(hi_all[i])) > 1e18:
                        sq[j] = torch.linalg.vector_norm(x.to(torch.float64)).to(sq.device) ** 2
            else:  # a few kernels for all the tensors, sums in float64 (device_histograms)
                c, sm, sq = device_histograms.counts(xs, [plans[i] for i, _ in work], bins)
                counts = counts.index_copy(0, idx.to(counts.device), c.to(counts.device))
            idx = idx.to(sq.device)
            sumsq = sumsq.to(sq.device).index_copy(0, idx, sq)
            sums = sums.to(sq.device).index_copy(0, idx, sm)
    except Exception:
        failed = True
    red2, any_failed2 = distributed.reduce_values(
        {
            "counts": counts,
            "sum": sums.to(dev),
            "sumsq": sumsq.to(dev),
            "nonfinite": torch.from_numpy(nonfinite).to(dev),
            "numel": torch.as_tensor(numel, dtype=torch.float64, device=dev),
        },
        {"counts": "sum", "sum": "sum", "sumsq": "sum", "nonfinite": "sum", "numel": "sum"},
        failed=failed,
        device=dev,
    )
    host = {k: v.detach().cpu().numpy() for k, v in red2.items()}  # the one host copy of the counts
    finite_range = np.isfinite(lo_all) & np.isfinite(hi_all) & (lo_all <= hi_all)
    result = HistogramSet(
        names=names,
        edges=edges,
        counts=np.rint(host["counts"]).astype(np.int64),
        numel=np.rint(host["numel"]).astype(np.int64),
        nonfinite=np.rint(host["nonfinite"]).astype(np.int64),
        minimum=np.where(finite_range, lo_all, np.nan),
        maximum=np.where(finite_range, hi_all, np.nan),
        sum=host["sum"],
        sum_squares=host["sumsq"],
    )
    return result, bool(any_failed or any_failed2)

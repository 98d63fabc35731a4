"""The CPU engine behind :func:`lightning_viz.core.stats.histogram_set`: chunked, batched, threaded counting.

On the CPU a histogram is memory-bound: each cache-sized chunk (``CPU_CHUNK``) is read once and, while it is
in cache, summed, squared and counted; tensors below ``CPU_BATCH_BELOW`` elements are counted together in
one batch; the work is shared by ``CPU_WORKERS`` Python threads (:func:`map_cpu`) with ``CPU_THREADS``
intra-op threads each (:func:`cpu_threads`). The histogram contract (edges, exact counts, NaN/Inf) is
:mod:`lightning_viz.core.stats`'s; this module only computes it fast on the CPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

CPU_CHUNK = 1 << 18  # elements per chunk on the CPU: fits in L2/L3, keeps temporaries hot
CPU_BATCH_BELOW = 1 << 16  # CPU float32 tensors smaller than this are binned together, in one batch
MAX_EXACT_CHUNK = 1 << 24  # float32 counts are exact below this
CPU_THREADS = 1  # intra-op threads for the CPU histogram work (see `cpu_threads`)
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CPU_WORKERS = 2 if _CPUS >= 2 else 1  # Python threads sharing the CPU work (see `map_cpu`)
CPU_PARALLEL_ABOVE = 1 << 20  # elements: below this the work stays on the caller's thread

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def map_cpu(fn: Callable, items: Sequence, sizes: Sequence[int]) -> list:
    """``[fn(item) for item in items]``, shared by ``CPU_WORKERS`` threads, largest items first.

    The caller's thread works too; the others come from a small persistent pool. Every thread takes the
    next largest item left, so a thread slowed by a busy core simply takes fewer items (no barrier waits
    for it, unlike intra-op threads: see :func:`cpu_threads`). torch releases the GIL inside its kernels,
    so the threads' kernels overlap (``make bench`` measures what that gives). An exception in ``fn`` is
    raised in the caller once every thread has stopped.
    """
    global _pool
    order = sorted(range(len(items)), key=lambda j: -sizes[j])
    results: list = [None] * len(items)
    workers = min(CPU_WORKERS, len(items))
    if workers <= 1 or sum(sizes) < CPU_PARALLEL_ABOVE:
        for j in order:
            results[j] = fn(items[j])
        return results
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=CPU_WORKERS - 1, thread_name_prefix="lightning-viz-stats")
        pool = _pool
    queue = iter(order)
    lock = threading.Lock()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            with lock:
                j = next(queue, None)
            if j is None:
                return
            try:
                results[j] = fn(items[j])
            except BaseException:
                stop.set()
                raise

    futures = [pool.submit(drain) for _ in range(workers - 1)]
    try:
        drain()
    finally:
        errors = [f.exception() for f in futures]  # waits for every helper thread
    for e in errors:
        if e is not None:
            raise e
    return results


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (then restore the caller's setting).

    The histogram work on the CPU is many small cache-resident operations; with several OpenMP threads each
    one ends at a barrier, and when the cores are shared with anything else (data-loader workers, other
    jobs) a descheduled thread stalls every barrier: a resnet50 logging step measured 4-7 s with 2 threads
    against 0.4 s with 1 on a busy 2-core machine. One thread is never much slower and never stalls.
    """
    old = torch.get_num_threads()
    if n <= 0 or old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def index_dtype(max_abs_index: int) -> torch.dtype:
    """int32 when every bin index fits (the usual case: half the memory traffic), else int64."""
    return torch.int32 if max_abs_index < 2**31 else torch.int64


PAIR_BINS_MAX = 128  # up to this many bins, values are counted two at a time (see `count_chunked`)


def count_chunked(flat: torch.Tensor, w: float, k: int, bins: int) -> tuple[torch.Tensor, float, float]:
    """Counts, sum and sum of squares of the finite 1-D CPU tensor ``flat`` in one pass over memory.

    Each ``CPU_CHUNK`` is read from memory once; while it is in cache it is summed, dotted with itself and
    binned: multiply by ``1 / w`` (exact), floor, subtract ``k`` (exact: integers), convert to the smallest
    integer type that holds the indices and count. No clamp is needed: every finite value lies in
    ``[k*w, (k+bins)*w)`` by construction of :func:`~lightning_viz.core.stats.bin_plan` (min and max come
    from the same values, and ``floor`` of an exact power-of-two scaling is monotonic); an index outside
    ``[0, bins)`` raises instead of miscounting.

    Counting is ``bincount``, a serial loop whose every step adds one to a counter; with few bins the same
    counter comes back step after step and each addition waits for the previous one. Up to
    ``PAIR_BINS_MAX`` bins, values are therefore counted as pairs (the first half of a chunk with its second
    half): ``bins * a + b`` indexes a ``bins x bins`` table, half as many steps spread over many counters,
    and the counts are the table's row sums plus its column sums.

    Returns:
        ``[bins]`` int64 counts, the sum and the sum of squares (float32 sums of each chunk, added in float64).
    """
    n = flat.numel()
    pairs = bins <= PAIR_BINS_MAX
    total = torch.zeros(bins * bins if pairs else bins, dtype=torch.int64)
    single = torch.zeros(bins, dtype=torch.int64)  # the last value of an odd-length tensor, unpaired
    if n == 0:
        return single, 0.0, 0.0
    inv = 1.0 / w
    m = min(CPU_CHUNK, n)
    buf = torch.empty(m, dtype=flat.dtype)
    ibuf = torch.empty(m, dtype=torch.int16 if pairs else index_dtype(abs(k) + bins))
    pbuf = torch.empty(m // 2, dtype=torch.int16)  # bins * a + b < 128 * 128
    # With w > 2, a negative value of tiny magnitude can make x * (1 / w) underflow to -0.0, whose floor is 0,
    # not -1: then (and only then) correct those values explicitly.
    fix_underflow = w > 2.0 and k < 0
    sums: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []
    for start in range(0, n, m):
        piece = flat[start : start + m]
        b = buf[: piece.numel()]
        torch.mul(piece, inv, out=b)  # the one read from memory; the rest works on cached data
        sums.append(piece.sum())
        squares.append(torch.dot(piece, piece))
        b.floor_()
        if fix_underflow:
            b.sub_(((b == 0) & (piece < 0)).to(b.dtype))
        b.sub_(k)  # integers: exact
        i = ibuf[: piece.numel()]
        i.copy_(b)
        if not pairs:
            counts = torch.bincount(i, minlength=bins)
            if counts.numel() != bins:  # a value outside the planned range: never a silent miscount
                raise RuntimeError(f"histogram index out of range ({counts.numel()} > {bins} bins)")
            total += counts
            continue
        lo, hi = (int(v) for v in torch.aminmax(i))
        if lo < 0 or hi >= bins:  # a value outside the planned range: never a silent miscount
            raise RuntimeError(f"histogram index out of range ([{lo}, {hi}] for {bins} bins)")
        half = i.numel() // 2
        if i.numel() % 2:
            single[int(i[-1])] += 1
        pair = pbuf[:half]
        torch.add(
            i[half : 2 * half], i[:half], alpha=bins, out=pair
        )  # contiguous halves: any pairing will do
        total += torch.bincount(pair, minlength=bins * bins)
    if pairs:
        grid = total.view(bins, bins)  # grid[a, b]: pairs whose first value is in bin a, second in bin b
        single += grid.sum(0) + grid.sum(1)
    else:
        single += total
    s = float(torch.stack(sums).to(torch.float64).sum())
    sq = float(torch.stack(squares).to(torch.float64).sum())
    return single, s, sq


def _cpu_count_batch(
    xs: Sequence[torch.Tensor], plans: Sequence[tuple[float, int]], bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts, sums and sums of squares of many small finite 1-D float32 CPU tensors in a few passes.

    The tensors are concatenated and binned together: each value is multiplied by its own tensor's
    ``1 / w`` (exact), floored, and offset to its tensor's block of ``bins`` counters, so one ``bincount``
    counts them all. This removes the per-tensor overhead of a dozen small operations, which dominates
    for biases and normalization weights (a resnet50 has 238 tensors under 64k elements).

    Returns:
        ``[len(xs), bins]`` int64 counts, and ``[len(xs)]`` float64 sums and sums of squares.
    """
    p = len(xs)
    flat = torch.cat(list(xs))
    lengths = torch.tensor([x.numel() for x in xs])
    inv = torch.tensor([1.0 / w for w, _ in plans], dtype=flat.dtype)
    ks = [k for _, k in plans]
    dtype = index_dtype(max(abs(k) for k in ks) + p * bins)
    offsets = torch.arange(p, dtype=torch.int64) * bins - torch.tensor(ks, dtype=torch.int64)
    b = flat * torch.repeat_interleave(inv, lengths)
    b.floor_()
    if any(w > 2.0 and k < 0 for w, k in plans):  # see count_chunked: -0.0 from an underflow
        b.sub_(((b == 0) & (flat < 0)).to(b.dtype))
    i = b.to(dtype)
    i.add_(torch.repeat_interleave(offsets.to(dtype), lengths))
    counts = torch.bincount(i, minlength=p * bins)
    if counts.numel() != p * bins:  # a value outside the planned range: never a silent miscount
        raise RuntimeError(f"histogram index out of range ({counts.numel()} > {p * bins} bins)")
    sums = torch.segment_reduce(flat, "sum", lengths=lengths).to(torch.float64)
    squares = torch.segment_reduce(flat * flat, "sum", lengths=lengths).to(torch.float64)
    return counts.reshape(p, bins), sums, squares


def cpu_counts(
    xs: Sequence[torch.Tensor], plans: Sequence[tuple[float, int]], bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts, sums and sums of squares of finite 1-D CPU tensors: small float32 ones batched, others chunked.

    Returns:
        ``[len(xs), bins]`` int64 counts, and ``[len(xs)]`` float64 sums and sums of squares.
    """
    counts = torch.zeros((len(xs), bins), dtype=torch.int64)
    sums = torch.zeros(len(xs), dtype=torch.float64)
    squares = torch.zeros(len(xs), dtype=torch.float64)
    small = [j for j, x in enumerate(xs) if x.numel() < CPU_BATCH_BELOW and x.dtype == torch.float32]
    chosen = set(small)
    large = [j for j in range(len(xs)) if j not in chosen]

    def work(item: int | None) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor | float]:
        if item is None:  # the batch of small tensors
            return _cpu_count_batch([xs[j] for j in small], [plans[j] for j in small], bins)
        return count_chunked(xs[item], plans[item][0], plans[item][1], bins)

    items: list[int | None] = ([None] if small else []) + large
    sizes = [sum(xs[j].numel() for j in small)] * bool(small) + [xs[j].numel() for j in large]
    for item, (c, s, q) in zip(items, map_cpu(work, items, sizes)):
        if item is None:
            idx = torch.tensor(small)
            counts[idx], sums[idx], squares[idx] = c, torch.as_tensor(s), torch.as_tensor(q)
        else:
            counts[item], sums[item], squares[item] = c, s, q
    return counts, sums, squares

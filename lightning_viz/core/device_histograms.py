"""The accelerator engine behind :func:`lightning_viz.core.stats.histogram_set`: a few kernels per group.

On a GPU a histogram of many tensors is bound by kernel launches, not by memory: resnet50 has 322
parameters and gradients, and a dozen small kernels for each cost far more than reading their 204 MB
(``make gpu-check`` measured it). Nor can a per-tensor reduction be an atomic segmented one: millions of
values adding into one address serialise. So the tensors are laid out in groups of at most ``GROUP``
elements, each tensor (or piece of a large one) padded to whole rows of ``ROW`` values, and every
per-tensor quantity is a dense row-wise reduction over a ``[rows, ROW]`` view of the group, followed by a
small combination of the rows of each tensor:

- :func:`ranges`: ``aminmax`` over rows (each piece padded with its own first value), combined on the host
  with the one host copy the bin plan needs;
- :func:`counts`: one ``histc`` per group over the bins of all its pieces (pieces padded with NaN, which
  ``histc`` skips; under ``torch.use_deterministic_algorithms``, where CUDA's ``histc`` has no
  deterministic implementation, an ``index_add_`` of ones instead), and row sums of the values and their
  squares in float64.

Bins are those of :func:`~lightning_viz.core.stats.bin_plan` (power-of-two widths), so ``floor(x / w)``
gives every value the bin that comparisons with the edges would; the bin index goes to ``histc`` as its
bin's centre, so that no rounding inside ``histc`` can move it. Counts of one ``histc`` call stay below
``GROUP`` (exact in float32). The tensors given to :func:`counts` must be finite (``histogram_set`` takes
the finite values of the others first). Every operation also runs on the CPU (where
:mod:`~lightning_viz.core.cpu_histograms` is faster), which is how the tests check it against numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

ROW = 1024  # values per row: a piece of a tensor is padded to whole rows
GROUP = 1 << 22  # values per group (a multiple of ROW): bounds the temporaries and the counts per histc

Piece = tuple[int, int, int]  # (index of the tensor in its kind, start, length)


def _kinds(xs: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    kinds: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for j, x in enumerate(xs):
        kinds.setdefault((x.device, x.dtype), []).append(j)
    return kinds


def _rows(n: int) -> int:
    return -(-n // ROW)


def _groups(sizes: Sequence[int]) -> list[list[Piece]]:
    """Tensors of these sizes cut into groups of pieces, each group at most ``GROUP`` values once its
    pieces are padded to whole rows; a tensor's pieces, and so its rows, are consecutive."""
    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    room = GROUP
    for j, n in enumerate(sizes):
        start = 0
        while start < n:
            take = min(n - start, room)
            cur.append((j, start, take))
            start += take
            room -= _rows(take) * ROW
            if room == 0:
                groups.append(cur)
                cur, room = [], GROUP
    if cur:
        groups.append(cur)
    return groups


def _layout(xs: Sequence[torch.Tensor], pieces: list[Piece], pad: torch.Tensor | None) -> torch.Tensor:
    """The group's values as a ``[rows, ROW]`` tensor, each piece padded with ``pad`` (a one-value
    tensor) or, when ``pad`` is None, with the piece's own first value."""
    parts: list[torch.Tensor] = []
    for j, start, n in pieces:
        piece = xs[j][start : start + n]
        parts.append(piece)
        extra = _rows(n) * ROW - n
        if extra:
            parts.append((piece[:1] if pad is None else pad).expand(extra))
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(-1, ROW)


def ranges(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The minimum and maximum of each non-empty flat float tensor, as a ``[len(xs), 2]`` float64 CPU
    tensor (NaN or infinite where the tensor holds non-finite values); one host copy per device and dtype."""
    out = torch.empty((len(xs), 2), dtype=torch.float64)
    for members in _kinds(xs).values():
        kind = [xs[j] for j in members]
        rows_lo: list[torch.Tensor] = []
        rows_hi: list[torch.Tensor] = []
        for pieces in _groups([x.numel() for x in kind]):
            lo, hi = torch.aminmax(_layout(kind, pieces, None), dim=1)
            rows_lo.append(lo)
            rows_hi.append(hi)
        both = torch.stack([torch.cat(rows_lo), torch.cat(rows_hi)]).cpu().to(torch.float64).numpy()
        starts = np.cumsum([0] + [_rows(x.numel()) for x in kind[:-1]])
        with np.errstate(invalid="ignore"):
            lo_t = np.minimum.reduceat(both[0], starts)  # NaN propagates, as aminmax's does
            hi_t = np.maximum.reduceat(both[1], starts)
        out[members] = torch.from_numpy(np.stack([lo_t, hi_t], 1))
    return out


def counts(
    xs: Sequence[torch.Tensor], plans: Sequence[tuple[float, int]], bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact histograms of the finite, non-empty flat float tensors ``xs`` on the bin plans ``(w, k)`` (bin
    ``i`` is ``[(k+i)*w, (k+i+1)*w)``, the last one closed; every value lies in ``[k*w, (k+bins)*w]``).

    Returns:
        ``(counts [n, bins], sums [n], sums of squares [n])``, float64, on the device of ``xs[0]``.
    """
    home = xs[0].device
    out_counts = torch.empty((len(xs), bins), dtype=torch.float64, device=home)
    out_sums = torch.empty((len(xs), 2), dtype=torch.float64, device=home)
    deterministic = torch.are_deterministic_algorithms_enabled()
    for (dev, dtype), members in _kinds(xs).items():
        kind = [xs[j] for j in members]
        groups = _groups([x.numel() for x in kind])
        n_pieces = sum(len(g) for g in groups)
        # per row: 1/w and k of its tensor (exact in the tensors' own dtype: see stats.bin_plan), the first
        # bin of its piece within its group's histc, and its tensor; one host-to-device copy
        meta = np.zeros((4, sum(_rows(n) for g in groups for _, _, n in g)))
        piece_of = np.zeros(n_pieces, dtype=np.int64)
        r = p = 0
        for g in groups:
            for q, (j, _, n) in enumerate(g):
                w, k = plans[members[j]]
                meta[:, r : r + _rows(n)] = np.array([1.0 / w, k, q * bins, j])[:, None]
                piece_of[p] = j
                r += _rows(n)
                p += 1
        meta_d = torch.from_numpy(meta).to(dev, non_blocking=True)
        inv, offset, first = (meta_d[i].to(dtype).unsqueeze(1) for i in range(3))
        row_of = meta_d[3].to(torch.int64)
        nan = torch.full((1,), math.nan, dtype=dtype, device=dev)
        piece_counts: list[torch.Tensor] = []
        row_sums: list[torch.Tensor] = []
        r = 0
        for g in groups:
            data = _layout(kind, g, nan)
            rows = data.shape[0]
            d64 = data.to(torch.float64)  # data itself when it is float64: not changed in place
            row_sums.append(torch.stack([d64.nansum(1), torch.square(d64).nansum(1)], 1))
            del d64
            b = torch.mul(data, inv[r : r + rows]).floor_()
            b.sub_(((b == 0) & (data < 0)).to(b.dtype))  # x / w underflowed to -0.0: its floor is -1
            b.sub_(offset[r : r + rows]).clamp_(0, bins - 1).add_(first[r : r + rows])  # NaN pads stay NaN
            total = len(g) * bins
            if deterministic:
                keep = ~torch.isnan(b)
                hist = torch.zeros(total + 1, dtype=torch.int64, device=dev)
                idx = torch.where(keep, b, total).to(torch.int64).reshape(-1)
                hist.index_add_(0, idx, torch.ones_like(idx))
                hist = hist[:total]
            else:
                hist = torch.histc(b.add_(0.5), bins=total, min=0, max=total)
            piece_counts.append(hist.view(len(g), bins).to(torch.float64))
            del b
            r += rows
        idx = torch.tensor(members, device=home)
        per_tensor = torch.zeros((len(kind), bins), dtype=torch.float64, device=dev)
        per_tensor.index_add_(0, torch.from_numpy(piece_of).to(dev), torch.cat(piece_counts))
        sums = torch.zeros((len(kind), 2), dtype=torch.float64, device=dev)
        sums.index_add_(0, row_of, torch.cat(row_sums))
        out_counts.index_copy_(0, idx, per_tensor.to(home))
        out_sums.index_copy_(0, idx, sums.to(home))
    return out_counts, out_sums[:, 0], out_sums[:, 1]

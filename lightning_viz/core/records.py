"""What a capture hands to the reduce phase, and the reduction each kind of record declares.

A callback's capture returns one of these on every rank; :class:`~lightning_viz.core.base.VizCallback`
reduces it (:meth:`Captured.reduce`, the same collectives on every rank) and hands the result to the
callback's ``keep`` (every rank) and ``render`` (rank 0). Three kinds cover the suite:

* :class:`Sums`: tensors of fixed shapes whose fields combine as declared, the way torchmetrics declares
  ``dist_reduce_fx`` (``{"sums": "sum", "flags": "max"}``): one :func:`~lightning_viz.core.distributed.
  reduce_values` call, at most two collectives. A rank whose capture failed passes placeholders of the same
  shapes and ``failed=True``; the record is then skipped on every rank.
* :class:`PerRank`: a few values of each rank, gathered apart (one all-gather): per-rank views.
* :class:`Tensors`: tensors whose exact histograms are the record (the histogram contract of
  :mod:`~lightning_viz.core.stats`: one shared bin plan, counts summed over ranks; two collectives), with
  the loss scale gradients may still carry taken out (:mod:`~lightning_viz.core.precision`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_viz.core import precision, stats
from lightning_viz.core.distributed import Reduction, gather_rows, reduce_values


@dataclass
class Reduced:
    """A record after the reduce phase: identical on every rank (``rank0`` fields excepted).

    Attributes:
        step: the global step it was captured at.
        values: the reduced data (host tensors for :class:`Sums`; a ``HistogramSet`` for :class:`Tensors`).
        meta: what the capture kept beside the values on this rank (not reduced).
    """

    step: int
    values: Any
    meta: Any = None


class Captured:
    """A capture's result on one rank, before the reduce phase."""

    step: int
    failed: bool

    def reduce(self) -> Reduced | None:
        """Combine across ranks (every rank calls it, in the same order); ``None`` when the capture failed
        on some rank (then every rank skips it)."""
        raise NotImplementedError


@dataclass
class Sums(Captured):
    """Tensors of fixed shapes (the same on every rank) and how each field combines across ranks.

    Attributes:
        step: the global step of the capture.
        values: field -> tensor.
        reductions: field -> ``"sum"``, ``"mean"``, ``"max"``, ``"min"`` or ``"rank0"``.
        failed: this rank's capture failed (``values`` are placeholders of the right shapes).
        meta: plain data kept beside (not reduced).
    """

    step: int
    values: Mapping[str, torch.Tensor]
    reductions: Mapping[str, Reduction]
    failed: bool = False
    meta: Any = None

    def reduce(self) -> Reduced | None:
        red, failed = reduce_values(self.values, self.reductions, failed=self.failed)
        if failed:
            return None
        return Reduced(self.step, {k: v.cpu() for k, v in red.items()}, self.meta)


@dataclass
class Tensors(Captured):
    """Tensors whose exact histograms (``bins`` bins, NaN/Inf counted) the record is.

    Attributes:
        step: the global step of the capture.
        names: one name per tensor (the same names, in the same order, on every rank).
        tensors: the rank's tensors (replicas, or local shards), or ``None`` for an empty one.
        bins: bins per histogram.
        scales: per tensor, the loss scale its values still carry, or ``None``; ``None`` for all.
        meta: plain data kept beside (not reduced).
        pooled: each rank's tensors are its own data (the activations of its batch), pooled over the ranks;
            otherwise plain tensors are replicas (parameters under DDP), counted once.
    """

    step: int
    names: list[str]
    tensors: list[torch.Tensor | None]
    bins: int
    scales: list[float | None] | None = None
    meta: Any = None
    failed: bool = field(default=False)
    pooled: bool = False

    def reduce(self) -> Reduced | None:
        if self.scales is None or all(s is None for s in self.scales):
            hs, failed = stats.histogram_set(
                self.tensors, self.names, self.bins, pooled=self.pooled, failed=self.failed
            )
        else:
            hs, failed = precision.histogram_set(self.tensors, self.names, self.bins, self.scales)
        if failed:
            return None
        return Reduced(self.step, hs, self.meta)


@dataclass
class PerRank(Captured):
    """One value per field on each rank, kept apart: the reduce phase gathers every rank's (one all-gather).

    Attributes:
        step: the global step of the capture.
        names: the fields, in the same order on every rank.
        values: ``[len(names)]`` float tensor of this rank (NaN where a field has no value).
        failed: this rank's capture failed (``values`` are placeholders of the right shape).
    """

    step: int
    names: list[str]
    values: torch.Tensor
    failed: bool = False

    def reduce(self) -> Reduced | None:
        rows, failed = gather_rows(self.values, failed=self.failed)
        if failed:
            return None
        return Reduced(self.step, {"names": list(self.names), "rows": rows.numpy()})


@dataclass
class SumsAndRows(Captured):
    """A :class:`Sums` record and, beside it, one row of each rank gathered apart (one all-gather): fixed
    fields plus per-rank candidates the render picks from (the worst examples of each rank's data).

    Attributes:
        sums: the fixed fields.
        row: this rank's ``[F]`` float row (the same length on every rank).
    """

    sums: Sums
    row: torch.Tensor
    step: int = 0
    failed: bool = False

    def reduce(self) -> Reduced | None:
        red, failed = reduce_values(
            self.sums.values, self.sums.reductions, failed=self.failed or self.sums.failed
        )
        rows, failed_rows = gather_rows(self.row, failed=failed)
        if failed or failed_rows:
            return None
        return Reduced(self.sums.step, {**{k: v.cpu() for k, v in red.items()}, "rows": rows}, self.sums.meta)

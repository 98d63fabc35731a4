"""A parameter's histogram history over training, thinned evenly, in arrays allocated once.

:class:`HistogramSeries` keeps one parameter's snapshots (step, bin grid ``k``/``w``, counts, NaN/Inf
count) for the evolution figures of WeightHistogramCallback: recording allocates nothing that lives on,
the history is thinned to ``max_history`` keeping the first and the latest, and it round-trips through a
checkpoint (:meth:`HistogramSeries.state`, :meth:`HistogramSeries.from_state`).
:func:`record_histograms` appends a capture's histograms to their series, and :func:`evolution_params`
turns a selection's series into the plain data behind its figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from lightning_viz.core.stats import HistogramSet

FIELDS = ("steps", "index", "k", "w", "counts", "nonfinite")


class HistogramSeries:
    """One parameter's thinned history, in arrays allocated (and touched) once for ``max_history + 1``
    snapshots and written in place: recording a capture allocates nothing that lives on, and the memory a
    full history needs is taken at the first capture instead of creeping up while the history fills."""

    def __init__(self, capacity: int, bins: int) -> None:
        self.n = 0  # snapshots kept
        self.seen = 0  # captures ever appended (the thinning grid counts these)
        self.stride = 1
        self.steps = np.full(capacity, 0, dtype=np.int64)
        self.index = np.full(capacity, 0, dtype=np.int64)
        self.k = np.full(capacity, 0, dtype=np.int64)
        self.w = np.full(capacity, 0.0, dtype=np.float64)
        self.counts = np.full((capacity, bins), 0, dtype=np.int64)
        self.nonfinite = np.full(capacity, 0, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return len(self.steps)

    def arrays(self) -> dict[str, np.ndarray]:
        """The kept snapshots (views), by field."""
        return {key: getattr(self, key)[: self.n] for key in FIELDS}

    def append(
        self, step: int, k: int, w: float, counts: np.ndarray, nonfinite: int, max_history: int
    ) -> None:
        """Add a snapshot and thin evenly: keep snapshots whose capture index is a multiple of a stride
        that doubles whenever more than ``max_history`` are kept, plus always the first and the latest."""
        while self.n and self.steps[self.n - 1] >= step:  # a resumed run went back in time
            self.n -= 1
        if self.n and self.index[self.n - 1] % self.stride:  # the previous "latest" was off the grid
            self.n -= 1
        j = self.n
        self.steps[j], self.index[j], self.k[j], self.w[j] = step, self.seen, k, w
        self.counts[j] = counts
        self.nonfinite[j] = nonfinite
        self.n += 1
        self.seen += 1
        self.thin(max_history)

    def thin(self, max_history: int) -> None:
        while self.n > max_history:
            self.stride *= 2
            keep = np.flatnonzero(self.index[: self.n] % self.stride == 0)
            if keep.size == 0 or keep[-1] != self.n - 1:
                keep = np.append(keep, self.n - 1)
            for key in FIELDS:
                arr = getattr(self, key)
                arr[: keep.size] = arr[keep]
            self.n = int(keep.size)

    @classmethod
    def from_arrays(
        cls, fields: Mapping[str, np.ndarray], seen: int, stride: int, bins: int, max_history: int
    ) -> HistogramSeries:
        """A series from saved fields (equal lengths), thinned to ``max_history``."""
        n = len(fields["steps"])
        series = cls(max(n, max_history + 1), bins)
        for key in FIELDS:
            getattr(series, key)[:n] = fields[key]
        series.n, series.seen, series.stride = n, seen, stride
        series.thin(max_history)
        if series.capacity > max_history + 1:  # a longer saved history: back to the usual size
            small = cls(max_history + 1, bins)
            for key in FIELDS:
                getattr(small, key)[: series.n] = getattr(series, key)[: series.n]
            small.n, small.seen, small.stride = series.n, series.seen, series.stride
            series = small
        return series

    def state(self) -> dict[str, Any]:
        """The kept snapshots as tensors (one per field) with ``seen`` and ``stride``, for a checkpoint."""
        return {
            **{key: torch.from_numpy(arr.copy()) for key, arr in self.arrays().items()},
            "seen": int(self.seen),
            "stride": int(self.stride),
        }

    @classmethod
    def from_state(cls, saved: Mapping[str, Any], bins: int, max_history: int) -> HistogramSeries:
        """A series from :meth:`state` (tensors or arrays), thinned: ``max_history`` may be smaller than
        before.

        Raises:
            KeyError, TypeError, ValueError: a field is missing, or the fields are not rows of ``bins`` counts
                and lists of one length.
        """
        if np.ndim(saved["counts"]) != 2 or np.shape(saved["counts"])[1] != bins:
            raise ValueError(f"counts are not rows of {bins} bins")
        fields = {
            key: np.asarray(saved[key], dtype=np.float64 if key == "w" else np.int64).reshape(
                (-1, bins) if key == "counts" else (-1,)
            )
            for key in FIELDS
        }
        if len({len(v) for v in fields.values()}) != 1:
            raise ValueError("lists of unequal length")
        return cls.from_arrays(fields, int(saved["seen"]), int(saved["stride"]), bins, max_history)


def record_histograms(
    history: Mapping[str, dict[str, HistogramSeries]],
    hs: HistogramSet,
    step: int,
    bins: int,
    max_history: int,
) -> None:
    """Append each histogram of ``hs`` (tagged ``<selection>/<name>``) to its series in
    ``history[selection]``, started at the parameter's first capture; one of no values (no gradient this
    step) is skipped. The edges are kept as their grid: bin width ``w`` and ``k = edges[0] / w``."""
    for i, tag in enumerate(hs.names):
        sel, name = tag.split("/", 1)
        if hs.numel[i] == 0:  # no gradient this step
            continue
        edges = hs.edges[i]
        w = float(edges[1] - edges[0])
        series = history[sel].get(name)
        if series is None:
            series = history[sel][name] = HistogramSeries(max_history + 1, bins)
        series.append(step, round(edges[0] / w), w, hs.counts[i], int(hs.nonfinite[i]), max_history)


def evolution_params(
    history: Mapping[str, HistogramSeries], bins: int, compact: bool = False
) -> list[dict[str, Any]]:
    """Each parameter's kept snapshots as fresh arrays (safe to hand to another thread), in history order;
    a parameter with none is left out.

    Each has ``name``, ``numel``, ``steps``, ``nonfinite``, ``counts``, and ``edges``; with ``compact``,
    ``k`` and ``w`` (its edges are ``(k + arange(bins + 1)) * w``) instead of ``edges``, and int32 counts
    where they fit.
    """
    params = []
    for name, series in history.items():
        if not series.n:
            continue
        s = series.arrays()
        p = {
            "name": name,
            "numel": int(np.sum(s["counts"][-1]) + s["nonfinite"][-1]),
            "steps": s["steps"].copy(),
            "nonfinite": s["nonfinite"].copy(),
        }
        if compact:
            small = s["counts"].max(initial=0) < 2**31
            p.update(
                k=s["k"].copy(),
                w=s["w"].copy(),
                counts=s["counts"].astype(np.int32 if small else np.int64),
            )
        else:
            p["edges"] = (s["k"].astype(np.float64)[:, None] + np.arange(bins + 1)) * s["w"][:, None]
            p["counts"] = s["counts"].copy()
        params.append(p)
    return params


def histogram_items(hs: HistogramSet) -> list[tuple[str, np.ndarray, np.ndarray, dict[str, float]]]:
    """``(tag, edges, counts, stats)`` of each histogram with finite values, as the sinks take them
    (:meth:`~lightning_viz.core.base.VizCallback.emit_histograms`)."""
    items = []
    for i, tag in enumerate(hs.names):
        if hs.numel[i] > 0 and hs.finite[i] > 0:
            st = {
                "min": float(hs.minimum[i]),
                "max": float(hs.maximum[i]),
                "num": float(hs.finite[i]),
                "sum": float(hs.sum[i]),
                "sum_squares": float(hs.sum_squares[i]),
            }
            items.append((tag, hs.edges[i], hs.counts[i], st))
    return items


def evolution_arrays(params: list[dict[str, Any]], title: str | None = None) -> dict[str, np.ndarray]:
    """The NPZ beside an evolution figure (what ``lightning-viz render`` redraws it from): ``parameters``,
    per parameter ``<name>/steps``, ``/edges``, ``/counts`` and ``/nonfinite``, and the ``title`` if given."""
    arrays: dict[str, np.ndarray] = {"parameters": np.array([p["name"] for p in params])}
    if title is not None:
        arrays["title"] = np.array(title)
    for p in params:
        for key in ("steps", "edges", "counts", "nonfinite"):
            arrays[f"{p['name']}/{key}"] = p[key]
    return arrays

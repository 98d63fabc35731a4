"""Activation statistics from a few sums: the arithmetic ActivationMapCallback and TrainingHealthCallback share.

A captured tensor is reduced on its device to :data:`NSUMS` float64 sums (:func:`output_sums`). Sums add up
over ranks and over repeated calls of one module, so the pooled statistics are exact. :func:`stats_from_sums`
turns them into the statistics a figure or a health check reads, and tells a layer that did not run apart
from one whose every output was NaN/Inf: a layer that did not run has ``ran == False``, never NaN statistics
presented as values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

STATS = ("mean", "std", "dead_fraction", "saturated_fraction")
NSUMS = 7  # count, sum, centred sum of squares, count x mean^2, exact zeros, saturated values, non-finite


def saturation_bounds(module: nn.Module) -> tuple[float, float] | None:
    """Output range of a bounded (tanh/sigmoid-like) activation module; ``None`` for unbounded ones."""
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return -1.0, 1.0
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return 0.0, 1.0
    if type(module) is nn.Hardtanh:
        return float(module.min_val), float(module.max_val)
    return None


def output_sums(a: torch.Tensor, bounds: tuple[float, float] | None, threshold: float) -> torch.Tensor:
    """Seven float64 sums on ``a``'s device, over the finite values: count, sum, centred sum of squares,
    count x mean^2, exact zeros, saturated values; and the count of NaN/Inf values.

    Summed over ranks (and over repeated calls of one module) they give the pooled statistics exactly.
    Integer and bool tensors are counted as floats.
    """
    if not a.is_floating_point():
        a = a.float()
    fin = torch.isfinite(a)
    bad = a.numel() - int(fin.sum())  # one host sync per layer; captures are rare
    if bad:
        a = a[fin]
    nonfinite = torch.tensor(float(bad), dtype=torch.float64, device=a.device)
    n = a.numel()
    if n == 0:
        return torch.cat([torch.zeros(6, dtype=torch.float64, device=a.device), nonfinite[None]])
    mean = a.mean(dtype=torch.float64)
    m2 = (a - mean.to(a.dtype)).square_().sum(dtype=torch.float64)
    zeros = (a == 0).sum().to(torch.float64)
    sat = torch.zeros((), dtype=torch.float64, device=a.device)
    if bounds is not None:
        centre, half = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2
        sat = ((a - centre).abs_() >= threshold * half).sum().to(torch.float64)
    count = torch.tensor(float(n), dtype=torch.float64, device=a.device)
    return torch.stack([count, mean * n, m2, mean * mean * n, zeros, sat, nonfinite])


def stats_from_sums(sums: Sequence[float], bounded: bool) -> dict[str, Any]:
    """The statistics of one captured tensor from :func:`output_sums` (summed over calls and ranks).

    Returns:
        ``mean``, population ``std``, ``dead_fraction`` (exact zeros) and ``saturated_fraction`` (NaN unless
        ``bounded``) of the finite values; ``values`` (finite values counted), ``nonfinite`` (NaN/Inf values
        counted) and ``ran``: ``False`` when the layer did not run in the capture forward pass (nothing was
        counted; the four statistics are then NaN and mean "not run", not "NaN output"). A layer that ran
        and output only NaN/Inf has ``ran`` true, ``values`` 0 and ``nonfinite`` > 0.
    """
    row = [float(v) for v in sums]
    n, s, m2, q, zeros, sat = row[:6]
    bad = row[6] if len(row) > 6 else 0.0
    out: dict[str, Any] = {"values": int(n), "nonfinite": int(bad), "ran": n > 0 or bad > 0}
    if n <= 0:
        out.update(dict.fromkeys(STATS, math.nan))
        return out
    var = max((m2 + q - s * s / n) / n, 0.0)
    out.update(
        {
            "mean": s / n,
            "std": math.sqrt(var),
            "dead_fraction": zeros / n,
            "saturated_fraction": sat / n if bounded else math.nan,
        }
    )
    return out


def stat_view(t: torch.Tensor) -> torch.Tensor:
    """A captured output as the statistics see it: detached; int, bool and half-precision as float32."""
    a = t.detach()
    return a.float() if not a.is_floating_point() or a.element_size() < 4 else a


def first_tensor(output: Any, depth: int = 0) -> torch.Tensor | None:
    """The tensor a hooked module's output stands for: the output itself, ``PackedSequence.data``, or the
    first tensor found in a tuple, list, dict (in order) or dataclass; ``None`` when there is none."""
    if isinstance(output, torch.Tensor):
        return output
    if depth > 3 or output is None:
        return None
    if isinstance(output, PackedSequence):
        return output.data
    if isinstance(output, Mapping):
        items: Any = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = (getattr(output, f.name) for f in dataclasses.fields(output))
    else:
        return None
    return next((t for t in (first_tensor(o, depth + 1) for o in items) if t is not None), None)

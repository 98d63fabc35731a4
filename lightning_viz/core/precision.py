"""The loss scale that gradients still carry at ``on_before_optimizer_step``, and statistics without it.

Under ``precision="16-mixed"`` Lightning multiplies the loss by a ``torch.amp.GradScaler``'s scale before the
backward pass, so every gradient comes out multiplied by it. Whether the gradients are unscaled again by the
time the callbacks' ``on_before_optimizer_step`` runs depends on the optimizer (checked against Lightning
2.6 and torch 2.14; the logic has been the same since Lightning 2.0 and torch 2.0):

* ``MixedPrecision.optimizer_step`` and ``FSDPPrecision.optimizer_step``
  (``lightning/pytorch/plugins/precision/{amp,fsdp}.py``) call ``scaler.unscale_(optimizer)`` after the
  closure and *before* ``_after_closure`` (which calls the hook), unless
  ``lightning.fabric.plugins.precision.amp._optimizer_handles_unscaling(optimizer)`` is true, i.e. the
  optimizer has ``_step_supports_amp_scaling`` (torch's fused optimizers: ``Adam(fused=True)``,
  ``AdamW(fused=True)``, ``SGD(fused=True)``). Those unscale inside ``step()`` (``GradScaler.step`` hands
  them ``grad_scale``), so the hook sees the gradients times the scale.
* ``GradScaler`` records per optimizer whether ``unscale_`` already ran since the last ``update()``:
  ``scaler._per_optimizer_states[id(optimizer)]["stage"]`` is ``OptState.UNSCALED`` then, ``READY`` before
  (the entry is missing until first touched: it is a ``defaultdict``). Reading that stage answers the
  question for every path, including a user's own ``unscale_`` under manual optimization; the
  ``_step_supports_amp_scaling`` rule is the fallback should the private state move.

The scale is the same on every rank (the gradients it checks are all-reduced, or the inf check is under
``ShardedGradScaler``), so decisions taken from it agree across ranks. ``GradScaler.get_scale()`` copies the
scale to the host: call :func:`grad_scale` on logging steps only.

Dividing by a power of two is exact in binary floating point, and ``GradScaler``'s scale stays one with its
defaults (``init_scale=2**16``, ``growth_factor=2``, ``backoff_factor=0.5``): then the histogram of
``grad / scale`` is the histogram of ``grad`` on edges divided by the scale, and no copy of the gradients is
needed. :func:`histogram_set` does that, and divides copies of the tensors (on the calling step only) for
any other scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightning.pytorch import Trainer

from lightning_viz.core import lightning_state, stats


def _scaler(trainer: Trainer) -> torch.amp.GradScaler | None:
    plugin = getattr(trainer, "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    if isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled():
        return scaler
    return None


def has_grad_scaler(trainer: Trainer) -> bool:
    """Whether the Trainer's precision plugin scales the loss with an enabled ``GradScaler``.

    Under one, NaN/Inf gradients on some steps are expected: the scaler skips those optimizer steps and
    lowers its scale. Costs no host synchronisation.

    Args:
        trainer: the running Trainer.

    Returns:
        True under ``precision="16-mixed"`` (``MixedPrecision`` or ``FSDPPrecision`` with a scaler).
    """
    return _scaler(trainer) is not None


def grad_scale(trainer: Trainer, optimizer: torch.optim.Optimizer) -> float | None:
    """The factor the gradients of ``optimizer``'s parameters are multiplied by right now.

    Meant for ``on_before_optimizer_step``: with a ``GradScaler`` and an optimizer that unscales inside its
    ``step()`` (fused Adam/AdamW/SGD), the gradients seen there are still scaled; with any other optimizer
    Lightning has already unscaled them (see the module docstring for the Lightning and torch code behind
    this). The result is identical on every rank.

    Args:
        trainer: the running Trainer (its ``precision_plugin`` holds the scaler).
        optimizer: the optimizer whose gradients are examined (a ``LightningOptimizer`` is unwrapped).

    Returns:
        The scale (a float > 0, ``!= 1``) when the gradients are scaled, else ``None``. One host
        synchronisation (``GradScaler.get_scale``) when a scaler is active and has not unscaled.
    """
    scaler = _scaler(trainer)
    if scaler is None:
        return None
    if not lightning_state.gradients_still_scaled(scaler, optimizer):
        return None
    scale = float(scaler.get_scale())
    return None if scale == 1.0 or not math.isfinite(scale) or scale <= 0 else scale


def is_power_of_two(scale: float) -> bool:
    """Whether dividing by ``scale`` is exact (barring underflow to subnormals)."""
    return math.isfinite(scale) and scale > 0 and math.frexp(scale)[0] == 0.5


def histogram_set(
    tensors: Sequence[torch.Tensor | None],
    names: Sequence[str],
    bins: int,
    scales: Sequence[float | None],
) -> tuple[stats.HistogramSet, bool]:
    """:func:`lightning_viz.core.stats.histogram_set` of ``tensors[i] / scales[i]`` (``None``: no scale).

    A power-of-two scale is taken out of the results (edges, min, max and sums divided by it, sums of
    squares by its square; a tensor of one value re-planned), which is exact: edges and counts are those
    ``stats.histogram_set`` gives for ``tensor / scale`` (``bin_plan`` commutes with power-of-two scaling),
    so counts equal ``numpy.histogram`` of ``tensor / scale`` on the returned edges, and no copy of the
    tensors is made. (Values below ``2**-126 * scale`` would need subnormal results; gradients that small
    are rounded by the optimizer's own unscaling too.) Any other scale divides a copy of each tensor first,
    on the calling step only. Every rank must pass the same names and scales (:func:`grad_scale` gives
    identical ones).

    Args:
        tensors: the tensors, or ``None`` (empty), as for ``stats.histogram_set``.
        names: a name for each tensor.
        bins: bins per histogram (>= 2).
        scales: for each tensor, the factor its values carry, or ``None``.

    Returns:
        The histograms of the unscaled values, and whether the computation failed on some rank.
    """
    tensors = list(tensors)
    post: list[tuple[int, float]] = []
    for i, (t, s) in enumerate(zip(tensors, scales)):
        if s is None or s == 1.0 or t is None:
            continue
        if is_power_of_two(s):
            post.append((i, s))
        else:  # inexact division: histogram the divided copy (costs a copy, on this step only)
            tensors[i] = t.detach() / s
    hs, failed = stats.histogram_set(tensors, names, bins)
    for i, s in post:
        hs.edges[i] = hs.edges[i] / s
        hs.minimum[i] /= s
        hs.maximum[i] /= s
        hs.sum[i] /= s
        hs.sum_squares[i] /= s * s
        lo, hi = float(hs.minimum[i]), float(hs.maximum[i])
        if not lo < hi:  # one value (or none): bin_plan gives such a tensor a unit-wide range, not scaled
            w, k = stats.bin_plan(lo, hi, bins)
            hs.edges[i] = stats.edges_for(w, k, bins)
            finite = int(hs.counts[i].sum())
            hs.counts[i] = 0
            if finite:
                hs.counts[i, min(math.floor(lo / w) - k, bins - 1)] = finite
    return hs, failed

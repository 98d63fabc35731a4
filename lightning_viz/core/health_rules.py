"""TrainingHealthCallback's rules: reduced records in, findings and scalars out (no Trainer, no model).

Each rule is a pure function of what was measured at one examined step (gradient norms, NaN/Inf counts,
update ratios, step losses, activation entries) and of the :class:`~lightning_viz.core.health_checks.
Thresholds`. It returns :class:`Finding` objects and the ``health/...`` scalars of that step; the callback's
ledger (:mod:`~lightning_viz.core.health_ledger`) keeps each finding once per check and layer, and the
callback warns and emits. The arithmetic under the rules (ratios, running medians, entries from records)
is in :mod:`~lightning_viz.core.health_checks`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lightning_viz.core.activation_stats import stats_from_sums
from lightning_viz.core.forward_sums import CLAIMED
from lightning_viz.core.health_checks import (
    MIN_SPIKE_HISTORY,
    Thresholds,
    activation_flags,
    depth_ratios,
    first_nonfinite,
    loss_spikes,
    plateau_improvement,
)

# the checks a user can choose (`checks`); each finding's check is one of PATHOLOGY's keys
Check = Literal[
    "dead_units",
    "saturation",
    "vanishing_gradients",
    "exploding_gradients",
    "update_ratio",
    "nonfinite",
    "loss_spike",
    "loss_plateau",
]
CHECKS: tuple[str, ...] = Check.__args__  # type: ignore[attr-defined]
PATHOLOGY = {
    "dead_units": "dead units",
    "saturation": "saturated units",
    "vanishing_gradients": "vanishing gradients",
    "exploding_gradients": "exploding gradients",
    "tiny_updates": "negligible updates",
    "large_updates": "updates too large",
    "nonfinite": "non-finite values",
    "loss_spike": "loss spike",
    "loss_plateau": "loss plateau",
}
Scalars = dict[str, float]


@dataclass
class Finding:
    """One pathology at one layer and step.

    Attributes:
        check: the check that found it (a key of :data:`PATHOLOGY`).
        layer: the layer (or parameter, or the monitored loss) it names.
        step: the step it was seen at.
        value: the measured value.
        limit: the threshold it crossed.
        detail: what was seen, in words.
        key: what makes it once-only beside the check (default: the layer).
        tensor: which tensor of the layer was measured (shown in parentheses after its name).
        origin_why: NaN/Inf were seen: look for the module where they first appear (this says why) and say
            that this finding follows from it.
    """

    check: str
    layer: str
    step: int
    value: float
    limit: float
    detail: str
    key: str | None = None
    tensor: str | None = None
    origin_why: str | None = None


def nonfinite_parameters(step: int, counts: Mapping[str, Sequence[tuple[str, float]]]) -> list[Finding]:
    """The first parameter (in model order) whose weights, and the first whose gradients, hold NaN/Inf.

    Args:
        step: the examined step.
        counts: ``"weights"`` / ``"gradients"`` -> ``(parameter, NaN/Inf count)`` in model order.
    """
    out = []
    for sel in ("weights", "gradients"):
        hit = first_nonfinite([n for n, _ in counts.get(sel, ())], [c for _, c in counts.get(sel, ())])
        if hit:
            detail = (
                f"{hit[1]} NaN/Inf values in its {sel[:-1]} (the first parameter affected in model order)"
            )
            out.append(
                Finding(
                    "nonfinite",
                    hit[0],
                    step,
                    hit[1],
                    0.0,
                    detail,
                    key=f"{sel}:{hit[0]}",
                    origin_why=f"its {sel} hold NaN/Inf",
                )
            )
    return out


def gradient_findings(
    step: int,
    grads: Sequence[tuple[str, float]],
    ndim: Mapping[str, int],
    th: Thresholds,
    checks: Collection[str],
    first_total: float | None,
) -> tuple[list[Finding], Scalars]:
    """Exploding and vanishing gradients from the gradient norms of one step, in model order.

    Args:
        step: the examined step.
        grads: ``(parameter, gradient norm)``; a gradient holding NaN/Inf has an infinite norm.
        ndim: parameter -> its number of dimensions (``>= 2``: a weight, judged for vanishing).
        th: the thresholds.
        checks: the checks that run.
        first_total: the total gradient norm of the first examination (the growth reference), or ``None``.
    """
    out: list[Finding] = []
    scalars: Scalars = {}
    total = math.sqrt(sum(v * v for _, v in grads))
    if "exploding_gradients" in checks:
        big = [(n, v) for n, v in grads if v > th.exploding_norm]
        for n, v in big:
            detail = f"gradient norm {v:.3g} > {th.exploding_norm:.3g}"
            out.append(Finding("exploding_gradients", n, step, v, th.exploding_norm, detail))
        if not big and first_total and total > th.exploding_growth * first_total:
            growth = total / first_total
            detail = f"the total gradient norm grew {growth:.3g}x since the first check"
            out.append(Finding("exploding_gradients", grads[0][0], step, growth, th.exploding_growth, detail))
    weights = [(n, v) for n, v in grads if ndim.get(n, 2) >= 2]
    if "vanishing_gradients" in checks and len(weights) >= 2:
        ratios = depth_ratios([v for _, v in weights])
        scalars["health/grad_norm_ratio"] = float(ratios[0])
        for (n, _), r in zip(weights[:-1], ratios[:-1]):
            if r < th.vanishing_ratio:
                detail = f"its gradient norm is {r:.2e} x that of {weights[-1][0]} (threshold {th.vanishing_ratio:.0e})"
                out.append(Finding("vanishing_gradients", n, step, r, th.vanishing_ratio, detail))
    return out, scalars


def update_findings(
    step: int, names: Sequence[str], ratios: Sequence[float], th: Thresholds, zero_start: Collection[str]
) -> tuple[list[Finding], Scalars]:
    """Negligible and too large updates from ``||W_after - W_before|| / ||W_before||`` of one optimizer step.

    A weight first seen at zero (``zero_start``: a zero-initialised CLS token or positional embedding) has no
    scale to compare its first updates with, as biases have not: it is never judged "too large".
    """
    scalars = {f"health/update_ratio/{n}": float(r) for n, r in zip(names, ratios) if math.isfinite(r)}
    out = []
    for check, limit in (("tiny_updates", th.tiny_update_ratio), ("large_updates", th.large_update_ratio)):
        for n, r in zip(names, ratios):
            if not math.isfinite(r) or (check == "large_updates" and n in zero_start):
                continue
            if (r < limit) if check == "tiny_updates" else (r > limit):
                detail = (
                    f"one optimizer step changed it by {r:.2e} of its norm (threshold {limit:.0e}; about 1e-3 "
                    "is healthy)"
                )
                out.append(Finding(check, n, step, float(r), limit, detail))
    return out, scalars


def loss_findings(
    monitor: str,
    history: Sequence[float],
    steps: Sequence[int],
    values: Sequence[float],
    th: Thresholds,
    checks: Collection[str],
) -> tuple[list[Finding], Scalars]:
    """A non-finite loss and the first loss spike among new step losses.

    Args:
        monitor: the monitored loss's name (what the findings name).
        history: the step losses before these (the spike window is filled from them first).
        steps: the steps of the new losses.
        values: the new step losses.
        th: the thresholds.
        checks: the checks that run.
    """
    out: list[Finding] = []
    bad = next(((s, v) for s, v in zip(steps, values) if not math.isfinite(v)), None)
    if bad and "nonfinite" in checks:
        why = f"the loss was {bad[1]} at step {bad[0]}"
        out.append(
            Finding("nonfinite", monitor, bad[0], bad[1], 0.0, f"the loss is {bad[1]}", origin_why=why)
        )
    window = th.spike_window
    if "loss_spike" in checks:
        for i in loss_spikes(history, values, th.spike_factor, window)[:1]:
            med = float(np.median([v for v in [*history, *values[:i]] if math.isfinite(v)][-window:]))
            detail = f"{values[i]:.4g} is {values[i] / med:.3g}x the median of the previous {window} steps"
            out.append(Finding("loss_spike", monitor, steps[i], values[i] / med, th.spike_factor, detail))
    scalars: Scalars = {}
    prior = [v for v in history if math.isfinite(v)][-window:]
    if len(prior) >= MIN_SPIKE_HISTORY and math.isfinite(values[-1]) and np.median(prior) > 0:
        scalars["health/loss_to_median"] = values[-1] / float(np.median(prior))
    return out, scalars


def plateau_finding(
    monitor: str, step: int, epoch_means: Sequence[float], th: Thresholds
) -> tuple[list[Finding], Scalars]:
    """A loss plateau: the best epoch-mean loss of the last ``plateau_patience`` epochs improved on the best
    before them by less than ``plateau_tolerance``."""
    gain = plateau_improvement(epoch_means, th.plateau_patience)
    if gain is None:
        return [], {}
    out = []
    if gain < th.plateau_tolerance:
        detail = (
            f"the epoch-mean loss improved by {gain:.2%} over the last {th.plateau_patience} epochs "
            f"(tolerance {th.plateau_tolerance:.2%})"
        )
        out.append(Finding("loss_plateau", monitor, step, gain, th.plateau_tolerance, detail))
    return out, {"health/loss_improvement": gain}


def activation_findings(
    step: int, entries: Sequence[Mapping[str, Any]], th: Thresholds, checks: Collection[str]
) -> tuple[list[Finding], Scalars]:
    """Dead and saturated units, and the first layer (in model order) passing on NaN/Inf, from activation
    entries (see :mod:`~lightning_viz.core.health_checks`)."""
    scalars: Scalars = {}
    for e in entries:
        for key, stat in (("dead_fraction", e["dead"]), ("saturated_fraction", e["saturated"])):
            if stat is not None and math.isfinite(stat):
                scalars[f"health/{key}/{e['layer']}"] = float(stat)
    desc = {e["layer"]: e["tensor"] for e in entries}
    out = []
    for check, name, value in activation_flags(entries, th.dead_threshold, th.saturation_threshold):
        if check not in checks:
            continue
        limit = th.dead_threshold if check == "dead_units" else th.saturation_threshold
        what = "exactly zero" if check == "dead_units" else "at its bounds"
        detail = f"{value:.1%} of the values it passes on are {what} (threshold {limit:.0%})"
        out.append(Finding(check, name, step, value, limit, detail, tensor=desc[name]))
    hit = next((e for e in entries if e["nonfinite"] > 0), None)
    if hit and "nonfinite" in checks:
        n = hit["nonfinite"]
        what = "every value of the batch is NaN/Inf" if hit["values"] == 0 else f"{n} NaN/Inf values"
        detail = f"{what} in the tensor it passes on (first layer in model order)"
        key, why = f"activations:{hit['layer']}", "activations hold NaN/Inf"
        out.append(Finding("nonfinite", hit["layer"], step, n, 0.0, detail, key, hit["tensor"], why))
    return out, scalars


def shown_activation(entry: Mapping[str, Any]) -> tuple[str, float] | None:
    """What the health figure shows of a layer: its saturated fraction when its bounds are known, else its
    dead fraction (``None`` when neither is measured)."""
    shown = (
        ("saturated_fraction", entry["saturated"])
        if entry["saturated"] is not None
        else ("dead_fraction", entry["dead"])
    )
    return (shown[0], float(shown[1])) if shown[1] is not None and math.isfinite(shown[1]) else None


def hooked_entries(
    names: Sequence[str],
    sums: Sequence[Sequence[float]],
    flags: Sequence[Sequence[float]],
    meta: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Activation entries from the reduced sums of the own hooks (:mod:`~lightning_viz.core.forward_sums`).

    Args:
        names: the hooked layers, in model order.
        sums: per layer, the activation sums (``stats_from_sums`` reads them).
        flags: per layer, ``(after a non-linearity, bounded, blind)`` as numbers (> 0: true).
        meta: layer -> which tensor was measured (``CLAIMED``: reported under the weight layer before it).

    Returns:
        The entries of the layers that ran, those that did not run, and those after functional code whose
        bounds are unknown.
    """
    entries, not_run, unknown = [], [], []
    for n, row, fl in zip(names, sums, flags):
        after, bounded, blind = (v > 0 for v in fl)
        st = stats_from_sums(list(row), bounded)
        if not st["ran"]:
            if meta.get(n) != CLAIMED:
                not_run.append(n)
            continue
        if blind and not bounded:
            unknown.append(n)
        entries.append(
            {
                "layer": n,
                "tensor": meta.get(n, "output"),
                "dead": st["dead_fraction"] if after else None,
                "saturated": st["saturated_fraction"] if bounded else None,
                "nonfinite": st["nonfinite"],
                "values": st["values"],
            }
        )
    return entries, not_run, unknown


def origin_finding(
    step: int,
    name: str | None,
    kind: str,
    count: int,
    own_params_nonfinite: bool,
    why: str,
    first_bad: int | None,
) -> Finding:
    """The module where NaN/Inf first appear in the forward pass (``name`` ``None``: the input batch)."""
    layer = "batch" if name is None else (name or "forward")
    if name is None:
        detail = f"the input batch holds {count} NaN/Inf values ({why})"
    else:
        detail = (
            f"first non-finite output in the forward pass: {layer} ({kind}): its inputs are finite, "
            f"its output holds {count} NaN/Inf values ({why})"
        )
    if own_params_nonfinite:
        detail += (
            "; its own parameters already hold NaN/Inf: the values went non-finite at an earlier step"
            + (f" (the loss first at step {first_bad})" if first_bad is not None else "")
            + " between examined steps; set `nonfinite_every_step: true` to catch it while the weights "
            "are finite"
        )
    return Finding("nonfinite", layer, step, count, 0.0, detail, key="origin")

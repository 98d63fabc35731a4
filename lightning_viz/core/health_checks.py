"""The arithmetic of TrainingHealthCallback's checks: plain numbers in, decisions out (no torch, no trainer).

An *activation entry* is what a check reads about one layer's passed-on tensor (see
:class:`~lightning_viz.core.passed.Passed`): ``layer`` (the name findings use), ``tensor`` (a phrase saying
which tensor was measured), ``dead`` (its exact-zero fraction, or ``None`` when the tensor is not taken after a
non-linearity), ``saturated`` (its fraction near the bounds, or ``None`` when the bounds are unknown),
``nonfinite`` and ``values`` (counts).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

MIN_SPIKE_HISTORY = 3
# activation classes whose outputs are probabilities, not units: exact zeros there are masked positions
NORMALISERS = ("Softmax", "Softmin", "LogSoftmax", "Softmax2d")
FUNCTION_PREFIXES = ("F.", "torch.", "Tensor.")  # how PassedTracker names a functional activation
# autograd node -> (the functional activation it stands for, its output bounds or None when unbounded)
FUNCTIONAL = {
    "ReluBackward0": ("relu", None),
    "ThresholdBackward0": ("threshold", None),
    "LeakyReluBackward0": ("leaky_relu", None),
    "EluBackward0": ("elu", None),
    "GeluBackward0": ("gelu", None),
    "SiluBackward0": ("silu", None),
    "HardswishBackward0": ("hardswish", None),
    "TanhBackward0": ("tanh", (-1.0, 1.0)),
    "SigmoidBackward0": ("sigmoid", (0.0, 1.0)),
    "HardsigmoidBackward0": ("hardsigmoid", (0.0, 1.0)),
}


@dataclass
class Thresholds:
    """When TrainingHealthCallback's checks flag a layer. In YAML, give only those you change:
    ``thresholds: {dead_threshold: 0.8, exploding_norm: 100}``; the others keep their defaults.

    Args:
        dead_threshold: a layer's units are dead when this fraction of the values it passes on after its
            non-linearity, over the whole batch, is exactly zero (a healthy ReLU has about half).
        saturation_threshold: a tanh/sigmoid layer is saturated when this fraction of its outputs lies near
            its bounds.
        saturation_level: "near the bounds" for the hooked layers: ``|a - centre| >= level * half range``
            (records of an ActivationMapCallback use its own ``saturation_threshold``).
        vanishing_ratio: gradients vanish when a weight's gradient norm is below this times the deepest
            weight's (weights are parameters with ``ndim >= 2``, in registration order).
        exploding_norm: gradients explode when any parameter's gradient norm exceeds this.
        exploding_growth: gradients also explode when the total gradient norm exceeds this times the first
            one examined.
        tiny_update_ratio: updates are negligible when ``||W_after - W_before|| / ||W_before||`` of one
            optimizer step is below this (about 1e-3 is healthy).
        large_update_ratio: updates are too large when that ratio exceeds this.
        spike_factor: a loss spike is a step loss above this times the median of the previous
            ``spike_window`` step losses (judged once 3 earlier losses exist).
        spike_window: step losses in the running median.
        plateau_patience: a plateau is when the epoch-mean loss improved by less than
            ``plateau_tolerance`` (relative) over this many epochs.
        plateau_tolerance: smallest relative improvement over ``plateau_patience`` epochs.
    """

    dead_threshold: float = 0.9
    saturation_threshold: float = 0.5
    saturation_level: float = 0.99
    vanishing_ratio: float = 1e-3
    exploding_norm: float = 1e3
    exploding_growth: float = 1e3
    tiny_update_ratio: float = 1e-6
    large_update_ratio: float = 0.5
    spike_factor: float = 5.0
    spike_window: int = 20
    plateau_patience: int = 3
    plateau_tolerance: float = 1e-3

    @classmethod
    def of(cls, value: Thresholds | Mapping[str, float] | None) -> Thresholds:
        """The thresholds an argument gives: ``None`` (the defaults), a ``Thresholds``, or (in Python) a
        mapping of only those to change; validated (``ValueError`` naming the bad one)."""
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"`thresholds` has no {unknown}; valid: {[f.name for f in fields(cls)]}")
            value = cls(**value)
        if value is not None and not isinstance(value, cls):
            raise ValueError(f"`thresholds` must be a mapping of threshold names to numbers; got {value!r}")
        out = value or cls()
        out.check()
        return out

    def check(self) -> None:
        """Raise ``ValueError`` naming the field (``thresholds.<field>``), the value and what is allowed."""
        for f in fields(self):
            value, name = getattr(self, f.name), f"thresholds.{f.name}"
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if f.name in ("spike_window", "plateau_patience"):
                if not (number and isinstance(value, int) and value >= 1):
                    raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}")
            elif f.name == "plateau_tolerance":
                if not number:
                    raise ValueError(f"`{name}` must be a number; got {value!r}")
            elif f.name in ("dead_threshold", "saturation_threshold", "saturation_level"):
                if not (number and 0 < value <= 1):
                    raise ValueError(f"`{name}` must be in (0, 1.0]; got {value!r}")
            elif not (number and value > 0):
                raise ValueError(f"`{name}` must be a number > 0; got {value!r}")

    def as_dict(self) -> dict[str, float]:
        return {
            k: float(v) if not isinstance(v, int) or isinstance(v, bool) else v
            for k, v in asdict(self).items()
        }


def functional_activation(ops: Sequence[str]) -> tuple[str, tuple[float, float] | None] | None:
    """The last functional activation among autograd node names (from the layer's output onwards), if any."""
    return next((FUNCTIONAL[o] for o in reversed(ops) if o in FUNCTIONAL), None)


def activation_flags(
    entries: Sequence[Mapping[str, Any]], dead: float, saturated: float
) -> list[tuple[str, str, float]]:
    """``(check, layer, value)`` for entries whose exact-zero fraction after the non-linearity is ``>= dead``
    (whatever the activation) and entries with known bounds whose saturated fraction is ``>= saturated``,
    in the given order. Entries with ``dead``/``saturated`` of ``None`` or NaN are not judged."""
    out = []
    for e in entries:
        d, s = e.get("dead"), e.get("saturated")
        if d is not None and math.isfinite(d) and d >= dead:
            out.append(("dead_units", str(e["layer"]), float(d)))
        if s is not None and math.isfinite(s) and s >= saturated:
            out.append(("saturation", str(e["layer"]), float(s)))
    return out


def depth_ratios(norms: Sequence[float]) -> np.ndarray:
    """Each layer's gradient norm divided by the last (deepest) layer's; NaN when the last is 0, Inf or NaN."""
    x = np.asarray(norms, dtype=np.float64)
    if x.size == 0:
        return x
    with np.errstate(divide="ignore", invalid="ignore"):
        return x / x[-1] if 0 < x[-1] < math.inf else np.full_like(x, np.nan)


def update_ratio(before_sq: np.ndarray, diff_sq: np.ndarray) -> np.ndarray:
    """``||W_after - W_before|| / ||W_before||`` from the two sums of squares (NaN where ``W_before`` is 0)."""
    b, d = np.asarray(before_sq, dtype=np.float64), np.asarray(diff_sq, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, np.sqrt(d) / np.sqrt(b), np.nan)


def loss_spikes(history: Sequence[float], values: Sequence[float], factor: float, window: int) -> list[int]:
    """Indices ``i`` of ``values`` with ``values[i] > factor * median(previous window finite values)``.

    ``history`` holds the values before ``values`` (the window is filled from it first); a spike is judged
    once ``min(window, 3)`` earlier finite values exist, and a spike does not enter the window.
    """
    recent = [v for v in history if math.isfinite(v)][-window:]
    out = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if len(recent) >= min(window, MIN_SPIKE_HISTORY) and v > factor * float(np.median(recent)):
            out.append(i)
            continue
        recent = [*recent[1 - window :], v] if window > 1 else [v]
    return out


def plateau_improvement(epoch_means: Sequence[float], patience: int) -> float | None:
    """Relative improvement of the best epoch mean over the last ``patience`` epochs on the best before
    them: ``(best_before - best_recent) / |best_before|``; ``None`` with fewer than ``patience + 1`` epochs."""
    means = [m for m in epoch_means if math.isfinite(m)]
    if len(means) < patience + 1:
        return None
    before, recent = min(means[:-patience]), min(means[-patience:])
    return (before - recent) / abs(before) if before != 0 else (0.0 if recent >= before else math.inf)


def first_nonfinite(names: Sequence[str], counts: Sequence[float]) -> tuple[str, int] | None:
    """The first name (in order) whose count of NaN/Inf values is positive, and that count."""
    return next(((n, int(c)) for n, c in zip(names, counts) if c > 0), None)


def _stat(st: Mapping[str, Any], key: str) -> float | None:
    v = st.get(key, math.nan)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def record_entries(
    payload: Mapping[str, Any],
    activation_names: Collection[str],
    act_of: Mapping[str, str],
    fn_of: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Activation entries from an ActivationMapCallback ``"activation_stats"`` record.

    The record holds, per layer, the statistics of the tensor it passes on (``source``: ``"output"``,
    ``"activation"`` or ``"next_input"``) with ``values``, ``nonfinite`` and ``ran``, plus ``"_types"`` and
    ``"_activation"`` (the activation module's class the tensor came out of); older records without those
    keys are read by their module type. An activation module found after a weight layer (``act_of``:
    activation module -> weight layer, learnt by the own hooks) is reported under the weight layer's name;
    ``fn_of`` (weight layer -> functional activation after it, e.g. ``F.relu``) or the record's ``of`` names
    a functional activation: ``"after F.relu"``, as the own hooks say.

    Returns:
        The entries of the layers that ran, the names of those that did not, and the layers after
        functional code whose saturation cannot be judged (bounds unknown).
    """
    types, acts = payload.get("_types", {}) or {}, payload.get("_activation", {}) or {}
    module_of = {w: a for a, w in act_of.items()}
    entries, not_run, unknown = [], [], []
    for name, st in payload.items():
        if str(name).startswith("_") or not isinstance(st, Mapping):
            continue
        ran = st.get("ran")
        if ran is None:  # an older record: counts, or a finite mean, say it ran
            ran = st.get("values", 0) + st.get("nonfinite", 0) > 0 if "values" in st else True
        if not ran:
            not_run.append(name)
            continue
        kind, src = types.get(name, ""), st.get("source")
        act = acts.get(name) or (kind if kind in activation_names and src in (None, "output") else None)
        layer = act_of.get(name, name) if kind in activation_names else name
        of = str(st.get("of", "")).split()
        by = (
            of[2] if len(of) > 2 and of[:2] == ["output", "of"] else ""
        )  # "output of F.relu (ReLU) after fc2"
        if src == "next_input":
            fn = fn_of.get(name)
            desc = f"after {fn}" if fn else "input of the next module"
        elif src == "activation" and (name in fn_of or by.startswith(FUNCTION_PREFIXES)):
            desc = f"after {fn_of.get(name, by)}"
        elif src == "activation":
            desc = (
                f"output of {module_of.get(name, by or act)}, {act}"
                if (name in module_of or by)
                else f"output of {act}"
            )
        elif layer != name:
            desc = f"output of {name}, {act}"
        else:
            desc = act or "output"
        after = (act is not None or src == "next_input") and act not in NORMALISERS
        sat = _stat(st, "saturated_fraction")
        if (
            src == "next_input"
            and sat is None
            and str(fn_of.get(name)).split(".")[-1] in ("None", "tanh", "sigmoid")
        ):
            unknown.append(name)
        finite = _stat(st, "mean") is not None
        entries.append(
            {
                "layer": layer,
                "tensor": desc,
                "dead": float(st.get("dead_fraction", math.nan)) if after else None,
                "saturated": sat,
                "nonfinite": int(st.get("nonfinite", 0 if finite else 1)),
                "values": int(st.get("values", 1 if finite else 0)),
            }
        )
    return entries, not_run, unknown


def _listing(names: Sequence[str], limit: int = 20) -> str:
    more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def summary_text(
    findings: Sequence[Mapping[str, Any]],
    remarks: Mapping[str, str],
    not_run: Sequence[str],
    frozen: Mapping[str, int],
    started_later: Mapping[str, int],
    skipped: int,
) -> str:
    """``health_summary.txt``: the findings, then the remarks (checks unavailable, notes), the layers that did
    not run, the parameters that do not train (name and size) and those that started training later."""
    lines = [f"training health: {len(findings)} finding(s)"]
    lines += [f"  step {f['step']:>6}  {f['message']}" for f in findings] or ["  no problem found"]
    lines += [f"  {k}: {v}" for k, v in remarks.items()]
    if not_run:
        lines.append(f"  not run (no statistics, no finding): {_listing(list(not_run))}")
    if frozen:
        sizes = [f"{n} ({c:,})" for n, c in frozen.items()]
        lines.append(
            f"  parameters that do not train: {len(frozen)} tensors, {sum(frozen.values()):,} values: "
            + _listing(sizes)
        )
    by_step: dict[int, list[str]] = {}
    for n, s in started_later.items():
        by_step.setdefault(s, []).append(n)
    for s, names in sorted(by_step.items()):
        lines.append(f"  started training later: at step {s}: {len(names)} tensors: {_listing(names)}")
    if skipped:
        lines.append(f"  GradScaler steps skipped (NaN/Inf gradients, expected): {skipped} examined")
    return "\n".join(lines) + "\n"

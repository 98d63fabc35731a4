"""What TrainingHealthCallback knows so far: its findings (each once), the latest measurements, the loss curve.

:class:`HealthLedger` applies the rules of :mod:`~lightning_viz.core.health_rules` to each reduced record and
keeps what they need across steps (the first total gradient norm, the weights first seen at zero, the step
losses, the epoch means) and what the figure and the summary show. It is plain data: no Trainer, no
model, the same on every rank (its inputs are reduced), and saved in the callback's checkpoint state.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from lightning_viz.core import health_rules as rules
from lightning_viz.core.health_checks import Thresholds, summary_text, update_ratio
from lightning_viz.core.health_rules import PATHOLOGY, Finding, Scalars

MAX_LOSS_POINTS = 4000  # step losses kept for the figure (older ones thinned)


class HealthLedger:
    """The state of the health checks over a run.

    Args:
        thresholds: when the checks flag a layer.
        checks: the checks that run.
        monitor: the monitored loss's name.
    """

    def __init__(self, thresholds: Thresholds, checks: Collection[str], monitor: str) -> None:
        self.th, self.checks, self.monitor = thresholds, tuple(checks), monitor
        self.findings: list[dict[str, Any]] = []
        self.flagged: set[tuple[str, str]] = set()
        self.unavailable: dict[str, str] = {}
        self.notes: dict[str, str] = {}  # what a check could not see, said in the summary (not warned)
        self.origin: dict[str, Any] | None = None  # where NaN/Inf first appeared
        self.latest: dict[str, Any] = {"grad": {}, "update": {}, "act": {}}
        self.loss_steps: list[int] = []
        self.loss_values: list[float] = []
        self.epoch_losses: list[float] = []
        self.epoch_sum, self.epoch_count = 0.0, 0
        self.first_total_grad: dict[str, float] = {}
        self.zero_start: set[str] = set()  # weights first seen at zero (no scale for their updates)
        self.update_seen: set[str] = set()
        self.ndim: dict[str, int] = {}
        self.trains_since: dict[str, int] = {}  # parameter -> first examined step it trained at
        self.frozen_at_start: set[str] | None = None
        self.frozen: dict[str, int] = {}  # parameters that do not train (latest examined step) -> size
        self.not_run: dict[str, int] = {}  # layer -> latest examined step it did not run at
        self.skipped = 0  # GradScaler steps skipped (NaN/Inf gradients, expected)

    # ------------------------------------------------------------------ findings
    def add(self, f: Finding, epoch: int) -> dict[str, Any] | None:
        """Keep a finding once per (check, key or layer); the finding's record when it is new, else ``None``."""
        ident = (f.check, f.key or f.layer)
        if ident in self.flagged:
            return None
        self.flagged.add(ident)
        named = f"{f.layer} ({f.tensor})" if f.tensor else f.layer
        record = {
            "check": f.check,
            "pathology": PATHOLOGY[f.check],
            "layer": f.layer,
            "tensor": f.tensor,
            "step": int(f.step),
            "epoch": int(epoch),
            "value": float(f.value),
            "threshold": float(f.limit),
            "message": f"TrainingHealthCallback: {PATHOLOGY[f.check]}: {named} at step {f.step}: {f.detail}.",
        }
        self.findings.append(record)
        return record

    def follows(self) -> str:
        """What a NaN/Inf finding adds once the module where they first appear is known."""
        o = self.origin
        if o is None:
            return ""
        return f" (follows from the first non-finite output in the forward pass: {o['layer']} at step {o['step']})"

    def origin_found(
        self, step: int, why: str, found: Any, note: str | None, first_bad: int | None
    ) -> list[Finding]:
        """What the NaN locator found (an :class:`~lightning_viz.core.tensor_origin.Origin` or ``None``) after
        ``why``; ``note``: why it could not look. The origin finding, or none (and a note)."""
        if note:
            self.notes["origin"] = note
        if found is None:
            self.notes.setdefault(
                "origin",
                f"at step {step} {why}, but a forward pass of the batch is finite: the NaN/Inf arise in the loss "
                "or in the backward pass",
            )
            return []
        f = rules.origin_finding(
            step, found.name, found.kind, found.count, found.own_params_nonfinite, why, first_bad
        )
        self.origin = {"layer": f.layer, "step": int(step), "kind": found.kind}
        return [f]

    def no_activations(self, why: str) -> None:
        """Nothing measures activations: the dead-unit and saturation checks are unavailable."""
        for check in ("dead_units", "saturation"):
            if check in self.checks:
                self.unavailable[check] = why

    def no_loss(self) -> bool:
        """The examined steps carry no logged loss; ``True`` the first time (the caller says so once)."""
        if "loss" in self.unavailable or self.loss_values:
            return False
        self.unavailable["loss"] = f"`monitor` {self.monitor!r} is not logged at step level"
        return True

    # ------------------------------------------------------------------ parameters
    def trained(self, step: int, params: Sequence[tuple[str, int, int, bool]]) -> None:
        """Note which parameters train at an examined step: ``(name, numel, ndim, trains)`` in model order."""
        self.frozen = {n: numel for n, numel, _, trains in params if not trains}
        if self.frozen_at_start is None:
            self.frozen_at_start = set(self.frozen)
        for n, _, ndim, trains in params:
            self.ndim[n] = ndim
            if trains:
                self.trains_since.setdefault(n, step)

    def started_later(self) -> dict[str, int]:
        """Parameters that did not train at the first examined step and did later: name -> first examined
        step they trained at."""
        start = self.frozen_at_start or set()
        return {n: s for n, s in self.trains_since.items() if n in start}

    # ------------------------------------------------------------------ the rules, on reduced records
    def histograms(
        self, step: int, hs: Any, *, scaler: bool, manual: bool, own: bool
    ) -> tuple[list[Finding], Scalars]:
        """Weights and gradients of one step: a :class:`~lightning_viz.core.stats.HistogramSet` of
        ``weights/<param>`` and ``gradients/<param>`` (its ``names``, ``nonfinite``, ``norm``, ``numel``):
        NaN/Inf, exploding and vanishing gradients. ``scaler``: a GradScaler skips steps with NaN/Inf
        gradients (expected, counted, not judged); ``manual``: each optimizer's parameters come on its own
        steps; ``own``: the records are this callback's (its scalars include the gradient norms)."""
        names, nonfinite, norms, numel = list(hs.names), hs.nonfinite, hs.norm, hs.numel
        idx = {
            sel: [i for i, n in enumerate(names) if n.startswith(f"{sel}/")]
            for sel in ("weights", "gradients")
        }
        if scaler and any(nonfinite[i] for i in idx["gradients"]):
            self.skipped += 1  # the scaler skips this step and lowers its scale: expected, not a finding
            idx["gradients"] = []
        found: list[Finding] = []
        if "nonfinite" in self.checks:
            counts = {sel: [(names[i].split("/", 1)[1], nonfinite[i]) for i in ix] for sel, ix in idx.items()}
            found += rules.nonfinite_parameters(step, counts)
        # a gradient holding NaN/Inf counts as an infinite norm (the end point of an explosion)
        grads = [
            (names[i].split("/", 1)[1], math.inf if nonfinite[i] else float(norms[i]))
            for i in idx["gradients"]
            if numel[i] > 0
        ]
        scalars: Scalars = {
            f"health/nonfinite/{names[i]}": float(nonfinite[i])
            for i in idx["weights"] + idx["gradients"]
            if nonfinite[i] > 0
        }
        if own:  # else WeightHistogramCallback logs them as grad_norm/<param>
            scalars.update({f"health/grad_norm/{n}": v for n, v in grads})
        if not grads:
            return found, scalars
        if not manual:
            self.latest["grad"] = {}
        self.latest["grad"].update(dict(grads))
        self.latest["grad_step"] = step
        deepest = [v for n, v in grads if self.ndim.get(n, 2) >= 2][-1:]
        self.latest["vanishing_below"] = self.th.vanishing_ratio * deepest[0] if deepest else None
        total = math.sqrt(sum(v * v for _, v in grads))
        first = self.first_total_grad.setdefault(grads[0][0], total) if total > 0 else None
        more, extra = rules.gradient_findings(step, grads, self.ndim, self.th, self.checks, first)
        return found + more, {**scalars, **extra}

    def updates(
        self,
        step: int,
        names: Sequence[str],
        ratios: Sequence[float],
        at_zero: Sequence[bool] | None = None,
        skipped: Sequence[bool] | None = None,
    ) -> tuple[list[Finding], Scalars]:
        """Update-to-weight ratios of one optimizer step, per weight; ``at_zero``: the weight was zero before
        the step (default: its ratio is not finite); ``skipped``: the step did not happen for it (a
        GradScaler skipped it): it says nothing about the weight's scale."""
        at_zero = [not math.isfinite(r) for r in ratios] if at_zero is None else at_zero
        skipped = [False] * len(names) if skipped is None else skipped
        self.latest["update"] = {n: float(r) for n, r in zip(names, ratios)}
        stepped = [(n, z) for n, z, sk in zip(names, at_zero, skipped) if not sk]
        self.zero_start |= {n for n, z in stepped if z and n not in self.update_seen}
        self.update_seen |= {n for n, _ in stepped}
        if "update_ratio" not in self.checks:
            return [], {}
        return rules.update_findings(step, names, ratios, self.th, self.zero_start)

    def losses(self, steps: Sequence[int], values: Sequence[float]) -> tuple[list[Finding], Scalars]:
        """New step losses (in step order): a non-finite loss, a spike; kept for the figure and the epoch mean."""
        found, scalars = rules.loss_findings(
            self.monitor, self.loss_values, steps, values, self.th, self.checks
        )
        finite = [v for v in values if math.isfinite(v)]
        self.epoch_sum, self.epoch_count = self.epoch_sum + sum(finite), self.epoch_count + len(finite)
        self.loss_steps += steps
        self.loss_values += values
        window = self.th.spike_window
        if len(self.loss_values) > MAX_LOSS_POINTS:  # thin the older half of the curve; keep the window
            recent = max(len(self.loss_values) - window, 0)
            keep = [*range(0, recent, 2), *range(recent, len(self.loss_values))]
            self.loss_steps = [self.loss_steps[i] for i in keep]
            self.loss_values = [self.loss_values[i] for i in keep]
        return found, scalars

    def epoch_end(self, step: int) -> tuple[list[Finding], Scalars]:
        """A training epoch ends: its mean loss joins the epoch means; the plateau check."""
        if self.loss_values:
            self.epoch_losses.append(self.epoch_sum / self.epoch_count if self.epoch_count else math.nan)
        self.epoch_sum, self.epoch_count = 0.0, 0
        if "loss_plateau" not in self.checks:
            return [], {}
        return rules.plateau_finding(self.monitor, step, self.epoch_losses, self.th)

    def activations(
        self,
        step: int,
        entries: Sequence[Mapping[str, Any]],
        not_run: Sequence[str] = (),
        unknown: Sequence[str] = (),
        *,
        own: bool,
    ) -> tuple[list[Finding], Scalars]:
        """Activation entries of one step, from the own hooks (``own``) or another callback's records.

        Args:
            step: the examined step.
            entries: the layers that ran (see :mod:`~lightning_viz.core.health_checks`).
            not_run: layers that did not run (from the own hooks: at this step; from records: noted once).
            unknown: layers after functional code whose bounds are unknown (saturation not judged).
            own: the entries come from the own hooks.
        """
        for name in not_run:
            if own:
                self.not_run[name] = step
            else:
                self.not_run.setdefault(name, step)
        if own:
            for e in entries:
                self.not_run.pop(e["layer"], None)
        if unknown and "saturation" in self.checks and (own or not self.notes.get("saturation")):
            self.notes["saturation"] = (
                f"not checked for {list(unknown)[:8]}: the functional code after them could not be told "
                "(no autograd graph), so their bounds are unknown"
                if own
                else f"not checked for {list(unknown)[:8]} (ActivationMapCallback records): they pass their "
                "outputs through functional code whose bounds are unknown"
            )
        for e in entries:
            shown = rules.shown_activation(e)
            if shown is not None:
                self.latest["act"][e["layer"]] = shown
        return rules.activation_findings(step, entries, self.th, self.checks)

    def examination(self, reduced: Any, scaler: bool) -> tuple[list[Finding], list[Finding], Scalars, bool]:
        """One examination's reduced sums (:func:`~lightning_viz.core.health_capture.examination_record`):
        activations, update sizes, step losses. ``scaler``: a GradScaler skips steps (an exact zero change).

        Returns:
            The activation and update findings, the loss findings, the scalars, and whether the loss was
            found missing for the first time.
        """
        names, meta, upd_names, batches = reduced.meta
        at, red = reduced.step, reduced.values
        found: list[Finding] = []
        loss_found: list[Finding] = []
        scalars: Scalars = {}
        no_loss = False
        if names:
            entries, not_run, unknown = rules.hooked_entries(
                names, red["act"].tolist(), red["flags"].tolist(), meta
            )
            more, extra = self.activations(at, entries, not_run, unknown, own=True)
            found, scalars = found + more, {**scalars, **extra}
        if upd_names:
            b, d = red["upd"].numpy().T
            ratios = update_ratio(b, d)
            skipped = (d == 0) & scaler  # an exact zero change under a GradScaler: a step it skipped
            ratios = np.where(skipped, np.nan, ratios)
            more, extra = self.updates(at, upd_names, ratios.tolist(), (b == 0).tolist(), skipped.tolist())
            found, scalars = found + more, {**scalars, **extra}
        if batches:
            values = [v for v, (_, ok) in zip(red["loss"].tolist(), batches) if ok]
            if values:
                loss_found, extra = self.losses([s for s, ok in batches if ok], values)
                scalars.update(extra)
            else:
                no_loss = self.no_loss()
        return found, loss_found, scalars, no_loss

    # ------------------------------------------------------------------ what is shown
    def figure_data(self) -> dict[str, Any]:
        """The plain data behind the health figure."""
        flagged: dict[str, set[str]] = {}
        for f in self.findings:
            flagged.setdefault(f["check"], set()).add(f["layer"])
        return {
            "grad_norms": dict(self.latest["grad"]),
            "grad_step": self.latest.get("grad_step"),
            "vanishing_below": self.latest.get("vanishing_below"),
            "update_ratios": dict(self.latest["update"]),
            "activations": {n: list(v) for n, v in self.latest["act"].items()},
            "loss_steps": list(self.loss_steps),
            "loss_values": list(self.loss_values),
            "findings": [dict(f) for f in self.findings],
            "flagged": {k: sorted(v) for k, v in flagged.items()},
            "thresholds": self.th.as_dict(),
            "not_run": sorted(self.not_run),
            "frozen": {
                "tensors": len(self.frozen),
                "values": sum(self.frozen.values()),
                "names": list(self.frozen)[:12],
            },
            "started_later": self.started_later(),
        }

    def summary(self) -> dict[str, Any]:
        """``health_summary.json``."""
        return {
            "findings": self.findings,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "not_run": sorted(self.not_run),
            "frozen": dict(self.frozen),
            "started_later": self.started_later(),
            "gradscaler_skipped_steps": self.skipped,
            "thresholds": self.th.as_dict(),
        }

    def summary_text(self) -> str:
        """The findings, then what the checks could not see: checks unavailable, layers that did not run,
        parameters that do not train and those that started training later."""
        remarks = {
            **{f"unavailable: {k}": v for k, v in self.unavailable.items()},
            **{f"note: {k}": v for k, v in self.notes.items()},
        }
        return summary_text(
            self.findings, remarks, sorted(self.not_run), self.frozen, self.started_later(), self.skipped
        )

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": [dict(f) for f in self.findings],
            "flagged": sorted(list(k) for k in self.flagged),
            "epoch_losses": list(self.epoch_losses),
            "trains_since": dict(self.trains_since),
            "frozen_at_start": sorted(self.frozen_at_start or ()),
            "origin": self.origin,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the findings (a resumed run does not warn again about them) and the epoch losses."""
        self.findings = [dict(f) for f in state.get("findings", [])]
        flagged = state.get("flagged") or [(f["check"], f["layer"]) for f in self.findings]
        self.flagged = {(str(c), str(k)) for c, k in flagged}
        self.epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        self.trains_since = {str(k): int(v) for k, v in state.get("trains_since", {}).items()}
        start = state.get("frozen_at_start")
        self.frozen_at_start = set(start) if start is not None and "trains_since" in state else None
        self.origin = state.get("origin")

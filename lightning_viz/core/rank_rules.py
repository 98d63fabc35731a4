"""Which rank departs from the others: the findings of ``RankViewCallback``, from its gathered rows.

Pure functions of plain data (``[world_size, fields]`` arrays, one per logging step), so that every rank
takes the same decisions from the same gathered values and the rules are tested without processes.

* **Straggler**: a rank whose time before the gradient sync (waiting for its batch plus the forward pass)
  is at least ``ratio`` times the median of the other ranks', and 5 ms longer, on 3 of the last 5 logging
  steps. The whole step says nothing here: under DDP every rank waits for the slowest inside the backward
  pass, so all ranks' steps take about as long.
* **Bad data**: a rank whose loss or input batch holds NaN/Inf while the others' do not; and inputs of
  different scale (one rank's input standard deviation 10 times another's), which names the rank farthest
  from the others' median when there are three or more, and the two values when there are two.
* **Replicas that differ**: under DDP every replica holds the same weights after each step (the same
  averaged gradients, the same optimizer), so their sums agree bit for bit; a rank whose sum differs has had
  its replica changed outside DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WINDOW, NEED = 5, 3  # a straggler is slow on NEED of the last WINDOW logging steps
MIN_EXCESS_S = 0.005  # and at least this much slower (timer noise on very short steps is not a straggler)
SCALE_RATIO = 10.0  # inputs whose standard deviations differ this much are of different scale


def _col(names: Sequence[str], rows: np.ndarray, field: str) -> np.ndarray | None:
    return rows[:, list(names).index(field)] if field in names else None


def stragglers(
    names: Sequence[str], history: Sequence[np.ndarray], ratio: float
) -> dict[int, dict[str, Any]]:
    """The ranks slow before the gradient sync on ``NEED`` of the last ``WINDOW`` logging steps, with how
    slow (median over those steps): ``{rank: {"times": k, "of": n, "ratio": x, "own_s": a, "others_s": b}}``."""
    recent = list(history)[-WINDOW:]
    if len(recent) < NEED or recent[0].shape[0] < 2:
        return {}
    slow: dict[int, list[tuple[float, float]]] = {}
    for rows in recent:
        data, fwd = _col(names, rows, "data_s"), _col(names, rows, "forward_s")
        if fwd is None:
            continue
        before = np.nan_to_num(data, nan=0.0) + fwd if data is not None else fwd
        for r in range(rows.shape[0]):
            others = float(np.nanmedian(np.delete(before, r)))
            own = float(before[r])
            if (
                np.isfinite(own)
                and np.isfinite(others)
                and own >= ratio * others
                and own - others >= MIN_EXCESS_S
            ):
                slow.setdefault(r, []).append((own, others))
    out = {}
    for r, times in slow.items():
        if len(times) >= NEED:
            own, others = (float(np.median(v)) for v in zip(*times))
            out[r] = {"times": len(times), "of": len(recent), "ratio": own / max(others, 1e-12)}
            out[r] |= {"own_s": own, "others_s": others}
    return out


def findings(
    names: Sequence[str], history: Sequence[np.ndarray], step: int, *, ratio: float, replicas: bool
) -> list[dict[str, Any]]:
    """What the latest gathered rows (``history[-1]``, at ``step``) show, as ``{"kind", "rank", "step",
    "message"}`` dicts: ranks that depart from the others (see the module docstring)."""
    rows = history[-1]
    world = rows.shape[0]
    out: list[dict[str, Any]] = []
    if world < 2:
        return out

    def add(kind: str, rank: int | None, message: str) -> None:
        out.append({"kind": kind, "rank": rank, "step": step, "message": message})

    for r, s in stragglers(names, history, ratio).items():
        add(
            "straggler",
            r,
            f"rank {r} is a straggler: waiting for its batch plus its forward pass took {s['ratio']:.1f}x the "
            f"other ranks' median ({s['own_s'] * 1e3:.0f} ms against {s['others_s'] * 1e3:.0f} ms) on "
            f"{s['times']} of the last {s['of']} logging steps; every rank waits for it in the backward pass",
        )
    for field, what in (("loss", "loss"), ("input_mean", "input batch")):
        col = _col(names, rows, field)
        if col is None:
            continue
        bad = [r for r in range(world) if not np.isfinite(col[r])]
        if bad and len(bad) < world:
            for r in bad:
                add(
                    f"nonfinite_{field}",
                    r,
                    f"rank {r}'s {what} holds NaN/Inf at step {step} while the other ranks' does not: its "
                    "data (or its replica) is bad",
                )
    std = _col(names, rows, "input_std")
    if std is not None and np.all(np.isfinite(std)) and np.all(std > 0):
        lo, hi = float(std.min()), float(std.max())
        if hi >= SCALE_RATIO * lo:
            if world == 2:
                add(
                    "input_scale",
                    None,
                    f"the two ranks' input batches are of different scale at step {step} (standard deviation "
                    f"{std[0]:.3g} on rank 0, {std[1]:.3g} on rank 1): one of them is fed other data",
                )
            else:
                logs = np.log(std)
                r = int(np.argmax(np.abs(logs - np.median(logs))))
                others = float(np.median(np.delete(std, r)))
                add(
                    "input_scale",
                    r,
                    f"rank {r}'s input batch is of another scale at step {step} (standard deviation "
                    f"{std[r]:.3g} against {others:.3g} on the other ranks): it is fed other data",
                )
    weights = _col(names, rows, "weights")
    if replicas and weights is not None and np.all(np.isfinite(weights)):
        for r in range(1, world):
            if weights[r] != weights[0]:
                add(
                    "replica",
                    r,
                    f"rank {r}'s replica differs from rank 0's at step {step} (sum of its weights "
                    f"{weights[r]:.17g} against {weights[0]:.17g}): under DDP the replicas agree by construction, "
                    "so something changes one outside DDP (an in-place edit, an unsynchronised buffer or optimizer)",
                )
    return out

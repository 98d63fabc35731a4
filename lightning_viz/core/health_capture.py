"""TrainingHealthCallback's own capture beside the forward sums: update sizes, step losses, the NaN locator.

* :class:`UpdateSizes`: a copy of each trained weight taken before its optimizer step, compared with the
  weight once the step is done, kept as two sums of squares on the weight's device.
* :class:`StepLosses`: the monitored loss of every batch, kept as a device tensor (no host sync) until the
  examination, when all of them travel in one copy.
* :func:`examination_record`: what an examination reduces, as one :class:`~lightning_viz.core.records.Sums`
  record (the same rows on every rank).
* :func:`find_origin`: the module where NaN/Inf first appear, from one hooked forward pass of the batch at
  hand on every rank, the earliest over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_viz.core import distributed, sharding
from lightning_viz.core.activation_stats import NSUMS
from lightning_viz.core.distributed import Reduction
from lightning_viz.core.forward_sums import FLAGS
from lightning_viz.core.model_input import model_input
from lightning_viz.core.records import Sums
from lightning_viz.core.tensor_origin import Origin, locate_nonfinite

# how an examination's sums combine across ranks (declared, as torchmetrics' dist_reduce_fx)
REDUCTIONS: dict[str, Reduction] = {"act": "sum", "flags": "max", "upd": "sum", "loss": "mean"}


class UpdateSizes:
    """``||W_after - W_before||^2`` and ``||W_before||^2`` of the weights of the examined optimizer steps."""

    def __init__(self) -> None:
        self.open: list[tuple[str, torch.Tensor, torch.Tensor, bool]] = []  # copies of an open step
        self.closed: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # closed steps' sums of squares

    def before(self, name: str, p: torch.Tensor) -> None:
        """Copy the rank's piece of ``p`` before its optimizer step."""
        local, contributes = sharding.local_view(p)
        self.open.append((name, p, local.detach().clone(), contributes))

    def close(self) -> None:
        """The optimizer step of the open copies is done: keep the two sums of squares."""
        for name, p, old, contributes in self.open:
            if contributes:
                new, o = sharding.local_view(p)[0].detach().double(), old.double()
                self.closed.append((name, o.square().sum(), (new - o).square().sum()))
            else:
                zero = torch.zeros((), dtype=torch.float64, device=old.device)
                self.closed.append((name, zero, zero))
        self.open = []

    def take(self) -> tuple[list[str], torch.Tensor]:
        """The closed steps' weights and their sums (``(n, 2)``, float64 on the host: one copy); cleared."""
        self.close()
        upd, self.closed = self.closed, []
        if not upd:
            return [], torch.zeros(0, 2, dtype=torch.float64)
        dev = upd[0][1].device
        return [n for n, _, _ in upd], torch.stack(
            [torch.stack([b.to(dev), d.to(dev)]) for _, b, d in upd]
        ).cpu()


class StepLosses:
    """The monitored loss of each batch since the last examination: ``(step, loss tensor or None)``."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, torch.Tensor | None]] = []

    def add(self, step: int, value: torch.Tensor | None) -> None:
        self.pending.append((step, None if value is None else value.to(torch.float64)))

    def first_bad(self) -> int | None:
        """The first kept step whose loss is NaN/Inf (one host copy)."""
        kept = [(s, v) for s, v in self.pending if v is not None]
        if not kept:
            return None
        values = torch.cat([v.to(kept[0][1].device) for _, v in kept]).cpu().tolist()
        return next((s for (s, _), v in zip(kept, values) if not math.isfinite(v)), None)

    def take(self) -> tuple[list[tuple[int, bool]], torch.Tensor]:
        """``(step, has a value)`` per batch and the values (NaN where missing; one host copy); cleared."""
        pending, self.pending = self.pending, []
        loss = torch.full((len(pending),), math.nan, dtype=torch.float64)
        kept = [v for _, v in pending if v is not None]
        if kept:
            nan = torch.full((1,), math.nan, dtype=torch.float64, device=kept[0].device)
            loss = torch.cat([nan if v is None else v.to(kept[0].device) for _, v in pending]).cpu()
        return [(s, v is not None) for s, v in pending], loss


def examination_record(
    step: int,
    names: list[str],
    acc: Mapping[str, torch.Tensor],
    meta: Mapping[str, str],
    updates: UpdateSizes,
    losses: StepLosses,
) -> Sums:
    """One examination's own sums as a record: the hooked layers' activation sums and flags (``names``, in
    that order: the same on every rank), the update sizes, the step losses.

    ``meta`` of the record: ``(names, what each layer's tensor is, updated weights, (step, has loss) per
    batch)``."""
    act = torch.zeros(len(names), NSUMS + FLAGS, dtype=torch.float64)
    for i, n in enumerate(names):
        if n in acc:
            act[i] = acc[n].cpu()
    upd_names, upd = updates.take()
    batches, loss = losses.take()
    values = {"act": act[:, :NSUMS], "flags": act[:, NSUMS:], "upd": upd, "loss": loss}
    return Sums(step, values, REDUCTIONS, meta=(names, dict(meta), upd_names, batches))


def loss_nonfinite(value: torch.Tensor | None, every_step: bool | None, examined: bool) -> bool:
    """Whether the step loss is NaN/Inf on some rank, checked where ``every_step`` says so.

    ``every_step`` (``nonfinite_every_step``): ``True`` every step (one host synchronisation, and one small
    all-reduce with several processes); ``False`` examined steps only; ``None`` wherever it is free (one
    process with the loss on the CPU), else examined steps only. Every rank calls it alike: examined steps
    and the argument are the same everywhere.
    """
    several = distributed.world_size() > 1
    if every_step is None:
        every_step = not several and value is not None and value.device.type == "cpu"
    if not (every_step or examined):
        return False
    bad = value is not None and not bool(torch.isfinite(value).all())
    return distributed.agree_any(bad) if several else bad


def find_origin(
    pl_module: LightningModule, batch: Any, forward_context: Callable[[], Any] | None, fsdp1: bool
) -> tuple[Origin | None, str | None]:
    """Every rank alike: one hooked ``no_grad`` forward pass of ``batch`` names where NaN/Inf first appear.

    Returns:
        The earliest origin over ranks (the same on every rank), or ``None``; and why it could not be looked
        for, or ``None``.
    """
    found: Origin | None = None
    note = None
    inp = model_input(batch, pl_module) if batch is not None else None
    several = distributed.world_size() > 1
    if inp is None or fsdp1:
        note = "the module where NaN/Inf first appear could not be looked for: " + (
            "FSDP1 units run only from the root" if inp is not None else "the batch cannot feed the model"
        )
    else:
        try:  # complete: the same forward (and collectives) on every rank
            found = locate_nonfinite(pl_module, inp, forward_context, complete=several)
        except Exception as err:  # the pass is ours: a failure must not end training
            note = f"the forward pass looking for the first NaN/Inf failed: {err!r}"
    if several:  # the earliest over ranks, the same everywhere
        hits = [h for h in distributed.gather_objects(found) if h is not None]
        found = min(hits, key=lambda h: h.order) if hits else None
    return found, note

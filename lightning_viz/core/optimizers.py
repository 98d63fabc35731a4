"""Which optimizer steps which parameter, read from the optimizers' current param groups.

Read at every capture, so that a param group added mid-training (unfreezing) counts from then on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def optimizer_owners(optimizers: Sequence[torch.optim.Optimizer]) -> dict[int, set[int]]:
    """``id(parameter)`` -> the indices of the optimizers whose param groups hold it.

    Args:
        optimizers: the Trainer's optimizers, in order (``trainer.optimizers``).

    Returns:
        A mapping for every parameter some optimizer holds (a parameter no optimizer holds is absent).
    """
    owners: dict[int, set[int]] = {}
    for i, opt in enumerate(optimizers):
        for group in opt.param_groups:
            for p in group["params"]:
                owners.setdefault(id(p), set()).add(i)
    return owners


def trained_now(
    optimizers: Sequence[torch.optim.Optimizer],
    named: Sequence[tuple[str, torch.Tensor]],
    index: int | None = None,
) -> tuple[dict[str, bool], list[tuple[str, torch.Tensor]]]:
    """Which parameters train now: ``requires_grad`` and held by an optimizer (when no optimizer holds any
    of them, a strategy steps copies: ``requires_grad`` decides).

    Args:
        optimizers: the Trainer's optimizers.
        named: the model's ``(name, parameter)`` in model order.
        index: only those optimizer ``index`` steps (a parameter no optimizer holds counts as the first's).

    Returns:
        name -> whether it trains, and the ``(name, parameter)`` that train (with ``index``: under it).
    """
    owners = optimizer_owners(optimizers)
    known = any(id(p) in owners for _, p in named)
    trains = {n: p.requires_grad and (id(p) in owners or not known) for n, p in named}
    chosen = [
        (n, p)
        for n, p in named
        if trains[n] and (index is None or index in owners.get(id(p), {0}) or not known)
    ]
    return trains, chosen

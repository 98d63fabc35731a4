"""Logged metric names: the panels they group into, and the names of the learning-rate series.

Panels pick metrics by case-insensitive glob patterns over the logged names (:func:`matches`); with
``include_other``, the metrics no pattern claimed get one panel per quantity (:func:`quantity`: ``val_mae``,
``train_mae_step`` and ``test_mae/dataloader_idx_1`` are all ``mae``). :func:`unmatched_patterns` says which
patterns matched no logged name and the closest names. :func:`lr_names` names each optimizer param group's
learning rate after Lightning's ``LearningRateMonitor`` (``lr-Adam``, ``lr-SGD/pg2``).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from difflib import get_close_matches
from typing import Any

import torch

STAGE_PREFIX = re.compile(r"^(train|training|val|valid|validation|test)[_/.-]", re.IGNORECASE)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` matches any of the glob ``patterns``, ignoring case."""
    return any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)


def quantity(name: str) -> str:
    """What a metric measures, for the panel of a metric no pattern claims: ``val_mae``,
    ``train_mae_step`` and ``test_mae/dataloader_idx_1`` are all ``mae``."""
    q = re.sub(r"_(step|epoch)$", "", name.split("/dataloader_idx_")[0])
    return STAGE_PREFIX.sub("", q) or name


def assemble_panels(
    names: Sequence[str], panels: Mapping[str, Sequence[str]], include_other: bool
) -> list[dict[str, Any]]:
    """The panels to draw, in order: ``[{"title": ..., "series": [name, ...]}, ...]``, none empty.

    Args:
        names: the logged metric names, in the order the series are listed in a panel.
        panels: panel title -> glob patterns; a name goes into every panel it matches.
        include_other: add one panel per :func:`quantity` of the names no pattern matched, titled by the
            quantity (``"<quantity> (other)"`` where a ``panels`` title already has that name).
    """
    out = [{"title": t, "series": [n for n in names if matches(n, p)]} for t, p in panels.items()]
    if include_other:
        claimed = {n for p in out for n in p["series"]}
        titles = {p["title"] for p in out}
        others: dict[str, list[str]] = {}
        for n in names:
            if n not in claimed:
                others.setdefault(quantity(n), []).append(n)
        for q, series in others.items():
            out.append({"title": f"{q} (other)" if q in titles else q, "series": series})
    return [p for p in out if p["series"]]


def unmatched_patterns(
    names: Sequence[str], panels: Mapping[str, Sequence[str]], log_lr: bool
) -> tuple[list[str], list[str]]:
    """The ``panels`` patterns that match none of ``names``, and the names closest to them.

    A pattern starting with ``lr`` is not counted when learning rates are not recorded (``log_lr`` false).

    Returns:
        ``(unmatched, closest)``: ``unmatched`` as ``"<title>: '<pattern>'"`` in ``panels`` order;
        ``closest`` the sorted names close to an unmatched pattern without its ``*`` (empty when none are,
        or when ``names`` is empty).
    """
    unmatched = [
        f"{title}: {p!r}"
        for title, patterns in panels.items()
        for p in patterns
        if not any(matches(n, [p]) for n in names) and not (p.lower().startswith("lr") and not log_lr)
    ]
    closest = {
        c
        for u in unmatched
        for c in get_close_matches(u.split(": ", 1)[1].strip("'*"), names, n=3, cutoff=0.3)
    }
    return unmatched, sorted(closest)


def lr_names(optimizers: Sequence[torch.optim.Optimizer]) -> list[str]:
    """The name of each param group's learning rate, in the optimizers' order: ``lr-<Optimizer class>``,
    with ``-K`` (K = 0, 1, ...) when several optimizers share a class, and ``/<group name>`` or ``/pgN``
    (N from 1) when an optimizer has several param groups.

    Lightning's ``LearningRateMonitor`` names them alike, except that it leaves the first of several
    optimizers of a class without ``-0`` and appends the name of an optimizer's one named group."""
    classes = Counter(type(o).__name__ for o in optimizers)
    seen: Counter[str] = Counter()
    names = []
    for opt in optimizers:
        cls = type(opt).__name__
        base = f"lr-{cls}" + (f"-{seen[cls]}" if classes[cls] > 1 else "")
        seen[cls] += 1
        for j, group in enumerate(opt.param_groups):
            several = len(opt.param_groups) > 1
            names.append(f"{base}/{group.get('name') or f'pg{j + 1}'}" if several else base)
    return names

"""Which value of a logged metric is best: its minimum, its maximum, or none known.

:func:`best_direction` takes it from, in this order: the user's ``mode`` (a name or a glob pattern); no best
for a learning rate; the ``higher_is_better`` of the torchmetrics ``Metric`` behind the value; the ``mode``
of a ``ModelCheckpoint`` or ``EarlyStopping`` that monitors it; the minimum for a name containing ``loss``.
:func:`metric_attributes` and :func:`monitor_modes` read the two middle sources as plain data, and
:func:`monitor_modes` lists the monitors whose ``mode`` keeps the worse end of their torchmetrics metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torchmetrics import Metric

from lightning_viz.core.metric_names import matches

Mode = Literal["min", "max"]


class Mismatch(NamedTuple):
    """A monitoring callback whose ``mode`` disagrees with the torchmetrics metric of what it monitors."""

    monitor: str
    mode: Mode
    owner: str  # the monitoring callback's class name
    higher_is_better: bool


def direction_of(higher_is_better: Any) -> Mode | None:
    """``"max"`` for a true ``higher_is_better``, ``"min"`` for a false one, ``None`` for ``None``."""
    return None if higher_is_better is None else ("max" if higher_is_better else "min")


def best_direction(
    name: str,
    *,
    mode: Mapping[str, Mode],
    lr_names: Iterable[str],
    base: Mapping[str, str],
    better: Mapping[str, bool | None],
    monitors: Mapping[str, tuple[Mode, str]],
) -> tuple[Mode | None, str]:
    """Which value of the metric ``name`` is best, and what says so.

    Args:
        name: the logged name.
        mode: the user's metric name or glob pattern -> ``"min"`` or ``"max"``; an exact name comes first.
        lr_names: the names of the learning-rate series (besides every name starting with ``lr-``).
        base: logged name -> its name before Lightning's ``_step``/``_epoch`` suffix.
        better: metric name -> ``higher_is_better`` of the torchmetrics ``Metric`` behind it.
        monitors: monitored name -> ``(mode, monitoring callback's class name)``.

    Returns:
        ``(mode, source)``: ``mode`` is ``"min"``, ``"max"`` or ``None`` (no best point); ``source`` is
        ``"mode"``, ``"torchmetrics"``, the monitoring callback's class name, ``"loss"`` (the name
        convention), ``"learning rate"`` or ``"unknown"``.
    """
    if name in mode:
        return mode[name], "mode"
    for pattern, m in mode.items():
        if matches(name, [pattern]):
            return m, "mode"
    if name.startswith("lr-") or name in lr_names:
        return None, "learning rate"
    names = (name, base.get(name, name))
    for n in names:
        if better.get(n) is not None:
            return direction_of(better[n]), "torchmetrics"
    for n in names:
        if n in monitors:
            return monitors[n]
    if "loss" in name.lower():
        return "min", "loss"
    return None, "unknown"


def metric_attributes(module: nn.Module | None) -> dict[str, bool | None]:
    """The ``higher_is_better`` of each torchmetrics ``Metric`` the module (the LightningModule) holds, under
    its attribute path and its last part (``self.val_mae`` is logged as ``"val_mae"``); the first one named
    so wins."""
    out: dict[str, bool | None] = {}
    for path, sub in module.named_modules() if module is not None else ():
        if isinstance(sub, Metric) and path:
            for n in {path, path.rsplit(".", 1)[-1]}:
                out.setdefault(n, getattr(sub, "higher_is_better", None))
    return out


def monitor_modes(
    callbacks: Iterable[Any], better: Mapping[str, bool | None]
) -> tuple[dict[str, tuple[Mode, str]], list[Mismatch]]:
    """The ``mode`` of each ``ModelCheckpoint`` and ``EarlyStopping`` that monitors a metric.

    Args:
        callbacks: the Trainer's callbacks.
        better: metric name -> ``higher_is_better`` of its torchmetrics ``Metric`` (``None``: not known).

    Returns:
        ``(monitors, mismatches)``: monitored name -> ``(mode, callback class name)``, the first callback
        monitoring a name winning; and each callback whose ``mode`` keeps the worse end by ``better``.
    """
    monitors: dict[str, tuple[Mode, str]] = {}
    mismatches: list[Mismatch] = []
    for cb in callbacks:
        monitor, mode = getattr(cb, "monitor", None), getattr(cb, "mode", None)
        if isinstance(cb, (ModelCheckpoint, EarlyStopping)) and monitor and mode in ("min", "max"):
            monitors.setdefault(str(monitor), (mode, type(cb).__name__))
            hib = better.get(str(monitor))
            if hib is not None and direction_of(hib) != mode:
                mismatches.append(Mismatch(str(monitor), mode, type(cb).__name__, bool(hib)))
    return monitors, mismatches

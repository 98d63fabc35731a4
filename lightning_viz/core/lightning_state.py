"""Every read of private state (Lightning's, and torch's GradScaler), each with the version it was written for and why.

Lightning gives callbacks no public view of some things they need (the step its loggers use, every logged
value of every dataloader). Each read is one small function here, so a Lightning upgrade that moves them
breaks in one place, and each returns a fallback or ``None`` instead of raising.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import Trainer

Logged = tuple[str, torch.Tensor, str, Any]  # name, value, name before _step/_epoch, torchmetrics Metric


def logger_step(trainer: Trainer, *, epoch_end: bool = False) -> int:
    """The step Lightning's loggers use for what is logged now (``global_step`` if that is unavailable).

    Lightning 2.0-2.6 logs at ``fit_loop.epoch_loop._batches_that_stepped`` (private; no public counterpart:
    ``global_step`` counts optimizer steps, which differ under gradient accumulation and manual optimization).
    """
    stepped = getattr(
        getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None
    )
    if not isinstance(stepped, int):
        return int(trainer.global_step)
    # Lightning logs epoch-end metrics at the step of the last batch, before the counter moves on.
    return max(stepped - 1, 0) if epoch_end else stepped


def logged_values(trainer: Trainer, on_step: bool) -> list[Logged] | None:
    """Every value logged with ``self.log`` for the loggers in the loop that runs now, whatever dataloader
    logged it: ``(name, value, name before _step/_epoch, torchmetrics Metric or None)``; ``None`` when
    Lightning's state cannot be read this way.

    Lightning 2.0-2.6 keeps them in ``trainer._results`` (private), a ``_ResultCollection`` of
    ``_ResultMetric``. Its ``metrics(on_step)`` keeps only those of the current ``dataloader_idx``, which is
    ``None`` when an evaluation ends, so the values of ``val_loss/dataloader_idx_0`` and ``_1`` never came
    through it. Each one is read here with Lightning's own ``_get_cache`` (the value its loggers get) and
    ``_forked_name`` (the ``_step``/``_epoch`` and ``/dataloader_idx_N`` names), unfiltered. A value logged
    as a Metric object keeps it in ``_ResultMetric.value`` (``is_tensor`` false): its ``higher_is_better``
    says which way is best.
    """
    results = getattr(trainer, "_results", None)
    if results is None:
        return []
    try:
        out = []
        for item in list(results.values()):
            if item.has_reset or not item.meta.logger:
                continue
            value = results._get_cache(item, on_step)
            if isinstance(value, torch.Tensor):
                base, name = results._forked_name(item, on_step)
                out.append((name, value, base, None if item.is_tensor else item.value))
        return out
    except AttributeError:  # another Lightning: the caller falls back to trainer.callback_metrics
        return None


def step_value(trainer: Trainer, names: tuple[str, ...]) -> torch.Tensor | None:
    """The value logged at this step under the first of ``names`` that was logged (e.g. ``train_loss``,
    ``train_loss_step``), as the tensor Lightning holds; ``None`` when none was logged on step level.

    Lightning 2.0-2.6 keeps it in ``trainer._results`` (private). Its public-facing ``metrics(True)`` would
    also turn every ``prog_bar`` value into a Python number (a host synchronisation per value per step), so
    the one value is read with ``_get_cache``, which copies nothing.
    """
    results = getattr(trainer, "_results", None)
    if results is None:
        return None
    try:
        found: dict[str, torch.Tensor] = {}
        for item in list(results.values()):
            if item.has_reset or not item.meta.on_step:
                continue
            value = results._get_cache(item, True)
            if isinstance(value, torch.Tensor):
                _, forked = results._forked_name(item, True)
                for name in (item.meta.name, forked):
                    found.setdefault(name, value)
        return next((found[n] for n in names if n in found), None)
    except AttributeError:  # another Lightning: the health callback then has no loss to examine
        return None


def fit_dataloaders(trainer: Trainer, which: Literal["train", "val"]) -> Any:
    """The training or validation dataloader(s) of the fit being set up (``None`` when it has none), as the
    LightningModule's or DataModule's ``*_dataloader()`` returns them.

    Lightning 2.0-2.6 keeps where they come from in ``fit_loop._data_source`` and
    ``fit_loop.epoch_loop.val_loop._data_source`` (private ``_DataLoaderSource``). The public
    ``trainer.train_dataloader`` / ``trainer.val_dataloaders`` are set only when each loop starts, after
    ``setup``, where a callback checks its arguments against the data (``sample_size`` against the dataset).
    """
    fit_loop = trainer.fit_loop
    source = fit_loop._data_source if which == "train" else fit_loop.epoch_loop.val_loop._data_source
    return source.dataloader() if source.is_defined() else None


def gradients_still_scaled(scaler: torch.amp.GradScaler, optimizer: Any) -> bool:
    """Whether ``optimizer``'s gradients still carry ``scaler``'s scale (``unscale_`` has not run for it
    since the last ``update()``); see :mod:`~lightning_viz.core.precision` for the Lightning code behind it.

    torch >= 1.6 (still in 2.14) records it in ``scaler._per_optimizer_states[id(optimizer)]["stage"]``
    (private; ``OptState.READY`` before ``unscale_``, ``UNSCALED`` after; no public accessor). Lightning
    2.0-2.6 wraps the optimizer in a ``LightningOptimizer`` whose torch optimizer is ``_optimizer``
    (private). Should the scaler's state move, Lightning's own rule answers: only optimizers with
    ``_step_supports_amp_scaling`` (torch's fused ones) unscale inside ``step()``, after the hook.
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer
    states = getattr(scaler, "_per_optimizer_states", None)
    if isinstance(states, dict):
        state = states.get(id(optimizer))  # .get: never create an entry in the defaultdict
        stage = state.get("stage") if isinstance(state, dict) else None
        return stage is None or getattr(stage, "name", None) == "READY"
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))

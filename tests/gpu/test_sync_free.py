"""No host-device synchronisation on steps that do not log, through a real Trainer fit on CUDA.

The whole of every non-logging training step (from the first callback's ``on_train_batch_start`` to the
last callback's ``on_train_batch_end``: the forward and backward passes, the optimizer step and every
callback hook in between) runs under ``torch.cuda.set_sync_debug_mode("error")``, with the core callbacks
on, at their defaults and at a dense schedule. Which steps log comes from the callbacks' own schedules
(:mod:`lightning_viz.core.schedule`), cross-checked against the steps written out here. A narrower test
guards the callbacks' own per-step hooks alone (moved here from ``tests/core/test_hot_path.py``, whose
helpers it uses), so that a sync inside Lightning or PyTorch is told apart from one of ours. The CPU
counterpart (forward hooks, ``histogram_set`` calls and tensor-to-host conversions counted on non-logging
steps) is ``tests/core/test_hot_path.py``.
"""

from __future__ import annotations

import traceback
import warnings
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer

import lightning_viz as lv
from lightning_viz.core.base import VizCallback
from tests.core.test_hot_path import instrument, logging_step, viz_callbacks
from tests.gpu.devices import device_trainer, needs_cuda
from tests.helpers import RandomImages, TinyCNN

pytestmark = needs_cuda
SYNC = "synchroniz"  # in the message of every error (and warning) sync debug mode raises


def core_callbacks(every: int | None) -> list[Callback]:
    """The core callbacks: at their defaults (``every=None``) or all capturing every ``every`` steps."""
    if every is None:
        return [
            lv.ModelSummaryCallback(),
            lv.WeightHistogramCallback(),
            lv.ActivationMapCallback(),
            lv.CurvePlotCallback(),
            lv.TrainingHealthCallback(),
        ]
    return [
        lv.ModelSummaryCallback(),
        lv.WeightHistogramCallback(every_n_steps=every),
        lv.ActivationMapCallback(every_n_epochs=1, every_n_steps=every),
        lv.CurvePlotCallback(every_n_steps=every),
        lv.TrainingHealthCallback(every_n_steps=every),
    ]


class SyncGuard:
    """Turns sync debug mode ``"error"`` on for the whole of each non-logging training step.

    ``first`` goes before every other callback (on at its ``on_train_batch_start``), ``last`` after them
    (off at its ``on_train_batch_end``). A step logs when ``k`` or ``k + 1`` (``k`` = ``global_step`` at its
    start) is a multiple of some callback's ``every_n_steps``, or when it is the last batch of an epoch
    (captures due by epoch happen there).
    """

    def __init__(self, callbacks: list[Callback]) -> None:
        self.viz = [cb for cb in callbacks if isinstance(cb, VizCallback)]
        self.periods: set[int] = set()
        self.guarded: list[int] = []
        self.step: int | None = None  # the step under guard now
        self.first, self.last = _On(self), _Off(self)

    def logs(self, trainer: Trainer, batch_idx: int) -> bool:
        self.periods = {n for cb in self.viz if (n := cb.schedule.steps(trainer)) is not None}
        k = trainer.global_step
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        return last_batch or any(k % n == 0 or (k + 1) % n == 0 for n in self.periods)

    def on(self, trainer: Trainer, batch_idx: int) -> None:
        if not self.logs(trainer, batch_idx):
            self.step = trainer.global_step
            torch.cuda.set_sync_debug_mode("error")

    def off(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        if self.step is not None:
            self.guarded.append(self.step)
        self.step = None


class _On(Callback):
    def __init__(self, guard: SyncGuard) -> None:
        self.guard = guard

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.guard.on(trainer, batch_idx)

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        torch.cuda.set_sync_debug_mode("default")  # before any other callback handles the exception


class _Off(Callback):
    def __init__(self, guard: SyncGuard) -> None:
        self.guard = guard

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        self.guard.off()


def where(err: BaseException) -> str:
    """The innermost frames of ``err`` outside torch: who made the synchronising call."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/torch/" not in f.filename]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames[::-1][:4])


def test_sync_debug_mode_catches_a_sync():
    """The instrument is live: a device-to-host read under mode "error" raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match=SYNC):
            torch.ones(1, device="cuda").item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    ("every", "epochs", "n", "log_every", "periods"),
    [
        pytest.param(None, 1, 512, 10, {10, 50}, id="defaults"),  # histograms every 50, health and curves 10
        pytest.param(4, 2, 96, 4, {4}, id="every-4-steps"),
    ],
)
def test_non_logging_steps_never_synchronise(tmp_path, every, epochs, n, log_every, periods):
    callbacks = core_callbacks(every)
    guard = SyncGuard(callbacks)
    trainer = device_trainer(
        tmp_path,
        "cuda",
        [guard.first, *callbacks, guard.last],
        max_epochs=epochs,
        log_every_n_steps=log_every,
    )
    per_epoch = n // 8
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(TinyCNN(), RandomImages(n=n, batch_size=8))
    except RuntimeError as err:
        if SYNC not in str(err):
            raise
        pytest.fail(f"host-device sync in non-logging step {guard.step} at {where(err)}: {err}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # a sync inside a callback's `guard` block becomes a lightning-viz warning, not an exception
    synced = [str(w.message) for w in caught if SYNC in str(w.message)]
    assert not synced, f"host-device sync in a callback on a non-logging step: {synced[:3]}"
    assert guard.periods == periods, guard.periods
    expected = [
        e * per_epoch + b
        for e in range(epochs)
        for b in range(per_epoch - 1)
        if all((e * per_epoch + b) % p and (e * per_epoch + b + 1) % p for p in periods)
    ]
    assert guard.guarded == expected and len(expected) >= 12, (guard.guarded, expected)


def test_callback_hooks_never_synchronise_on_non_logging_steps(tmp_path):
    """The callbacks' own per-step hooks alone, on the steps where they record nothing, under mode "error"."""
    callbacks = viz_callbacks()
    errors: list[tuple[str, str, int, str]] = []
    guarded: list[tuple[str, str, int]] = []

    def around(name: str, hook: str, step: int, call: Any) -> Any:
        if logging_step(hook, step):
            return call()
        guarded.append((name, hook, step))
        torch.cuda.set_sync_debug_mode("error")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = call()
            errors.extend((name, hook, step, str(w.message)) for w in caught if SYNC in str(w.message))
            return out
        except RuntimeError as err:
            errors.append((name, hook, step, f"{where(err)}: {err}"))
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")

    instrument(callbacks, around)
    trainer = device_trainer(tmp_path, "cuda", callbacks, max_epochs=1, log_every_n_steps=4)
    try:
        trainer.fit(TinyCNN(), RandomImages(n=96, batch_size=8))
    except RuntimeError:
        if not errors:  # not a sync in our hooks
            raise
    assert not errors, f"host-device sync in a callback hook on a non-logging step: {errors[:3]}"
    assert {s for _, _, s in guarded} >= {1, 2, 5, 6, 9, 10}

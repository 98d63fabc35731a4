"""Activation capture holds no GPU memory once it is over, and GPU memory does not grow over 200 steps.

``torch.cuda.memory_allocated`` (the bytes of live tensors, at the caching allocator's 512-byte
granularity) is read just before and just after ActivationMapCallback's capture at the start of every 10th
step: after equals before (the sample batch, the hooks' outputs and the reduced statistics are all gone from
the device), and the level before each capture is the same from the second capture to the last (the first
also allocates cuBLAS's workspace, which then stays). With the whole core suite on, the level at those
steps does not grow either. CUDA only: the CPU has no allocator counter to read.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

import lightning_viz as lv
from tests.gpu.devices import device_trainer, needs_cuda
from tests.helpers import RandomImages, TinyCNN

pytestmark = needs_cuda
EVERY, STEPS, BATCH = 10, 200, 8


class Allocated(Callback):
    """Reads ``memory_allocated`` at the start of every ``EVERY``-th step, before (``reset=True``: also
    resets the peak) or after the callbacks listed between two of these."""

    def __init__(self, reset: bool) -> None:
        self.reset = reset
        self.bytes: dict[int, int] = {}
        self.peak: dict[int, int] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % EVERY:
            return
        self.bytes[step] = torch.cuda.memory_allocated()
        if self.reset:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak[step] = torch.cuda.max_memory_allocated()


def suite() -> list[Callback]:
    return [
        lv.ModelSummaryCallback(),
        lv.WeightHistogramCallback(every_n_steps=EVERY),
        lv.ActivationMapCallback(every_n_epochs=None, every_n_steps=EVERY),
        lv.CurvePlotCallback(every_n_steps=EVERY),
        lv.TrainingHealthCallback(every_n_steps=EVERY),
    ]


def fit(tmp_path, callbacks: list[Callback]) -> tuple[Allocated, Allocated]:
    before, after = Allocated(reset=True), Allocated(reset=False)
    trainer = device_trainer(tmp_path, "cuda", [before, *callbacks, after], max_epochs=1)
    trainer.fit(TinyCNN(), RandomImages(n=STEPS * BATCH, batch_size=BATCH))
    assert trainer.global_step == STEPS
    assert sorted(before.bytes) == list(range(0, STEPS, EVERY)), sorted(before.bytes)
    return before, after


def no_growth(levels: dict[int, int]) -> None:
    steady = {s: b for s, b in levels.items() if s >= EVERY}
    first = steady[EVERY]
    grown = {s: b - first for s, b in steady.items() if b != first}
    assert not grown, f"GPU memory at the start of step k differs from step {EVERY}'s by (bytes): {grown}"


def test_activation_capture_leaves_no_gpu_memory_behind(tmp_path):
    am = lv.ActivationMapCallback(every_n_epochs=None, every_n_steps=EVERY, sample_size=BATCH)
    before, after = fit(tmp_path, [am])
    assert am.history[am.layer_names[0]]["step"] == list(range(0, STEPS, EVERY))
    # the capture did run on the GPU: its forward pass raised the peak above the level before it
    assert all(after.peak[s] > before.bytes[s] for s in after.peak), (after.peak, before.bytes)
    held = {s: after.bytes[s] - before.bytes[s] for s in before.bytes if s >= EVERY}
    assert not any(held.values()), f"GPU bytes still held after the activation capture, by step: {held}"
    no_growth(before.bytes)


def test_gpu_memory_does_not_grow_with_the_core_suite(tmp_path):
    before, _ = fit(tmp_path, suite())
    no_growth(before.bytes)


def test_a_leak_would_be_seen(tmp_path):
    """The instrument is live: a callback that keeps 512 bytes on the GPU at every step fails it."""
    kept: list[torch.Tensor] = []
    leak = 512

    class Leaky(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            kept.append(torch.empty(leak, dtype=torch.uint8, device="cuda"))

    before, after = fit(tmp_path, [Leaky()])
    assert all(after.bytes[s] - before.bytes[s] == leak for s in before.bytes)
    with pytest.raises(AssertionError, match="differs"):
        no_growth(before.bytes)

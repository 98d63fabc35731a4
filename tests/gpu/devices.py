"""What the tests of ``tests/gpu`` share: the devices they run on, and a Trainer on one of them.

Every test here is marked ``gpu`` (``make gpu-check`` runs this folder). A check that can be made on the
CPU too is parametrized over :data:`DEVICES`, so its CPU variant runs in the normal suite; the CUDA
variant, and every CUDA-only test, skips with :data:`CUDA_REASON` where no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

CUDA_REASON = "needs a CUDA device: runs under `make gpu-check` on a GPU machine"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=needs_cuda)]


class TrainedOn(Callback):
    """The device types of the model's parameters at the start of every training batch (Lightning moves the
    model back to the CPU at the end of ``fit``, so the device is read while it trains)."""

    def __init__(self) -> None:
        self.types: set[str] = set()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.types.update(p.device.type for p in pl_module.parameters())


def trained_on(trainer: Trainer) -> set[str]:
    """The device types the model's parameters were on while ``trainer`` (from :func:`device_trainer`)
    trained."""
    return next(c for c in trainer.callbacks if isinstance(c, TrainedOn)).types


def device_trainer(tmp_path: Path, device: str, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    """A one-device Trainer (``"cpu"`` or ``"cuda"``) with a TensorBoard logger under ``tmp_path`` and no
    checkpointing, progress bar or Lightning model summary; ``kwargs`` go to the Trainer. A
    :class:`TrainedOn` callback is added last (:func:`trained_on` reads it)."""
    kwargs.setdefault("logger", TensorBoardLogger(str(tmp_path), name="tb"))
    kwargs.setdefault("log_every_n_steps", 1)
    return Trainer(
        default_root_dir=str(tmp_path),
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        callbacks=[*callbacks, TrainedOn()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )

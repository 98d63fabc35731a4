"""Tiny models and data for fast CPU tests."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyCNN(LightningModule):
    """A 2-conv classifier on 1x8x8 images."""

    def __init__(self, lr: float = 0.05, n_classes: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, n_classes)
        self.example_input_array = torch.zeros(2, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), on_epoch=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyMLP(LightningModule):
    """A model with no convolution layers."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RandomImages(LightningDataModule):
    """Deterministic random 1x8x8 images with 4 classes."""

    def __init__(self, n: int = 64, batch_size: int = 16, with_val: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.batch_size = batch_size
        self.with_val = with_val

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        if not self.with_val:
            return []
        return DataLoader(TensorDataset(self.x[:32], self.y[:32]), batch_size=self.batch_size)


def make_trainer(tmp_path, callbacks, max_epochs: int = 2, **kwargs) -> Trainer:
    """A CPU trainer with a TensorBoard logger under tmp_path and no checkpointing or progress bar."""
    from lightning.pytorch.loggers import TensorBoardLogger

    kwargs.setdefault("logger", TensorBoardLogger(str(tmp_path), name="tb"))
    return Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def read_events(log_dir):
    """A loaded tensorboard EventAccumulator over a run directory (images and histograms kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(log_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0, "tensors": 0}
    )
    acc.Reload()
    return acc

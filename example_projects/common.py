"""Pieces the example data modules share."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset


def seeded_loader(
    dataset: Dataset | None, *, owner: str, batch_size: int, shuffle: bool, seed: int, num_workers: int
) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by ``seed`` (the same batches on every run).

    Args:
        dataset: the dataset; ``None`` means ``setup()`` has not run yet, which is an error.
        owner: the data module's name, for that error message.
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (reproducibly).
        seed: seed of the shuffling generator.
        num_workers: worker processes (kept alive between epochs when > 0).
    """
    if dataset is None:
        raise RuntimeError(f"{owner}.setup() must run before its dataloaders are requested")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class SeededDataModule(LightningDataModule):
    """Base of the example data modules: reproducible loaders from ``batch_size``, ``seed`` and
    ``num_workers``, which the subclass sets in its ``__init__``."""

    batch_size: int
    seed: int
    num_workers: int

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        return seeded_loader(
            dataset,
            owner=type(self).__name__,
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
        )

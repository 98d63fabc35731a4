"""Pieces the example data modules share."""

from __future__ import annotations

import torch
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

"""DigitsDataModule: scikit-learn's 1797 bundled 8x8 handwritten digits, split deterministically."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from example_projects.common import SeededDataModule


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(images, labels)``: float images ``(N, 1, 8, 8)`` scaled to ``[0, 1]``, int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The digits example needs scikit-learn: pip install 'lightning-viz[examples]'"
        ) from err
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images, labels


class DigitsDataModule(SeededDataModule):
    """scikit-learn's handwritten digits (1797 grayscale 8x8 images, 10 classes), shipped offline.

    Pixel values 0..16 are scaled to ``[0, 1]``. A permutation seeded by ``seed`` splits the images into a
    training set and a held-out set of ``val_fraction`` of them; the held-out set serves validation, test
    and prediction (the dataset is too small for a third split).

    Args:
        batch_size: images per batch.
        val_fraction: fraction of the images held out for validation, in ``(0, 1)``.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: seed of the train/validation split and of the training-set shuffling.
    """

    def __init__(
        self, batch_size: int = 64, val_fraction: float = 0.2, num_workers: int = 0, seed: int = 0
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be strictly between 0 and 1; got {val_fraction!r}")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0; got {num_workers!r}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and split them (the same split on every call and every rank)."""
        if self.train_set is not None:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, round(len(labels) * self.val_fraction))
        val_idx, train_idx = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``(images, labels)``."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out batches, in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out set again (see the class docstring)."""
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The held-out set again, for ``lightning-viz predict``."""
        return self._loader(self.val_set, shuffle=False)

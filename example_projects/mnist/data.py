"""MNISTDataModule: torchvision's MNIST (28x28 digits), downloaded on first use."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from example_projects.common import SeededDataModule

OFFLINE_HINT = "use configs/quickstart.yaml (scikit-learn digits, works offline) instead"


def _one_line(err: BaseException) -> str:
    """The first non-empty line of an error message (torchvision's name each mirror on a line of its own)."""
    for line in str(err).splitlines():
        line = line.strip().strip("<>")
        if line and not line.startswith(("Error downloading", "Tried ")):
            return line
    return type(err).__name__


class MNISTDataModule(SeededDataModule):
    """MNIST (70,000 grayscale 28x28 digits) from torchvision, scaled to ``[0, 1]``.

    ``prepare_data`` downloads it into ``data_dir`` on the first run. When that is impossible (offline, or
    ``download: false`` with no data there), it stops with one line that says so, where the data was
    expected, and to use ``configs/quickstart.yaml`` instead. The last ``val_size`` images of the training
    set (after a permutation seeded by ``seed``) are held out for validation; the official 10,000 test
    images serve ``test`` and ``predict``.

    Args:
        data_dir: directory that holds (or receives) the data, as ``<data_dir>/MNIST/raw``.
        download: download the data when it is not in ``data_dir`` yet.
        batch_size: images per batch.
        val_size: training images held out for validation.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: seed of the train/validation split and of the training-set shuffling.
    """

    def __init__(
        self,
        data_dir: str = "data/mnist",
        download: bool = True,
        batch_size: int = 128,
        val_size: int = 5000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        if not 0 < val_size < 60000:
            raise ValueError(f"`val_size` must be between 1 and 59999; got {val_size!r}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _dataset(self, train: bool, download: bool) -> Dataset:
        from torchvision import datasets, transforms

        try:
            return datasets.MNIST(
                self.data_dir, train=train, download=download, transform=transforms.ToTensor()
            )
        except (RuntimeError, OSError) as err:
            where = Path(self.data_dir, "MNIST", "raw").resolve()
            what = "download failed" if download else "data not found and `download` is false"
            # SystemExit: the command line prints this one line, with no traceback, and exits with status 1.
            raise SystemExit(
                f"MNIST {what} ({_one_line(err)}); expected the data in {where}; {OFFLINE_HINT}."
            ) from None

    def prepare_data(self) -> None:
        """Download MNIST if needed (called on one process per node)."""
        self._dataset(train=True, download=self.download)
        self._dataset(train=False, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        """Open the datasets and split off the validation images (the same split on every rank)."""
        if self.train_set is not None:
            return
        full = self._dataset(train=True, download=False)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.train_set = Subset(full, order[: -self.val_size])
        self.val_set = Subset(full, order[-self.val_size :])
        self.test_set = self._dataset(train=False, download=False)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``(images, labels)``."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out training images, in a fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The official 10,000 test images."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The official test images, for ``lightning-viz predict``."""
        return self._loader(self.test_set, shuffle=False)

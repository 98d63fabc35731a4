"""CIFAR10DataModule: CIFAR-10 through torchvision's download, or a clearly flagged synthetic stand-in."""

from __future__ import annotations

import socket

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset, TensorDataset

from example_projects.common import SeededDataModule

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
OFFLINE_LINE = (
    "CIFAR10DataModule: CIFAR-10 is not available ({why}); training on a SYNTHETIC stand-in (random "
    "class-coloured striped 32x32 images), NOT CIFAR-10. Go online, or set data.init_args.synthetic=false "
    "to fail instead."
)


def synthetic_cifar(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised 3x32x32 images in 10 classes: a class colour, class-oriented stripes, noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    colours = torch.rand(10, 3, 1, 1, generator=torch.Generator().manual_seed(1234))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = labels.float()[:, None, None] * (torch.pi / 10)
    stripes = torch.sin((xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.8)[:, None]
    images = 0.5 * colours[labels] + 0.25 * stripes + 0.25 * torch.rand(n, 3, 32, 32, generator=g)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (images.clamp(0, 1) - mean) / std, labels


class CIFAR10DataModule(SeededDataModule):
    """CIFAR-10 (50000 training, 10000 test images used for validation), normalised, random crop and flip.

    With ``synthetic: null`` it downloads CIFAR-10 into ``data_dir`` the first time and, when that fails
    (offline), says so in one line and uses a synthetic stand-in so the example still runs.

    Args:
        data_dir: where torchvision keeps (or downloads) CIFAR-10.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        synthetic: ``true`` always uses the synthetic stand-in, ``false`` requires the real data, ``null``
            tries the real data and falls back to the stand-in.
        synthetic_size: training images of the stand-in (a fifth as many for validation).
        download_timeout: seconds to wait for the download server before giving up.
        seed: seed of the stand-in and of the shuffling.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 2,
        synthetic: bool | None = None,
        synthetic_size: int = 5000,
        download_timeout: float = 20.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1; got {batch_size!r}")
        self.save_hyperparameters()
        self.data_dir, self.batch_size, self.num_workers = data_dir, batch_size, num_workers
        self.synthetic, self.synthetic_size = synthetic, synthetic_size
        self.download_timeout, self.seed = download_timeout, seed
        self.is_synthetic = bool(synthetic)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Download CIFAR-10 once per node (skipped with ``synthetic: true``; a failure is handled in setup)."""
        if self.synthetic:
            return
        from torchvision.datasets import CIFAR10

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.download_timeout)
        try:
            for train in (True, False):
                CIFAR10(self.data_dir, train=train, download=True)
        except Exception as err:  # offline: setup() reports it and falls back (or raises)
            self._download_error = err
        finally:
            socket.setdefaulttimeout(previous)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not self.synthetic:
            try:
                self.train_set, self.val_set = self._real()
                return
            except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
                why = getattr(self, "_download_error", None) or err
                if self.synthetic is False:
                    raise RuntimeError(f"CIFAR-10 is not available in {self.data_dir!r}: {why}") from err
                rank_zero_warn(OFFLINE_LINE.format(why=f"{type(why).__name__}: {str(why)[:80]}"))
        self.is_synthetic = True
        self.train_set = TensorDataset(*synthetic_cifar(self.synthetic_size, self.seed))
        self.val_set = TensorDataset(*synthetic_cifar(max(self.synthetic_size // 5, 1), self.seed + 1))

    def _real(self) -> tuple[Dataset, Dataset]:
        from torchvision import transforms as T
        from torchvision.datasets import CIFAR10

        norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *norm])
        return (
            CIFAR10(self.data_dir, train=True, transform=train_tf),
            CIFAR10(self.data_dir, train=False, transform=T.Compose(norm)),
        )

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

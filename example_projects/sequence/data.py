"""SequenceDataModule: generated token sequences for a retrieval task that attention has to solve."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from example_projects.common import SeededDataModule

MARKER = 1  # token 0 is the [CLS] slot the model prepends; 1 marks the position to read


def make_sequences(n: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``length`` tokens in ``2 .. vocab-1`` with one marker token (1) at a random
    position; the label is the token right after the marker, minus 2 (so ``vocab - 2`` classes)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n, length), generator=g)
    where = torch.randint(0, length - 1, (n,), generator=g)
    rows = torch.arange(n)
    tokens[rows, where] = MARKER
    labels = tokens[rows, where + 1] - 2
    return tokens, labels


class SequenceDataModule(SeededDataModule):
    """Generated sequences (no download): find the marker, report the token after it.

    Args:
        n_train: training sequences.
        n_val: validation sequences (also used for test and predict).
        length: tokens per sequence.
        vocab: vocabulary size (>= 4); the task has ``vocab - 2`` classes.
        batch_size: sequences per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the generated data and of the shuffling.
    """

    def __init__(
        self,
        n_train: int = 4096,
        n_val: int = 512,
        length: int = 16,
        vocab: int = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, low in (("n_train", n_train, 1), ("n_val", n_val, 1), ("length", length, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}; got {value!r}")
        if vocab < 4:
            raise ValueError(f"`vocab` must be >= 4; got {vocab!r}")
        self.save_hyperparameters()
        self.n_train, self.n_val, self.length, self.vocab = n_train, n_val, length, vocab
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = TensorDataset(*make_sequences(self.n_train, self.length, self.vocab, self.seed))
            self.val_set = TensorDataset(*make_sequences(self.n_val, self.length, self.vocab, self.seed + 1))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

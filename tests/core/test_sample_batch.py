"""The fixed sample batch: which dataloader it comes from, and its examples as the model is fed."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_viz.core.model_input import ModelInput, from_batch
from lightning_viz.core.sample_batch import dataset_size, examples_at, first_examples, first_loader


class Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter((torch.full((2,), float(i)), i) for i in range(self.n))


def feed(batch):
    return from_batch(batch, lambda x: x)


def test_first_loader_looks_into_lists_dicts_and_combined_loaders():
    a, b = DataLoader(TensorDataset(torch.zeros(3, 1))), DataLoader(TensorDataset(torch.ones(2, 1)))
    assert first_loader(a) is a
    assert first_loader([a, b]) is a
    assert first_loader({"x": b, "y": a}) is b
    assert first_loader(CombinedLoader({"x": b, "y": a})) is b
    assert first_loader([]) is None and first_loader(None) is None


def test_examples_at_collates_the_chosen_examples_as_the_loader_would():
    x = torch.arange(10.0).reshape(5, 2)
    loader = DataLoader(TensorDataset(x, torch.arange(5)), batch_size=2)
    assert dataset_size(loader) == 5
    inp = examples_at(loader, [4, 1], feed)
    assert inp is not None and inp.source == "batch[0]"
    torch.testing.assert_close(inp.args[0], x[[4, 1]])
    unbatched = DataLoader(TensorDataset(x, torch.arange(5)), batch_size=None)  # default_collate then
    torch.testing.assert_close(examples_at(unbatched, [0, 2], feed).args[0], x[[0, 2]])
    assert examples_at(loader, [0], lambda batch: None) is None  # the model cannot be fed


def test_first_examples_of_an_iterable_dataset_are_joined_and_counted():
    loader = DataLoader(Stream(5), batch_size=2)
    assert dataset_size(loader) is None
    inp = first_examples(loader, 3, feed, argument="sample_size")
    assert inp is not None and inp.batch_size() == 4  # two batches of 2: the caller cuts to 3
    torch.testing.assert_close(inp.args[0][:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"`sample_size` is 9 but the dataset yields only 5"):
        first_examples(loader, 9, feed, argument="sample_size")
    assert first_examples(loader, 3, lambda batch: None, argument="sample_size") is None


def test_first_examples_stop_at_the_example_input():
    example = ModelInput((torch.zeros(1, 2),), {}, "example_input_array")
    inp = first_examples(DataLoader(Stream(5), batch_size=2), 3, lambda batch: example, argument="n")
    assert inp is example

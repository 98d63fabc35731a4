"""A fixed sample batch from the fit's data: the dataloader it is taken from, and its examples, fed by the
one rule of :mod:`lightning_viz.core.model_input`.

:func:`fit_loader` finds the first dataloader of the fit's validation data (or training data), as set up
before any loop runs; :func:`dataset_size` says whether its dataset can be indexed; :func:`examples_at`
collates chosen examples as the dataloader would, and :func:`first_examples` takes the first examples an
iterable dataset yields. What the model is fed is left to the caller's ``feed`` (``None``: it cannot be).
:func:`labelled_sample` builds a fixed sample with its targets (the rule of :mod:`lightning_viz.core.targets`)
and :func:`shrunk_images` makes its image inputs small enough to draw. :class:`FixedSample` is the fixed
labelled sample a callback draws every N epochs, set up with the fit and built once; :func:`on_model` and
:func:`inference` move it to the model and run the model on it as validation would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset, default_collate

from lightning_viz.core import lightning_state, targets
from lightning_viz.core.hooks import eager, modes_kept
from lightning_viz.core.model_input import ModelInput, feed_hint, model_input
from lightning_viz.core.warn import warn_once

Feed = Callable[[Any], ModelInput | None]  # a collated batch -> what the model is fed, or None


def first_loader(obj: Any) -> DataLoader | None:
    """The first ``DataLoader`` in what a ``*_dataloader()`` hook returns (a loader, a list or dict of them,
    a ``CombinedLoader``), or ``None``."""
    if isinstance(obj, DataLoader):
        return obj
    obj = getattr(obj, "flattened", obj)  # CombinedLoader
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else []
    return next((dl for dl in map(first_loader, items) if dl is not None), None)


def fit_loader(trainer: Trainer, sample_from: Literal["val", "train"]) -> tuple[DataLoader | None, str]:
    """The first dataloader of the fit's ``sample_from`` data (``"val"`` or ``"train"``) and which data it
    is: ``"val"`` falls back to ``"train"`` when the fit has no validation dataloader. ``None`` (and the
    last data tried) when there is none."""
    tried: tuple[Literal["val", "train"], ...] = ("val", "train") if sample_from == "val" else ("train",)
    for which in tried:
        loaders = lightning_state.fit_dataloaders(trainer, which)
        loader = first_loader(loaders) if loaders is not None else None
        if loader is not None:
            return loader, which
    return None, tried[-1]


def dataset_size(loader: DataLoader) -> int | None:
    """The number of examples of the loader's dataset; ``None`` for an iterable or unsized dataset."""
    if isinstance(loader.dataset, IterableDataset) or not hasattr(loader.dataset, "__len__"):
        return None
    return len(loader.dataset)


def examples_at(loader: DataLoader, indices: Sequence[int], feed: Feed) -> ModelInput | None:
    """The dataset's examples at ``indices``, collated by the loader's ``collate_fn`` (``default_collate``
    for a loader without automatic batching), fed by ``feed``."""
    dataset: Any = loader.dataset
    collate = loader.collate_fn if loader.batch_sampler is not None else default_collate
    return feed(collate([dataset[i] for i in indices]))


def first_examples(loader: DataLoader, n: int, feed: Feed, *, argument: str) -> ModelInput | None:
    """The first ``n`` examples the loader yields, its batches fed by ``feed`` and joined; the example
    input alone when ``feed`` falls back to it; ``None`` when a batch cannot feed the model. Fewer than
    ``n`` examples raise a ``ValueError`` naming ``argument``."""
    parts: list[ModelInput] = []
    have = 0
    for batch in loader:
        part = feed(batch)
        if part is None:
            return None
        parts.append(part)
        have += part.batch_size() or 1
        if have >= n or part.is_example:
            break
    if have < n and not (parts and parts[0].is_example):
        raise ValueError(f"`{argument}` is {n} but the dataset yields only {have}")
    return parts[0] if parts[0].is_example else ModelInput.concat(parts)


def sample_loader(
    trainer: Trainer, sample_from: Literal["val", "train"], sample_size: int, indices: list[int] | None
) -> tuple[DataLoader, str, list[int] | None]:
    """The dataloader a fixed sample of ``sample_size`` examples comes from, which data it is, and the
    examples' indices: ``indices`` kept when they fit (a resumed run), else the first ``sample_size``;
    ``None`` for an iterable dataset (its first examples, checked at the first capture).

    Raises:
        ValueError: no dataloader, or ``sample_size`` is larger than the dataset (naming the argument).
    """
    loader, which = fit_loader(trainer, sample_from)
    if loader is None:
        raise ValueError(
            f"`sample_from` is {sample_from!r} but the fit has no dataloader to take the sample from"
        )
    size = dataset_size(loader)
    if size is None:
        return loader, which, None
    if sample_size > size:
        raise ValueError(
            f"`sample_size` is {sample_size} but the {which} dataset has only {size} examples; "
            f"use `sample_size` <= {size}"
        )
    if indices is None or len(indices) != sample_size:
        indices = list(range(sample_size))
    return loader, which, indices


def labelled_sample(
    loader: DataLoader, indices: list[int] | None, n: int, model: nn.Module, owner: str
) -> tuple[ModelInput, torch.Tensor | None] | None:
    """The fixed sample of ``n`` examples (at ``indices``, or the first ones of an iterable dataset) as the
    model is fed it, detached on the CPU, and its targets (``None`` when a batch holds none). ``None``, after
    one warning naming ``owner``, when the batches cannot feed the model. A model fed its
    ``example_input_array`` instead (``is_example``) has no examples of the data and no targets."""
    seen: list[torch.Tensor | None] = []

    def feed(batch: Any) -> ModelInput | None:
        inp = model_input(batch, model)
        if inp is None:
            warn_once((owner, "feed"), feed_hint(owner, model, batch))
        seen.append(targets.target_of(batch))
        return inp

    if indices is None:
        inp = first_examples(loader, n, feed, argument="sample_size")
    else:
        inp = examples_at(loader, indices, feed)
    if inp is None:
        return None
    if inp.is_example:
        return inp, None
    ys = [y for y in seen if y is not None]
    y = None
    if ys and len(ys) == len(seen):
        y = (torch.cat(ys) if len(ys) > 1 else ys[0])[:n].detach().cpu()
    return inp.examples(n).apply(lambda t: t.detach().cpu()), y


def shrunk_images(x: torch.Tensor | None, max_px: int) -> torch.Tensor | None:
    """``[N, C, H, W]`` float inputs with 1 or 3 channels, shrunk (area means) to at most ``max_px`` a side,
    as float32; ``None`` for inputs that are no images."""
    if x is None or x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        return None
    x = x.detach().float()
    scale = max_px / max(x.shape[2], x.shape[3])
    if scale < 1:
        size = (max(1, math.floor(x.shape[2] * scale)), max(1, math.floor(x.shape[3] * scale)))
        x = F.adaptive_avg_pool2d(x, size)
    return x


def sized_sample_loader(
    trainer: Trainer, sample_from: Literal["val", "train"], sample_size: int | None, default: int
) -> tuple[DataLoader, str, list[int] | None, int]:
    """:func:`sample_loader` for ``sample_size`` examples or, when it is ``None`` (a callback's default),
    ``default`` of them or the whole dataset when it is smaller; the size taken comes last. An explicit
    ``sample_size`` larger than the dataset stays an error."""
    n = sample_size
    if n is None:
        loader = fit_loader(trainer, sample_from)[0]
        size = dataset_size(loader) if loader is not None else None
        n = min(default, size) if size else default
    loader, which, indices = sample_loader(trainer, sample_from, n, None)
    return loader, which, indices, n


Pair = tuple[ModelInput, torch.Tensor | None]  # the examples as the model is fed them, and their targets


class FixedSample:
    """The fixed labelled sample of a callback that draws the same examples every N epochs.

    :meth:`setup` (in the callback's ``setup``) picks the dataloader and the examples
    (:func:`sized_sample_loader`; one info line when ``"val"`` falls back to ``"train"``); :meth:`get` builds
    the sample at its first call and keeps it (:func:`labelled_sample`), or keeps that it cannot be built.

    Args:
        owner: the callback's class name, for its messages.
        sample_from: ``"val"`` or ``"train"``.
        sample_size: the number of examples; ``None`` takes ``default`` or the whole dataset when smaller.
        default: the callback's default size.
    """

    def __init__(
        self, owner: str, sample_from: Literal["val", "train"], sample_size: int | None, default: int
    ) -> None:
        self.owner = owner
        self.sample_from: Literal["val", "train"] = sample_from
        self.sample_size = sample_size
        self.default = default
        self.n = sample_size or default  # the sample's size in this run, known from setup on
        self._loader: DataLoader | None = None
        self._indices: list[int] | None = None
        self._got: Pair | bool | None = None  # None: not built yet; False: cannot be built

    def setup(self, trainer: Trainer) -> None:
        """Choose this fit's dataloader and examples; raises ``ValueError`` as :func:`sample_loader`."""
        self._loader, which, self._indices, self.n = sized_sample_loader(
            trainer, self.sample_from, self.sample_size, self.default
        )
        self._got = None
        if self.sample_from == "val" and which == "train":
            rank_zero_info(f"{self.owner}: no validation dataloader; the sample comes from `train`.")

    def get(self, model: nn.Module) -> Pair | None:
        """The sample (on the CPU) and its targets, or ``None`` when the batches cannot feed ``model``."""
        if self._got is None:
            assert self._loader is not None, "FixedSample.setup was not called"
            got = labelled_sample(self._loader, self._indices, self.n, model, self.owner)
            self._got = got if got is not None else False
        return self._got or None

    def discard(self) -> None:
        """Forget the built sample: the next :meth:`get` gives ``None`` (it cannot be used)."""
        self._got = False


def on_model(trainer: Trainer, model: nn.Module, inp: ModelInput) -> ModelInput:
    """``inp`` on the model's device, converted by the precision plugin as Lightning converts a batch."""
    device = getattr(model, "device", None) or next(
        (p.device for p in model.parameters()), torch.device("cpu")
    )
    moved = inp.apply(lambda t: t.to(device))
    convert = trainer.precision_plugin.convert_input
    return ModelInput(convert(moved.args), convert(moved.kwargs), moved.source)


@contextmanager
def inference(trainer: Trainer, model: nn.Module) -> Iterator[None]:
    """Run ``model`` as validation does, outside the user's training: no gradients, eager (outside
    ``torch.compile``), in eval mode with every module's mode put back after, in the precision plugin's
    forward context."""
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(eager())
        stack.enter_context(modes_kept(model, eval_mode=True))
        stack.enter_context(trainer.precision_plugin.forward_context())
        yield

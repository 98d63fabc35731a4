"""The one rule for what the model is fed outside the training step (summary pass, activation capture).

From a collated batch, in this order:

1. a tensor batch is passed as it is: ``forward(batch)``;
2. a dict batch whose keys name parameters of ``forward`` is passed by keyword, with those keys only:
   ``forward(input_ids=..., attention_mask=...)``; else the value of the first of the keys ``x``, ``input``,
   ``inputs``, ``image``, ``images``, ``pixel_values`` is passed alone; else the whole dict as one argument;
3. a tuple or list batch ``(x, y, ...)`` passes its first element (by rule 2 when that is a dict), or as
   many leading elements as ``forward`` has required positional parameters (``forward(x, lengths)``).

The result must bind to ``forward``'s signature. When it does not (or the batch holds no tensor) and the
module sets ``example_input_array``, that is used instead, as Lightning uses it: a tuple or list is passed
as positional arguments, a dict as keyword arguments, anything else as the one argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")


EXAMPLE = "example_input_array"  # the source of a ModelInput taken from the module's example


@dataclass
class ModelInput:
    """Positional and keyword arguments of one ``forward`` call, and where they came from.

    Attributes:
        args: positional arguments.
        kwargs: keyword arguments.
        source: how they were taken, for messages: ``"batch"``, ``"batch[0]"``, ``"batch['x']"``,
            ``"batch keys ['input_ids', 'mask']"`` or ``"example_input_array"``.
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "batch"

    @property
    def is_example(self) -> bool:
        """Taken from the module's ``example_input_array`` (not from a batch)."""
        return self.source == EXAMPLE

    def __call__(self, model: Callable[..., Any]) -> Any:
        """``model(*args, **kwargs)``."""
        return model(*self.args, **self.kwargs)

    def apply(self, fn: Callable[[torch.Tensor], Any]) -> ModelInput:
        """A copy with ``fn`` applied to every tensor (moved to a device, detached, cut)."""
        return ModelInput(
            apply_to_collection(self.args, torch.Tensor, fn),
            apply_to_collection(self.kwargs, torch.Tensor, fn),
            self.source,
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the call, positional first, in order."""
        out: list[torch.Tensor] = []
        apply_to_collection((self.args, self.kwargs), torch.Tensor, out.append)
        return out

    def primary(self) -> torch.Tensor | None:
        """The first tensor (shown beside the activation maps as the input)."""
        return next(iter(self.tensors()), None)

    def batch_size(self) -> int | None:
        """Length of the first dimension of the first tensor with one."""
        return next((int(t.shape[0]) for t in self.tensors() if t.ndim > 0), None)

    def examples(self, n: int) -> ModelInput:
        """The first ``n`` examples: every tensor whose first dimension is the batch size is cut to ``n``."""
        size = self.batch_size()
        if size is None or size <= n:
            return self
        return self.apply(lambda t: t[:n] if t.ndim > 0 and t.shape[0] == size else t)

    @staticmethod
    def concat(parts: list[ModelInput]) -> ModelInput:
        """Several inputs of the same structure joined along the batch dimension (tensors concatenated)."""
        first = parts[0]
        size = first.batch_size()

        def join(values: list[Any]) -> Any:
            head = values[0]
            if isinstance(head, torch.Tensor):
                return torch.cat(values) if head.ndim > 0 and head.shape[0] == size else head
            if isinstance(head, Mapping):
                return {k: join([v[k] for v in values]) for k in head}
            if isinstance(head, (tuple, list)):
                return type(head)(join(list(vs)) for vs in zip(*values))
            return head

        return ModelInput(
            tuple(join([p.args[i] for p in parts]) for i in range(len(first.args))),
            {k: join([p.kwargs[k] for p in parts]) for k in first.kwargs},
            first.source,
        )


def _signature(forward: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(forward)
    except (TypeError, ValueError):
        return None


def _binds(sig: inspect.Signature | None, inp: ModelInput) -> bool:
    if sig is None:
        return True
    try:
        sig.bind(*inp.args, **inp.kwargs)
    except TypeError:
        return False
    return True


def _has_tensor(value: Any) -> bool:
    found: list[bool] = []
    apply_to_collection(value, torch.Tensor, lambda t: found.append(True))
    return bool(found)


def _from_dict(batch: Mapping[str, Any], sig: inspect.Signature | None, source: str) -> ModelInput:
    named = {
        p.name
        for p in (sig.parameters.values() if sig is not None else ())
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    keys = [k for k in batch if k in named]
    if keys:
        return ModelInput((), {k: batch[k] for k in keys}, f"{source} keys {keys}")
    key = next((k for k in INPUT_KEYS if k in batch), None)
    if key is not None:
        return ModelInput((batch[key],), {}, f"{source}[{key!r}]")
    return ModelInput((batch,), {}, source)


def _required_positional(sig: inspect.Signature | None) -> int:
    if sig is None:
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty)


def from_batch(batch: Any, forward: Callable[..., Any]) -> ModelInput | None:
    """``forward``'s arguments taken from a collated batch by the module's rule; ``None`` when the batch
    holds no tensor or what the rule takes does not bind to ``forward``'s signature."""
    if batch is None or not _has_tensor(batch):
        return None
    sig = _signature(forward)
    if isinstance(batch, torch.Tensor):
        inp = ModelInput((batch,), {}, "batch")
    elif isinstance(batch, Mapping):
        inp = _from_dict(batch, sig, "batch")
    elif isinstance(batch, (tuple, list)) and batch:
        k = max(1, _required_positional(sig))
        if isinstance(batch[0], Mapping) and k == 1:
            inp = _from_dict(batch[0], sig, "batch[0]")
        elif k > 1 and len(batch) >= k:
            inp = ModelInput(tuple(batch[:k]), {}, f"batch[:{k}]")
        else:
            inp = ModelInput((batch[0],), {}, "batch[0]")
    else:
        inp = ModelInput((batch,), {}, "batch")
    return inp if _binds(sig, inp) and _has_tensor((inp.args, inp.kwargs)) else None


def from_example(example: Any) -> ModelInput:
    """``example_input_array`` as Lightning passes it: tuple/list positional, dict keyword, else one."""
    if isinstance(example, (tuple, list)):
        return ModelInput(tuple(example), {}, EXAMPLE)
    if isinstance(example, Mapping):
        return ModelInput((), dict(example), EXAMPLE)
    return ModelInput((example,), {}, EXAMPLE)


def example_of(module: nn.Module) -> ModelInput | None:
    """The module's ``example_input_array`` as a :class:`ModelInput`, or ``None`` when it sets none."""
    try:
        example = getattr(module, "example_input_array", None)
    except Exception:  # a property that raises
        example = None
    return None if example is None else from_example(example)


def model_input(batch: Any, module: nn.Module) -> ModelInput | None:
    """What ``module`` is fed for ``batch`` (the rule in this module's docstring); the example input when
    the batch does not fit ``forward``; ``None`` when neither works (see :func:`feed_hint`)."""
    inp = from_batch(batch, module.forward)
    return inp if inp is not None else example_of(module)


def describe(batch: Any) -> str:
    """A short description of a batch's structure: ``dict(keys=['a', 'b'])``, ``tuple of 3``, ``Tensor``."""
    if isinstance(batch, Mapping):
        return f"dict with keys {list(batch)[:8]}"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__} of {len(batch)} ({', '.join(type(b).__name__ for b in batch[:4])})"
    return type(batch).__name__


def feed_hint(owner: str, module: nn.Module, batch: Any) -> str:
    """The one-line warning for a model the rule cannot feed, saying how to set ``example_input_array``."""
    sig = _signature(module.forward)
    return (
        f"{owner}: cannot tell how to call {type(module).__name__}.forward{sig or '(...)'} from a batch "
        f"({describe(batch)}); set `self.example_input_array` in the LightningModule's __init__ to an "
        "input of a few examples: a tensor, a tuple of positional inputs or a dict of keyword inputs."
    )


def first_float_tensor(obj: Any) -> torch.Tensor | None:
    """The first floating-point tensor in a batch or a layer's output (a tensor, or one inside a dict, list or
    tuple, depth first), or ``None``."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() else None
    values: Iterator[Any] = (
        iter(obj.values())
        if isinstance(obj, dict)
        else iter(obj)
        if isinstance(obj, (list, tuple))
        else iter(())
    )
    for v in values:
        t = first_float_tensor(v)
        if t is not None:
            return t
    return None

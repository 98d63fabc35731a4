"""Where a tensor came from: the ops between a layer's output and the tensor it passes on, and the module
where NaN/Inf first appear in a forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from lightning_viz.core.hooks import eager
from lightning_viz.core.model_input import ModelInput

MAX_HOPS = 8


def ops_between(tensor: torch.Tensor, output: torch.Tensor, max_hops: int = MAX_HOPS) -> list[str] | None:
    """Autograd node names on the shortest path from ``tensor`` back to ``output`` (nearest ``output``
    first; ``[]`` when they are the same tensor), or ``None`` when ``tensor`` is not computed from ``output``
    within ``max_hops`` autograd nodes. Raises ``LookupError`` when autograd recorded nothing to tell (no
    grad mode, or ``output`` does not require grad)."""
    if tensor is output:
        return []
    target, start = output.grad_fn, tensor.grad_fn
    if target is None or start is None:
        raise LookupError("no autograd graph")
    frontier: list[tuple[Any, list[str]]] = [(start, [])]
    seen: set[int] = set()
    for _ in range(max_hops):
        nxt: list[tuple[Any, list[str]]] = []
        for node, path in frontier:
            if node is target:
                return path[::-1]
            if id(node) in seen:
                continue
            seen.add(id(node))
            nxt += [(n, [*path, node.name()]) for n, _ in node.next_functions if n is not None]
        frontier = nxt
    return next((p[::-1] for n, p in frontier if n is target), None)


@dataclasses.dataclass
class Origin:
    """The first module of a forward pass whose output holds NaN/Inf while its inputs were finite.

    Attributes:
        name: qualified module name (``""``: the model's own forward, between its submodules), or ``None``
            when the batch itself holds NaN/Inf.
        kind: the module's class name.
        count: NaN/Inf values in that output.
        order: the module call's place in execution order (0 = first call).
        own_params_nonfinite: whether that module's own parameters already hold NaN/Inf.
    """

    name: str | None
    kind: str
    count: int
    order: int
    own_params_nonfinite: bool


class _Found(Exception):
    pass


def _tensors(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    apply_to_collection(value, torch.Tensor, out.append)
    return [t for t in out if t.is_floating_point() or t.is_complex()]


def _bad(ts: list[torch.Tensor]) -> int:
    return sum(int((~torch.isfinite(t)).sum()) for t in ts)


@dataclasses.dataclass
class _State:
    order: int = 0
    found: Origin | None = None
    stack: list[bool] = dataclasses.field(default_factory=list)


def _iter_buffers(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from (b for b in model.buffers() if isinstance(b, torch.Tensor))


def locate_nonfinite(
    model: nn.Module,
    inp: ModelInput,
    forward_context: Callable[[], AbstractContextManager[Any]] | None = None,
    *,
    complete: bool = False,
) -> Origin | None:
    """Run one ``no_grad`` forward pass of ``inp`` with hooks on every module and return the first module,
    in execution order, whose output holds NaN/Inf while its inputs were finite (the deepest one: a child
    finishes before its parent); ``None`` when the whole pass is finite.

    The pass runs in the modules' current train/eval modes (a layer may misbehave only in training), with the
    random number generators forked and every buffer (BatchNorm running statistics) put back afterwards, so
    training goes on exactly as without it; every hook is removed, even when the forward raises. It stops
    at the first module found. Meant for a rare event (the first non-finite loss): each hooked call costs a
    host synchronisation.

    Args:
        model: the model (the LightningModule).
        inp: what it is fed (:func:`~lightning_viz.core.model_input.model_input`).
        forward_context: the precision plugin's ``forward_context`` (autocast), if any.
        complete: run the whole forward pass even after a find, and also when the batch itself holds
            NaN/Inf: with several processes every rank must run the same forward, since a sharded (FSDP2)
            module or ``SyncBatchNorm`` issues collectives inside it.
    """
    batch_bad = _bad(inp.tensors())
    if batch_bad and not complete:
        return Origin(None, "batch", batch_bad, -1, False)
    state = _State()
    names = {m: n for n, m in model.named_modules()}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
        state.stack.append(_bad(_tensors((args, kwargs))) == 0)

    def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        finite_in = state.stack.pop() if state.stack else True
        order, state.order = state.order, state.order + 1
        count = _bad(_tensors(output)) if finite_in and state.found is None else 0
        if count:
            own = _bad([p.detach() for p in module.parameters(recurse=False)]) > 0
            state.found = Origin(names.get(module, "?"), type(module).__name__, count, order, own)
            if not complete:
                raise _Found

    saved = [b.detach().clone() for b in _iter_buffers(model)]
    devices = sorted(
        {t.device.index for t in inp.tensors() if t.device.type == "cuda" and t.device.index is not None}
    )
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        context = forward_context() if forward_context is not None else nullcontext()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), eager(), context:
            try:
                inp(model)
            except _Found:
                pass
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for b, old in zip(_iter_buffers(model), saved):
                b.copy_(old)
    if batch_bad:
        return Origin(None, "batch", batch_bad, -1, False)
    return state.found

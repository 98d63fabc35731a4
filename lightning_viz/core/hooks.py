"""Forward-hook capture that always cleans up after itself.

Hooks exist only inside :func:`capture_outputs`; on exit (normal or exceptional) every handle is removed
and every module's train/eval flag is put back exactly as it was (per module, so a frozen BatchNorm kept in
eval mode inside a training model stays in eval mode).

:func:`match_modules` is the one rule for which modules a ``layers``-style pattern selects, and
:func:`eager` makes hooks fire in ``torch.compile``d code. What a hooked layer passes on (the
non-linearity after it) is :mod:`lightning_viz.core.passed`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from difflib import get_close_matches
from typing import Any

import torch
from torch import nn


def is_metric(module: nn.Module) -> bool:
    """Whether ``module`` is a torchmetrics ``Metric`` or a container of nothing but metrics (a ModuleList of
    one per dataloader), without importing torchmetrics."""
    if any(c.__module__.startswith("torchmetrics") for c in type(module).__mro__[:-2]):
        return True
    children = list(module.children())
    return (
        isinstance(module, nn.ModuleList | nn.ModuleDict) and bool(children) and all(map(is_metric, children))
    )


def match_modules(
    model: nn.Module,
    patterns: Sequence[str],
    *,
    argument: str,
    predicate: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, nn.Module]:
    """Modules whose qualified names match any glob pattern, in model order.

    Every pattern must match at least one module (after ``predicate``); otherwise a ``ValueError`` names
    the argument, the pattern and the closest module names.

    Args:
        model: the model to search.
        patterns: glob patterns over qualified module names (``"features.*"``, ``"*conv*"``).
        argument: the name of the user-facing argument, for error messages.
        predicate: optional filter (name, module) -> keep.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    metrics = [n for n, m in named if is_metric(m)]  # torchmetrics objects are not layers
    named = [(n, m) for n, m in named if not any(n == p or n.startswith(p + ".") for p in metrics)]
    if predicate is not None:
        named = [(n, m) for n, m in named if predicate(n, m)]
    names = [n for n, _ in named]
    out: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            closest = get_close_matches(pattern, names, n=5, cutoff=0.3) or names[:8]
            raise ValueError(
                f"`{argument}` pattern {pattern!r} matched no module; closest: {closest}"
                + (" (no module qualifies)" if not names else "")
            )
        for n, m in hits:
            out.setdefault(n, m)
    order = {n: i for i, n in enumerate(names)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def hook_count(model: nn.Module) -> int:
    """Number of forward (pre-)hooks registered on the model's modules (used to prove cleanup)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@contextmanager
def capture_outputs(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    on_output: Callable[[str, nn.Module, Any], None],
    *,
    eval_mode: bool = True,
) -> Iterator[list[str]]:
    """Register forward hooks on ``modules`` for the duration of the block.

    Args:
        model: the model whose train/eval flags are saved and restored.
        modules: name -> module to hook.
        on_output: called as ``on_output(name, module, output)`` after each hooked module's forward.
        eval_mode: put the model in eval mode for the block (no dropout, BatchNorm uses running stats).

    Yields:
        The list of hooked module names in the order they executed (useful when the forward raises).
    """
    executed: list[str] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            executed.append(name)
            on_output(name, module, output)

        return hook

    with modes_kept(model, eval_mode=eval_mode):
        try:
            for name, module in modules.items():
                handles.append(module.register_forward_hook(make_hook(name)))
            yield executed
        finally:
            for h in handles:
                h.remove()


@contextmanager
def modes_kept(model: nn.Module, *, eval_mode: bool = False) -> Iterator[None]:
    """Every module's train/eval flag put back on exit, also on an exception (``eval_mode``: eval inside).

    Args:
        model: the model whose flags are kept.
        eval_mode: put the model in eval mode for the block.
    """
    modes = {m: m.training for m in model.modules()}
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, flag in modes.items():
            m.training = flag


@contextmanager
def eager() -> Iterator[None]:
    """Run ``torch.compile``d code eagerly inside the block, so that hooks added after compilation fire.

    Dynamo does not guard on forward hooks of ``nn.Module`` by default (``skip_nnmodule_hook_guards``), so a
    graph compiled before the hooks existed would run without calling them. ``torch.compiler.set_stance``
    (torch >= 2.6) makes every compiled function run its original Python code for the block.
    """
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:  # older torch: disable dynamo for everything called in the block
        import torch._dynamo as dynamo

        with dynamo.config.patch(skip_nnmodule_hook_guards=False):
            yield
        return
    with set_stance("force_eager"):
        yield

"""``torch.compile`` seen through: the model as the user wrote it, for a pass of our own over it.

:func:`uncompiled` puts every ``OptimizedModule`` wrapper's original module in its place for a block and
runs compiled code eagerly there (:func:`~lightning_viz.core.hooks.eager`), so module names carry no
``_orig_mod`` and forward hooks fire. Names alone are cleaned by
:func:`~lightning_viz.core.sharding.clean_name`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lightning_viz.core.hooks import eager


def _compiled_type() -> type | None:
    """``torch._dynamo.OptimizedModule``, or ``None`` while dynamo was never imported."""
    dynamo = sys.modules.get("torch._dynamo")  # not imported: nothing can have been compiled
    return getattr(dynamo, "OptimizedModule", None)


def is_compiled_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper (``OptimizedModule``) around the user's module."""
    compiled = _compiled_type()
    return compiled is not None and isinstance(module, compiled)


@contextmanager
def uncompiled(model: nn.Module) -> Iterator[nn.Module]:
    """The model as written, for the block: every ``torch.compile``d module seen as the module it wraps.

    Each ``OptimizedModule`` child is replaced in its parent by its ``_orig_mod`` (put back on exit, also on
    an exception), so module names carry no ``_orig_mod`` and torchinfo never truth-tests a wrapper (whose
    ``__len__`` raises for a module that has none); compiled code, such as the methods Lightning compiles
    for ``trainer.fit(torch.compile(model))``, runs eagerly, so hooks fire. Yields the root module as
    written (``model._orig_mod`` for a compiled ``model``).
    """
    compiled = _compiled_type()
    if compiled is None:
        yield model
        return
    root = model
    while isinstance(root, compiled):
        root = root._orig_mod
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(root.modules()):
            for name, child in list(parent._modules.items()):
                while isinstance(child, compiled):
                    swapped.append((parent, name, parent._modules[name]))
                    child = parent._modules[name] = child._orig_mod
        with eager():
            yield root
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child

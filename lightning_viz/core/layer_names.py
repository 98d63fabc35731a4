"""Layers by the names the user wrote, and ``layers`` glob patterns matched over those names.

:func:`named_layers` names every module as :func:`~lightning_viz.core.sharding.clean_name` cleans it (no
``_orig_mod`` of ``torch.compile``, no FSDP1 or activation-checkpointing wrapper prefix) and leaves out a
compiled submodule's ``OptimizedModule`` wrapper; :func:`match_layers` selects among them by the one rule
for patterns, :func:`~lightning_viz.core.hooks.match_modules`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lightning_viz.core.compiled import is_compiled_wrapper
from lightning_viz.core.hooks import match_modules
from lightning_viz.core.sharding import clean_name


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by clean name (:func:`~lightning_viz.core.sharding.clean_name`), in model order;
    a compiled submodule's wrapper (``OptimizedModule``) is left out, its original module keeps the name."""
    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and not is_compiled_wrapper(module):
            out.setdefault(clean_name(name), module)
    return out


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def default_layers(named: Mapping[str, nn.Module]) -> tuple[list[str], list[str]]:
    """The layers captured when the user names none: the convolutions (``Conv1d``-``3d``,
    ``ConvTranspose1d``-``3d``), and the Linear layers (except MultiheadAttention's ``out_proj``, which
    its attention calls functionally), by name in model order."""
    unused = {id(m.out_proj) for m in named.values() if isinstance(m, nn.MultiheadAttention)}
    convs = [n for n, m in named.items() if isinstance(m, CONV_TYPES)]
    linears = [n for n, m in named.items() if isinstance(m, nn.Linear) and id(m) not in unused]
    return convs, linears


class _Named:
    """``named_modules()`` over clean names, for :func:`match_modules`."""

    def __init__(self, named: Mapping[str, nn.Module]) -> None:
        self.named = named

    def named_modules(self) -> Any:
        return iter(self.named.items())


def match_layers(
    named: Mapping[str, nn.Module], patterns: Sequence[str], *, argument: str
) -> dict[str, nn.Module]:
    """The layers of ``named`` (:func:`named_layers`) whose clean names match any pattern, in model order;
    a pattern that matches none raises the ``ValueError`` of :func:`match_modules` (naming ``argument``)."""
    return match_modules(_Named(named), patterns, argument=argument)  # type: ignore[arg-type]


def one_layer(named: Mapping[str, nn.Module], pattern: str, *, argument: str) -> str:
    """The one layer of ``named`` whose clean name matches ``pattern``; none or several raise a
    ``ValueError`` naming ``argument``, the pattern and (some of) the matches."""
    hits = list(match_layers(named, [pattern], argument=argument))
    if len(hits) != 1:
        shown = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
        raise ValueError(f"`{argument}` {pattern!r} matches {len(hits)} modules ({shown}); name exactly one")
    return hits[0]

"""The model's computation graph: drawn by torchview (on a copy of the model on the ``meta`` device, so it
costs no memory and no compute, where the model allows), and traced by ``torch.jit.trace`` for TensorBoard's
Graphs dashboard.

:func:`module_graph` returns the Graphviz DOT source of the module graph, each module labelled with the name
the user wrote (``layer1.0.conv1``) and its class; :func:`~lightning_viz.render.graph.dot_pipe` turns it into
pictures with Graphviz's ``dot``. torchview and ``dot`` are optional: :func:`missing` says what is not
installed, in one line.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lightning_viz.core.compiled import uncompiled
from lightning_viz.core.hooks import modes_kept
from lightning_viz.core.model_input import ModelInput
from lightning_viz.core.sharding import clean_name, is_fsdp1_wrapped, is_sharded
from lightning_viz.render.graph import bounded_size, dot_binary


def missing() -> str | None:
    """What the drawn graph needs and is not installed, as one phrase, or ``None``."""
    try:
        import torchview  # noqa: F401
    except ImportError:
        return "torchview is not installed (pip install 'lightning-viz[graph]')"
    if dot_binary() is None:
        return "Graphviz's `dot` is not on PATH (apt-get install graphviz, brew install graphviz, conda install graphviz)"
    return None


def shardless(model: nn.Module) -> bool:
    """Whether the model holds whole parameters (no DTensor shard, no FSDP1 unit), so that a forward pass
    of its own needs no other rank."""
    return not is_fsdp1_wrapped(model) and not any(is_sharded(p) for p in model.parameters())


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are empty tensors on the ``meta`` device (the
    same shapes, dtypes and ``requires_grad``): the original is not touched and no values are copied."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in memo:
            empty = torch.empty_like(t, device="meta")
            memo[id(t)] = (
                nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
            )
    return copy.deepcopy(model, memo)


def _relabel(graph: Any, names: dict[int, str], parents: set[int]) -> None:
    """Label each module node of a torchview graph ``name<BR/>Class`` (a module with children, which
    ``expand_nested`` draws as a dashed box whose label is plain text: ``name: Class``) and draw its visual
    graph again. ``names``: module id to clean name; ``parents``: the ids of modules with children."""
    from torchview.computation_node import ModuleNode

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for key, children in item.items():
                walk(key)
                walk(children)
        elif isinstance(item, (list, tuple)):
            for child in item:
                walk(child)
        elif isinstance(item, ModuleNode) and item.compute_unit_id in names:
            boxed = graph.expand_nested and 1 <= item.depth < graph.depth and item.compute_unit_id in parents
            item.name = f"{names[item.compute_unit_id]}{': ' if boxed else '<BR/>'}{item.name}"

    walk(graph.node_hierarchy)
    graph.visual_graph.body.clear()
    graph.running_node_id = 0
    graph.id_dict, graph.node_set, graph.edge_list = {}, set(), []
    graph.subgraph_dict = {k: v for k, v in graph.subgraph_dict.items() if v == 0}
    graph.running_subgraph_id = 1
    graph.fill_visual_graph()
    # torchview bounds the drawing at max(12, 0.3 per DOT line) inches, so dot shrank a long graph (resnet18
    # drawn left to right came out 92 px tall, unreadable): its natural size, bounded only when it is huge.
    attrs = graph.visual_graph.graph_attr
    attrs.pop("size", None)
    attrs["fontname"] = graph.visual_graph.node_attr.get("fontname", "Helvetica")  # box labels as the nodes'
    size = bounded_size(graph.visual_graph.source) if dot_binary() else None
    if size:
        attrs["size"] = size


def module_graph(
    model: nn.Module, inp: ModelInput, *, depth: int, direction: str, expand_nested: bool
) -> tuple[str, bool]:
    """The DOT source of the module graph of ``model`` fed ``inp`` (eval mode, no gradients), and whether it
    was traced on a ``meta`` copy (``False``: the model itself had to run, as some models cannot on ``meta``,
    e.g. one that reads a tensor's value). The model's modes, parameters and hooks are left as they were."""
    from torchview import draw_graph

    def draw(net: nn.Module, device: torch.device, x: ModelInput) -> Any:
        names = {id(m): clean_name(n) for n, m in net.named_modules() if n}
        parents = {id(m) for n, m in net.named_modules() if n and any(m.children())}
        with torch.no_grad():
            graph = draw_graph(
                net,
                input_data=list(x.args),
                device=device,
                depth=depth,
                graph_dir=direction,
                expand_nested=expand_nested,
                mode="eval",
                **x.kwargs,
            )
        _relabel(graph, names, parents)
        return graph

    with uncompiled(model) as root:  # compiled submodules as written, run eagerly
        try:
            graph = draw(meta_copy(root), torch.device("meta"), inp.apply(lambda t: t.to("meta")))
            return graph.visual_graph.source, True
        except Exception:  # an op without a meta kernel, a value read: the model itself, on its device
            pass
        device = next((p.device for p in root.parameters()), torch.device("cpu"))
        with modes_kept(root):
            graph = draw(root, device, inp.apply(lambda t: t.to(device)))
        return graph.visual_graph.source, False


class _Flat(nn.Module):
    """``model`` called with keyword arguments, as ``forward(*tensors)`` (``torch.jit.trace`` and
    TensorBoard's ``add_graph`` take positional tensors only)."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> Any:
        n = len(tensors) - len(self.keys)
        return self.model(*tensors[:n], **dict(zip(self.keys, tensors[n:], strict=True)))


def traceable(model: nn.Module, inp: ModelInput) -> tuple[nn.Module, tuple[torch.Tensor, ...]] | None:
    """``(module, positional tensors)`` for ``add_graph``, or ``None`` when the input holds anything but
    tensors (a list, a dict, a number: ``torch.jit.trace`` takes tensors only)."""
    if not all(isinstance(a, torch.Tensor) for a in (*inp.args, *inp.kwargs.values())):
        return None
    if not inp.kwargs:
        return model, tuple(inp.args)
    return _Flat(model, list(inp.kwargs)), (*inp.args, *inp.kwargs.values())

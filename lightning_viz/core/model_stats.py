"""A model summarised as plain data: parameters counted once each, and torchinfo's table, output shapes
and mult-adds (MACs) of one forward pass.

:func:`summarize` is the whole job; ModelSummaryCallback decides when it runs, on what input, and emits what
it returns. Parameters are counted by :func:`count_parameters` (each ``Parameter`` object once, so tied
weights are not counted twice; ``numel()`` is the global size of a sharded ``DTensor``). A compiled model is
summarised as written (:func:`~lightning_viz.core.compiled.uncompiled`). The forward pass leaves no hook
behind and every module's train/eval flag as it was (:func:`restored`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from lightning_viz.core import sharding
from lightning_viz.core.compiled import uncompiled
from lightning_viz.core.hooks import is_metric, modes_kept
from lightning_viz.core.model_input import ModelInput

ColumnName = Literal["output_size", "num_params", "trainable", "mult_adds", "kernel_size", "input_size"]
COLUMNS: tuple[str, ...] = get_args(ColumnName)
DEFAULT_COLUMNS: tuple[ColumnName, ...] = ("output_size", "num_params", "trainable", "mult_adds")
NEEDS_INPUT = frozenset({"output_size", "mult_adds", "input_size"})
FROZEN_LISTED = 10  # frozen parameter names spelled out in summary.txt (all of them are in summary.json)
ROOT_BLOCK = "(own parameters)"
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


@dataclass
class ParamCounts:
    """Parameter counts of a module.

    Attributes:
        total: elements of all parameters, each ``Parameter`` object once.
        trainable: elements of the parameters with ``requires_grad``.
        blocks: top-level child -> ``[trainable, frozen]``.
        frozen_params: ``{"name", "numel", "shape"}`` of each parameter that does not train (``shape`` is
            ``None`` for a piece of an FSDP1 ``FlatParameter``).
    """

    total: int = 0
    trainable: int = 0
    blocks: dict[str, list[int]] = field(default_factory=dict)
    frozen_params: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        """Elements of the parameters without ``requires_grad``."""
        return self.total - self.trainable


def count_parameters(module: nn.Module) -> ParamCounts:
    """The one place parameters are counted.

    ``named_parameters()`` yields each ``Parameter`` object once (a tied weight belongs to the first block
    that holds it), and :func:`~lightning_viz.core.sharding.original_numels` gives the full size of a
    sharded parameter (an FSDP1 ``FlatParameter`` as the original parameters it holds), so totals equal
    ``sum(p.numel() for p in module.parameters())`` of the unsharded module.
    """
    counts = ParamCounts()
    for pname, p in module.named_parameters():
        pieces = sharding.original_numels(pname, p)
        for name, n in pieces:
            name = sharding.clean_name(name)
            block = name.split(".", 1)[0] if "." in name else ROOT_BLOCK
            slot = counts.blocks.setdefault(block, [0, 0])
            counts.total += n
            if p.requires_grad:
                counts.trainable += n
                slot[0] += n
            else:
                slot[1] += n
                shape = list(p.shape) if len(pieces) == 1 and p.numel() == n else None
                counts.frozen_params.append({"name": name, "numel": n, "shape": shape})
    return counts


def trainable_flag(counts: ParamCounts) -> str:
    """``"True"``, ``"False"``, ``"Partial"``, or ``"--"`` for a module without parameters."""
    if counts.total == 0:
        return "--"
    if counts.trainable == counts.total:
        return "True"
    return "False" if counts.trainable == 0 else "Partial"


def frozen_section(counts: ParamCounts, limit: int = FROZEN_LISTED) -> list[str]:
    """The lines of ``summary.txt`` that name the parameters that do not train (none when all train)."""
    frozen = counts.frozen_params
    if not frozen:
        return []
    names = ", ".join(f["name"] for f in frozen[:limit])
    more = f", ... and {len(frozen) - limit} more" if len(frozen) > limit else ""
    return [
        f"Not trained (requires_grad=False): {counts.frozen:,} parameters in {len(frozen)} tensors: "
        f"{names}{more}"
    ]


@contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Put back every module's train/eval flag and remove any forward hook added inside the block."""
    before = {m: {d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in model.modules()}
    with modes_kept(model):
        try:
            yield
        finally:
            _remove_new_hooks(model, before)


def _remove_new_hooks(model: nn.Module, before: dict[nn.Module, dict[str, set]]) -> None:
    """Remove every forward hook that is not in ``before`` (module -> hook dict -> keys)."""
    for m in model.modules():
        for d in _HOOK_DICTS:
            hooks = getattr(m, d, None)
            if hooks is None:
                continue
            for key in set(hooks) - before.get(m, {}).get(d, set()):
                hooks.pop(key, None)


def _sizes(value: Any) -> Any:
    """Tensors nested in lists, tuples and dicts as their shapes (JSON-friendly)."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, Mapping):
        return {str(k): _sizes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sizes(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else type(value).__name__


def input_shape_of(inp: ModelInput) -> Any:
    """The shape of one input (``[2, 1, 8, 8]``), a list for several positional inputs, a dict for
    keyword inputs, ``[*positional, {keyword}]`` for both."""
    args, kwargs = _sizes(list(inp.args)), _sizes(inp.kwargs)
    if not kwargs:
        return args[0] if len(args) == 1 else args
    return kwargs if not args else [*args, kwargs]


def torchinfo_call(inp: ModelInput, forward: Callable[..., Any]) -> tuple[Any, dict[str, Any]]:
    """``(input_data, kwargs)`` that make ``torchinfo.summary`` call ``model(*inp.args, **inp.kwargs)``:
    it calls ``model(*input_data)`` for a list, ``model(**input_data)`` for a dict, and passes its own
    ``**kwargs`` on to ``forward`` (keyword inputs are bound to ``forward``'s positions where they can)."""
    args, kwargs = list(inp.args), dict(inp.kwargs)
    if not kwargs:
        return (args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else args), {}
    if not args:
        return kwargs, {}
    bound = inspect.signature(forward).bind(*args, **kwargs)  # none left named like summary's arguments
    return list(bound.args), dict(bound.kwargs)


def _torchinfo_summary(
    model: nn.Module, input_data: Any, depth: int, cols: Sequence[str], **kwargs: Any
) -> Any:
    import torchinfo
    import torchinfo.torchinfo as ti

    try:
        return torchinfo.summary(
            model,
            input_data=input_data,
            depth=depth,
            col_names=list(cols),
            row_settings=("depth", "var_names"),
            mode="eval",
            verbose=0,
            **kwargs,
        )
    finally:  # torchinfo caches every forward pass by class name, which would keep the model alive
        getattr(ti, "_cached_forward_pass", {}).pop(type(model).__name__, None)


def summarize(
    model: nn.Module,
    inp: ModelInput | None,
    *,
    depth: int = 3,
    col_names: Sequence[str] = DEFAULT_COLUMNS,
    forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, Any]:
    """Summarise ``model`` (a forward pass on ``inp`` unless it is ``None``) as plain data.

    A compiled model or child is summarised as written (see :func:`uncompiled`). Never raises for the
    model's sake: when the forward pass fails, the summary has parameter counts only, and when torchinfo
    cannot list the model at all, the rows and totals are ours alone; ``notes`` says which.

    Returns:
        ``{"model", "input_shape", "input_source", "text", "rows", "totals", "torchinfo_totals", "blocks",
        "frozen", "notes"}``.
    """
    with uncompiled(model) as root:
        return _summarize(root, inp, depth, col_names, forward_context)


def _summarize(
    model: nn.Module,
    inp: ModelInput | None,
    depth: int,
    col_names: Sequence[str],
    forward_context: Callable[[], AbstractContextManager[Any]],
) -> dict[str, Any]:
    notes: list[str] = []
    stats = None
    if inp is not None:
        try:
            input_data, kwargs = torchinfo_call(inp, model.forward)
            with restored(model), forward_context():
                stats = _torchinfo_summary(model, input_data, depth, col_names, **kwargs)
        except Exception as err:
            notes.append(f"forward pass failed ({err.__cause__ or err!r}); parameter counts only")
    if stats is None:
        cols = [c for c in col_names if c not in NEEDS_INPUT] or ["num_params"]
        try:
            with restored(model):
                stats = _torchinfo_summary(model, None, depth, cols)
        except Exception as err:
            notes.append(
                f"torchinfo could not list the model ({err.__cause__ or err!r}); our own rows and totals only"
            )
    forward = stats is not None and bool(stats.input_size)

    infos: dict[int, list[Any]] = {}
    for info in stats.summary_list if stats is not None else ():
        infos.setdefault(info.layer_id, []).append(info)

    def macs_of(m: nn.Module) -> int:  # leaves only, every call of a shared module counted, as torchinfo
        leaves = (sub for sub in m.modules() if next(sub.children(), None) is None)
        return sum(i.macs for sub in leaves for i in infos.get(id(sub), []))

    rows = []
    for name, m in model.named_modules():
        d = name.count(".") + 1
        if not name or d > depth:
            continue
        own = count_parameters(m)
        called = [i for i in infos.get(id(m), []) if i.executed]
        rows.append(
            {
                "name": sharding.clean_name(name),
                "type": type(m).__name__,
                "depth": d,
                "output_shape": list(called[0].output_size) if called else None,
                "params": own.total,
                "trainable_params": own.trainable,
                "trainable": trainable_flag(own),
                "mult_adds": macs_of(m) if forward else None,
                "metric": is_metric(m),  # a torchmetrics object (or a list of them), not a layer
            }
        )

    counts = count_parameters(model)
    totals: dict[str, int | None] = {
        "total_params": counts.total,
        "trainable_params": counts.trainable,
        "frozen_params": counts.frozen,
        "mult_adds": int(stats.total_mult_adds) if forward else None,
    }
    ti_totals = None
    if stats is not None:
        ti_totals = {"total_params": int(stats.total_params), "trainable_params": int(stats.trainable_params)}
        if (ti_totals["total_params"], ti_totals["trainable_params"]) != (counts.total, counts.trainable):
            notes.append(
                f"torchinfo's totals above ({ti_totals['total_params']:,} parameters, "
                f"{ti_totals['trainable_params']:,} trainable) differ from the totals below, which count each "
                "Parameter object once (tied or shared weights, modules the forward pass did not reach)"
            )
    if not forward and inp is None:
        notes.append("no example input: parameter counts only (set `example_input_array` for shapes)")
    input_shape = input_shape_of(inp) if forward and inp is not None else None

    header = f"Model summary of {type(model).__name__}"
    header += (
        f" on an input of shape {input_shape} ({inp.source})" if forward and inp else " (no forward pass)"
    )
    lines = [
        header,
        str(stats) if stats is not None else "(no torchinfo table)",
        "Totals (each parameter counted once):",
        f"  total params:     {counts.total:,}",
        f"  trainable params: {counts.trainable:,}",
        f"  frozen params:    {counts.frozen:,}",
    ]
    if forward:
        lines.append(f"  mult-adds:        {int(stats.total_mult_adds):,} (for the input above)")
    lines += frozen_section(counts)
    lines += [f"Note: {n}" for n in notes]
    return {
        "model": type(model).__name__,
        "input_shape": input_shape,
        "input_source": inp.source if forward and inp else None,
        "text": "\n".join(lines) + "\n",
        "rows": rows,
        "totals": totals,
        "torchinfo_totals": ti_totals,
        "blocks": [{"name": k, "trainable": v[0], "frozen": v[1]} for k, v in counts.blocks.items()],
        "frozen": counts.frozen_params,
        "notes": notes,
    }

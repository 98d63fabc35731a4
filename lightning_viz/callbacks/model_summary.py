"""ModelSummaryCallback: a torchinfo summary of the LightningModule at fit start, with exact totals.

Capture (every rank): one torchinfo forward pass under ``no_grad`` in eval mode, on what
:mod:`~lightning_viz.core.model_input` says the model is fed: ``example_input_array`` when the module sets
it, otherwise the first two examples of the first training batch. ``torch.compile``d children are
summarised as the modules they wrap, run eagerly, under their own names. Hooks exist only during that pass
and every module's train/eval flag is put back as it was. Parameters are counted by
:func:`count_parameters` (each ``Parameter`` object once, so tied weights are not counted twice;
``numel()`` is the global size of a sharded ``DTensor``). Emission (rank zero): ``summary.txt`` (the table),
``summary.png`` with ``summary.json`` (per-layer rows, totals, the parameters that do not train), and the
totals as scalars at step 0.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import sharding
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import eager, is_metric
from lightning_viz.core.model_input import ModelInput, example_of, feed_hint, model_input
from lightning_viz.core.warn import warn_once
from lightning_viz.render.summary import render_summary

ColumnName = Literal["output_size", "num_params", "trainable", "mult_adds", "kernel_size", "input_size"]
COLUMNS: tuple[str, ...] = get_args(ColumnName)
DEFAULT_COLUMNS: tuple[ColumnName, ...] = ("output_size", "num_params", "trainable", "mult_adds")
NEEDS_INPUT = frozenset({"output_size", "mult_adds", "input_size"})
SAMPLE_SIZE = 2  # examples of the first training batch used for the forward pass
FROZEN_LISTED = 10  # frozen parameter names spelled out in summary.txt (all of them are in summary.json)
ROOT_BLOCK = "(own parameters)"
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def param_name(name: str) -> str:
    """A parameter or module name as the user wrote the model: without ``_orig_mod.`` (``torch.compile``)
    or the FSDP1 and activation-checkpointing wrapper prefixes."""
    return sharding.clean_name(name)


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
            name = param_name(name)
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
    modes = {m: m.training for m in model.modules()}
    before = {m: {d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in model.modules()}
    try:
        yield
    finally:
        for m, flag in modes.items():
            m.training = flag
        for m in model.modules():
            for d in _HOOK_DICTS:
                hooks = getattr(m, d, None)
                if hooks is None:
                    continue
                for key in set(hooks) - before.get(m, {}).get(d, set()):
                    hooks.pop(key, None)


def _compiled_type() -> type | None:
    """``torch._dynamo.OptimizedModule``, or ``None`` while dynamo was never imported."""
    dynamo = sys.modules.get("torch._dynamo")  # not imported: nothing can have been compiled
    return getattr(dynamo, "OptimizedModule", None)


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
                "name": param_name(name),
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


class ModelSummaryCallback(VizCallback):
    """A torchinfo summary of the LightningModule at fit start: table, parameter-share figure, totals.

    The forward pass uses ``example_input_array`` when the module sets it (a tensor, a tuple of positional
    inputs or a dict of keyword inputs), otherwise the first two examples of the first training batch, fed
    as :mod:`lightning_viz.core.model_input` says (element 0 of a tuple batch, a dict batch by the names of
    ``forward``'s parameters). A model it cannot feed gets one warning saying how to set
    ``example_input_array``, and a summary with parameter counts only. ``torch.compile``d models and
    submodules are summarised as written, run eagerly. Totals count each parameter once, so frozen layers
    and tied weights are right; where torchinfo's own totals differ, the text says by how much. The
    parameters that do not train (``requires_grad=False``) are listed by name.

    Outputs under ``<log_dir>/viz/model_summary/``: ``summary.txt``, ``summary.png``, ``summary.json``;
    scalars ``model/total_params``, ``model/trainable_params``, ``model/frozen_params`` and
    ``model/mult_adds`` (when an input was available) at step 0.

    Args:
        depth: deepest level of nested modules listed (1 = the LightningModule's direct children).
        col_names: torchinfo columns of the text table. ``output_size``, ``input_size`` and ``mult_adds``
            need an input and are left out without one.
        output_dir: where files go; default ``<trainer.log_dir>/viz/model_summary``.
        when_full: what to do when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "model_summary"
    section_title, report_rank = "Model summary", 1
    figures = (
        FigureSpec(
            "summary", "Parameters per block", "lightning_viz.render.summary:render_summary", "summary.json"
        ),
    )

    def __init__(
        self,
        depth: int = 3,
        col_names: Sequence[ColumnName] = DEFAULT_COLUMNS,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("depth", depth, 1)
        if isinstance(col_names, str):
            raise ValueError(
                f"`col_names` must be a list of column names from {list(COLUMNS)}; got {col_names!r}"
            )
        for name in col_names:
            check_choice("col_names", name, COLUMNS)
        self.depth = depth
        self.col_names = tuple(col_names)
        self.summary: dict[str, Any] | None = None
        self._pending = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.summary = None
        example = example_of(pl_module)
        if example is None:
            self._pending = True  # wait for the first training batch
            return
        device = pl_module.device
        self._run(trainer, pl_module, example.apply(lambda t: t.to(device)))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if not self._pending:
            return
        self._pending = False
        try:
            inp = model_input(batch, pl_module)
        except Exception:  # an exotic batch or signature: treated as one the rule cannot feed
            inp = None
        if inp is None:
            self._run(trainer, pl_module, None, feed_hint(type(self).__name__, pl_module, batch))
        else:
            self._run(trainer, pl_module, inp.examples(SAMPLE_SIZE))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending:  # no training batch ran
            self._pending = False
            name = type(self).__name__
            hint = (
                f"{name}: no training batch ran and the module sets no `example_input_array`; the summary "
                "has parameter counts only (set `self.example_input_array` for shapes and mult-adds)."
            )
            self._run(trainer, pl_module, None, hint)
        super().on_fit_end(trainer, pl_module)

    def _run(
        self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput | None, hint: str | None = None
    ) -> None:
        """Summarise and emit; whatever went wrong is said in one warning (``hint`` first, when given)."""
        name = type(self).__name__
        problems = [hint] if hint else []
        precision = getattr(trainer, "precision_plugin", None)
        ctx = getattr(precision, "forward_context", nullcontext)
        with self.guard(trainer, "model summary"):
            if inp is not None and sharding.is_fsdp1_wrapped(pl_module):
                inp = None
                problems.append(
                    f"{name}: the model is wrapped by FSDP1 (FSDPStrategy); a forward pass outside the "
                    "training step would break FSDP's root detection, so the summary has parameter counts "
                    "only (full sizes, no shapes or mult-adds)."
                )
            self.summary = summarize(
                pl_module, inp, depth=self.depth, col_names=self.col_names, forward_context=ctx
            )
            problems += [
                f"{name}: {note}."
                for note in self.summary["notes"]
                if note.startswith(("forward pass failed", "torchinfo could not"))
            ]
            self._emit(trainer, self.summary)
        if problems:
            warn_once((name, "summary"), " ".join(problems))

    def _emit(self, trainer: Trainer, data: dict[str, Any]) -> None:
        totals = data["totals"]
        self.emit_text(trainer, "model_summary", data["text"], step=0, stem="summary")
        self.emit_figure(
            trainer, render_summary, data, tag=f"viz/{self.viz_name}/parameters", stem="summary", step=0
        )
        scalars = {f"model/{k}": v for k, v in totals.items() if v is not None}
        self.emit_scalars(trainer, scalars, step=0)

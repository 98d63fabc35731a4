"""ModelSummaryCallback: a torchinfo summary of the LightningModule at fit start, with exact totals.

Capture (every rank): one torchinfo forward pass under ``no_grad`` in eval mode, on
``example_input_array`` or, failing that, on the first two examples of the first training batch. Hooks
exist only during that pass and every module's train/eval flag is put back as it was. Parameters are
counted by :func:`count_parameters` (each ``Parameter`` object once, so tied weights are not counted twice;
``numel()`` is the global size of a sharded ``DTensor``). Emission (rank zero): ``summary.txt`` (the table),
``summary.png`` with ``summary.json`` (per-layer rows and totals), and the totals as scalars at step 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.warn import warn_once
from lightning_viz.render.summary import render_summary

ColumnName = Literal["output_size", "num_params", "trainable", "mult_adds", "kernel_size", "input_size"]
COLUMNS: tuple[str, ...] = (
    "output_size",
    "num_params",
    "trainable",
    "mult_adds",
    "kernel_size",
    "input_size",
)
DEFAULT_COLUMNS: tuple[ColumnName, ...] = ("output_size", "num_params", "trainable", "mult_adds")
NEEDS_INPUT = frozenset({"output_size", "mult_adds", "input_size"})
SAMPLE_SIZE = 2  # examples of the first training batch used for the forward pass
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
    """Parameter counts of a module; ``blocks`` maps a top-level child to ``[trainable, frozen]``."""

    total: int = 0
    trainable: int = 0
    blocks: dict[str, list[int]] = field(default_factory=dict)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_parameters(module: nn.Module) -> ParamCounts:
    """The one place parameters are counted.

    ``named_parameters()`` yields each ``Parameter`` object once (a tied weight belongs to the first block
    that holds it), and :func:`~lightning_viz.core.distributed.original_numels` gives the full size of a
    sharded parameter (an FSDP1 ``FlatParameter`` as the original parameters it holds), so totals equal
    ``sum(p.numel() for p in module.parameters())`` of the unsharded module.
    """
    counts = ParamCounts()
    for pname, p in module.named_parameters():
        for name, n in distributed.original_numels(pname, p):
            block = name.split(".", 1)[0] if "." in name else ROOT_BLOCK
            slot = counts.blocks.setdefault(block, [0, 0])
            counts.total += n
            if p.requires_grad:
                counts.trainable += n
                slot[0] += n
            else:
                slot[1] += n
    return counts


def trainable_flag(counts: ParamCounts) -> str:
    """``"True"``, ``"False"``, ``"Partial"``, or ``"--"`` for a module without parameters."""
    if counts.total == 0:
        return "--"
    if counts.trainable == counts.total:
        return "True"
    return "False" if counts.trainable == 0 else "Partial"


def first_input(batch: Any) -> torch.Tensor | None:
    """Element 0 of a tuple/list batch (or the batch itself) when it is a tensor, cut to two examples."""
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) > 0 else batch
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] > 0:
        return x[:SAMPLE_SIZE]
    return None


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


def _plain(sizes: Any) -> Any:
    """torchinfo's input sizes (``torch.Size`` nested in lists, tuples, dicts) as JSON-friendly lists."""
    if isinstance(sizes, torch.Size):
        return list(sizes)
    if isinstance(sizes, dict):
        return {str(k): _plain(v) for k, v in sizes.items()}
    if isinstance(sizes, (list, tuple)):
        return [_plain(v) for v in sizes]
    return sizes


def _torchinfo_summary(model: nn.Module, input_data: Any, depth: int, cols: Sequence[str]) -> Any:
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
        )
    finally:  # torchinfo caches every forward pass by class name, which would keep the model alive
        getattr(ti, "_cached_forward_pass", {}).pop(type(model).__name__, None)


def summarize(
    model: nn.Module,
    input_data: Any,
    *,
    depth: int = 3,
    col_names: Sequence[str] = DEFAULT_COLUMNS,
    forward_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, Any]:
    """Summarise ``model`` (a forward pass on ``input_data`` unless it is ``None``) as plain data.

    Returns:
        ``{"model", "input_shape", "text", "rows", "totals", "torchinfo_totals", "blocks", "notes"}``.
    """
    notes: list[str] = []
    stats = None
    if input_data is not None:
        try:
            with restored(model), forward_context():
                stats = _torchinfo_summary(model, input_data, depth, col_names)
        except Exception as err:
            cause = err.__cause__ or err
            notes.append(f"forward pass failed ({cause!r}); parameter counts only")
    if stats is None:
        cols = [c for c in col_names if c not in NEEDS_INPUT] or ["num_params"]
        with restored(model):
            stats = _torchinfo_summary(model, None, depth, cols)
    forward = bool(stats.input_size)

    infos: dict[int, list[Any]] = {}
    for info in stats.summary_list:
        infos.setdefault(info.layer_id, []).append(info)

    def macs_of(m: nn.Module) -> int:  # leaves only, every call of a shared module counted, as torchinfo
        return sum(i.macs for sub in m.modules() if not any(sub.children()) for i in infos.get(id(sub), []))

    rows = []
    for name, m in model.named_modules():
        d = name.count(".") + 1
        if not name or d > depth:
            continue
        own = count_parameters(m)
        called = [i for i in infos.get(id(m), []) if i.executed]
        rows.append(
            {
                "name": name,
                "type": type(m).__name__,
                "depth": d,
                "output_shape": list(called[0].output_size) if called else None,
                "params": own.total,
                "trainable_params": own.trainable,
                "trainable": trainable_flag(own),
                "mult_adds": macs_of(m) if forward else None,
            }
        )

    counts = count_parameters(model)
    totals: dict[str, int | None] = {
        "total_params": counts.total,
        "trainable_params": counts.trainable,
        "frozen_params": counts.frozen,
        "mult_adds": int(stats.total_mult_adds) if forward else None,
    }
    ti_totals = {"total_params": int(stats.total_params), "trainable_params": int(stats.trainable_params)}
    if (ti_totals["total_params"], ti_totals["trainable_params"]) != (counts.total, counts.trainable):
        notes.append(
            f"torchinfo's totals above ({ti_totals['total_params']:,} parameters, "
            f"{ti_totals['trainable_params']:,} trainable) differ from the totals below, which count each "
            "Parameter object once (tied or shared weights, modules the forward pass did not reach)"
        )
    if not forward and input_data is None:
        notes.append("no example input: parameter counts only (set `example_input_array` for shapes)")
    input_shape = _plain(stats.input_size) if forward else None

    lines = [
        f"Model summary of {type(model).__name__}"
        + (f" on an input of shape {input_shape}" if forward else " (no forward pass)"),
        str(stats),
        "Totals (each parameter counted once):",
        f"  total params:     {counts.total:,}",
        f"  trainable params: {counts.trainable:,}",
        f"  frozen params:    {counts.frozen:,}",
    ]
    if forward:
        lines.append(f"  mult-adds:        {int(stats.total_mult_adds):,} (for the input above)")
    lines += [f"Note: {n}" for n in notes]
    return {
        "model": type(model).__name__,
        "input_shape": input_shape,
        "text": "\n".join(lines) + "\n",
        "rows": rows,
        "totals": totals,
        "torchinfo_totals": ti_totals,
        "blocks": [{"name": k, "trainable": v[0], "frozen": v[1]} for k, v in counts.blocks.items()],
        "notes": notes,
    }


class ModelSummaryCallback(VizCallback):
    """A torchinfo summary of the LightningModule at fit start: table, parameter-share figure, totals.

    The forward pass uses ``example_input_array`` when the module sets it, otherwise the first two
    examples of the first training batch (element 0 of a tuple/list batch). Without either, the summary
    has parameter counts only and says so once. Totals count each parameter once, so frozen layers and
    tied weights are right; where torchinfo's own totals differ, the text says by how much.

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
        example = pl_module.example_input_array
        if example is None:
            self._pending = True  # wait for the first training batch
            return
        if isinstance(example, list):  # Lightning passes a list as one argument; torchinfo would unpack it
            example = [example]
        self._run(trainer, pl_module, move_data_to_device(example, pl_module.device))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending:
            self._pending = False
            self._run(trainer, pl_module, first_input(batch))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending:  # no training batch ran
            self._pending = False
            self._run(trainer, pl_module, None)
        super().on_fit_end(trainer, pl_module)

    def _run(self, trainer: Trainer, pl_module: LightningModule, input_data: Any) -> None:
        if input_data is None:
            warn_once(
                (type(self).__name__, "no-input"),
                f"{type(self).__name__}: no `example_input_array` and no tensor in the first training batch; "
                "the summary has parameter counts only (no shapes or mult-adds).",
            )
        precision = getattr(trainer, "precision_plugin", None)
        ctx = getattr(precision, "forward_context", nullcontext)
        with self.guard(trainer, "model summary"):
            if input_data is not None and distributed.is_fsdp1_wrapped(pl_module):
                input_data = None
                warn_once(
                    (type(self).__name__, "fsdp1"),
                    f"{type(self).__name__}: the model is wrapped by FSDP1 (FSDPStrategy); a forward pass outside "
                    "the training step would break FSDP's root detection, so the summary has parameter counts "
                    "only (full sizes, no shapes or mult-adds).",
                )
            self.summary = summarize(
                pl_module, input_data, depth=self.depth, col_names=self.col_names, forward_context=ctx
            )
            for note in self.summary["notes"]:
                if note.startswith("forward pass failed"):
                    warn_once((type(self).__name__, "forward"), f"{type(self).__name__}: {note}.")
            self._emit(trainer, self.summary)

    def _emit(self, trainer: Trainer, data: dict[str, Any]) -> None:
        totals = data["totals"]
        self.emit_text(trainer, "model_summary", data["text"], step=0, stem="summary")
        self.emit_figure(
            trainer, render_summary, data, tag=f"viz/{self.viz_name}/parameters", stem="summary", step=0
        )
        scalars = {f"model/{k}": v for k, v in totals.items() if v is not None}
        self.emit_scalars(trainer, scalars, step=0)

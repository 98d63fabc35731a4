"""ModelSummaryCallback: a torchinfo summary of the LightningModule at fit start, with exact totals.

Capture (every rank): one torchinfo forward pass under ``no_grad`` in eval mode, on what
:mod:`~lightning_viz.core.model_input` says the model is fed: ``example_input_array`` when the module sets
it, otherwise the first two examples of the first training batch. ``torch.compile``d children are
summarised as the modules they wrap, run eagerly, under their own names. Hooks exist only during that pass
and every module's train/eval flag is put back as it was. Parameters are counted by
:func:`~lightning_viz.core.model_stats.count_parameters` (each ``Parameter`` object once, so tied weights
are not counted twice; ``numel()`` is the global size of a sharded ``DTensor``); the summary itself is
:func:`~lightning_viz.core.model_stats.summarize`. Emission (rank zero): ``summary.txt`` (the table),
``summary.png`` with ``summary.json`` (per-layer rows, totals, the parameters that do not train), and the
totals as scalars at step 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from lightning_viz.core import sharding
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.model_input import ModelInput, example_of, feed_hint, model_input
from lightning_viz.core.model_stats import COLUMNS, DEFAULT_COLUMNS, ColumnName, summarize
from lightning_viz.core.warn import warn_once
from lightning_viz.render.summary import render_summary

SAMPLE_SIZE = 2  # examples of the first training batch used for the forward pass


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

"""ModelGraphCallback: the model's computation graph, drawn (torchview) and in TensorBoard's Graphs dashboard."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_viz.core import graph
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.compiled import uncompiled
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import modes_kept
from lightning_viz.core.model_input import ModelInput, example_of
from lightning_viz.core.sample_batch import dataset_size, labelled_sample, sample_loader
from lightning_viz.core.sinks import FileSink, Sink, fan_out
from lightning_viz.core.warn import short_error, warn_once
from lightning_viz.render.graph import dot_pipe, render_graph

SAMPLE_SIZE = 2  # examples of the first training batch the graph is traced with


class ModelGraphCallback(VizCallback):
    """The model's computation graph, once, when training starts: a drawing of the module graph (torchview:
    each module by the name you gave it and its class, with the shapes of its inputs and outputs, nested
    modules to ``depth``) as ``model_graph.png`` and ``model_graph.svg`` (zoomable, searchable) with a
    ``.json`` of its Graphviz source, and, with a ``TensorBoardLogger``, the traced graph in TensorBoard's
    Graphs dashboard (``add_graph``).

    The graph is traced with the model's ``example_input_array``, or else the first two examples of the
    first training batch (fed by the rule ActivationMapCallback uses), in eval mode without gradients, on
    rank 0 alone, before the strategy shards or moves the model. The drawing runs on a copy of the model on
    the ``meta`` device (no memory, no compute); a model that cannot run there (one that reads a tensor's
    value) runs itself once. A model that ``torch.jit.trace`` cannot trace (an output of dataclasses,
    data-dependent Python control flow) gets one warning and no Graphs entry; the drawing still goes on. The
    drawing needs torchview (``pip install 'lightning-viz[graph]'``) and Graphviz's ``dot`` (``apt-get
    install graphviz``); without them one line says what is skipped. A model whose layers are made sharded in
    ``configure_model`` before they exist unsharded is drawn from its fit-start state when it holds whole
    parameters, and otherwise skipped with one line.

    Args:
        depth: how deep nested modules are drawn (1: the model's children only).
        direction: ``"TB"`` (top to bottom) or ``"LR"`` (left to right).
        expand_nested: draw each module with children as a box around them.
        tensorboard: trace the model for TensorBoard's Graphs dashboard when a ``TensorBoardLogger`` is set.
        output_dir: where files go; default ``<trainer.log_dir>/viz/model_graph``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "model_graph"
    captures: ClassVar[str] = "the model graph"
    section_title, report_rank = "Model graph", 1
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "model_graph",
            "The module graph, traced with one input (example_input_array or two training examples)",
            "lightning_viz.render.graph:render_graph",
            "model_graph.json",
        ),
    )

    def __init__(
        self,
        depth: int = 3,
        direction: Literal["TB", "LR"] = "TB",
        expand_nested: bool = False,
        tensorboard: bool = True,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("depth", depth, 1)
        check_choice("direction", direction, ("TB", "LR"))
        for name, value in (("expand_nested", expand_nested), ("tensorboard", tensorboard)):
            if not isinstance(value, bool):
                raise ValueError(f"`{name}` must be true or false; got {value!r}")
        self.depth = depth
        self.direction = direction
        self.expand_nested = expand_nested
        self.tensorboard = tensorboard
        self._done = False
        self._trainer: Any = None

    # ------------------------------------------------------------------ when (rank 0)
    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._done = stage != "fit" or not self.emitting(trainer)
        if self._done:
            return
        self._trainer = trainer
        # before configure_model and the strategy: the model is whole and on the host
        if any(True for _ in pl_module.parameters()) and graph.shardless(pl_module):
            self._run(trainer, pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._done:
            return
        if graph.shardless(pl_module):
            self._run(trainer, pl_module)
            return
        self._done = True
        rank_zero_info(
            "ModelGraphCallback: the model's layers are sharded when they are made (configure_model), so its "
            "graph is not drawn; give it its layers in __init__ to have it drawn before it is sharded."
        )

    # ------------------------------------------------------------------ the graph (rank 0)
    def _input(self, pl_module: LightningModule) -> ModelInput | None:
        example = example_of(pl_module)
        if example is not None:
            return example
        try:
            loader, _, indices = sample_loader(self._trainer, "train", 1, None)
        except ValueError:  # no training data to take a batch from (or an empty one)
            rank_zero_info(
                "ModelGraphCallback: the model has no `example_input_array` and the fit no training batch, so "
                "its graph is not drawn."
            )
            return None
        n = min(SAMPLE_SIZE, dataset_size(loader) or SAMPLE_SIZE)
        got = labelled_sample(loader, list(range(n)) if indices else None, n, pl_module, type(self).__name__)
        return got[0] if got is not None else None

    def _run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._done = True
        with self.guard(trainer, "the model graph"):
            inp = self._input(pl_module)
            if inp is None:
                return  # the feed hint has been shown
            inp = inp.examples(SAMPLE_SIZE)
            try:
                drawn = self._draw(trainer, pl_module, inp)
            except (
                Exception
            ) as err:  # torchview ran the model (on meta, then itself) and it failed: the input
                self._cannot_run(inp, err.__cause__ or err, "torchview")
                return
            if self.tensorboard:
                self._to_tensorboard(trainer, pl_module, inp, drawn)

    def _cannot_run(self, inp: ModelInput, err: BaseException, who: str) -> None:
        name = type(self).__name__
        shapes = ", ".join(str(tuple(t.shape)) for t in inp.tensors()) or "no tensor"
        hint = (
            "check `example_input_array`"
            if inp.is_example
            else "if the batch is not what `forward` takes, set `self.example_input_array` in the LightningModule"
        )
        warn_once(
            (name, "input"),
            f"{name}: {who} cannot run the model on its input ({inp.source}: {shapes}): {short_error(err)}; "
            f"so the model graph is not drawn nor traced ({hint}). Training continues.",
        )

    def _to_tensorboard(
        self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput, drawn: bool
    ) -> None:
        sinks = [s for s in self._sinks if type(s).graph is not Sink.graph]  # the loggers with a graph view
        if not sinks:
            return
        name = type(self).__name__
        args = None
        with uncompiled(pl_module) as root:  # torch.jit.trace refuses compiled modules: trace them as written
            args = graph.traceable(root, inp)
            if args is None:
                warn_once(
                    (name, "trace"),
                    f"{name}: the model's input ({inp.source}) holds more than tensors, which torch.jit.trace "
                    "cannot take, so TensorBoard's Graphs dashboard is left out"
                    + ("; the drawn graph is not" if drawn else "")
                    + ". Set `tensorboard: false` to skip the trace.",
                )
                return
            for sink in sinks:
                try:
                    # without gradients, as documented: with them a TransformerEncoder's trace differs from
                    # its check run and torch.jit.trace refuses it
                    with modes_kept(root, eval_mode=True), torch.no_grad():
                        sink.graph(*args)
                except Exception as err:
                    if not drawn:  # nothing ran the model before: the input may be what is wrong
                        self._cannot_run(inp, err, "torch.jit.trace")
                        return
                    warn_once(
                        (name, "trace"),
                        f"{name}: torch.jit.trace cannot trace the model ({short_error(err)}), so TensorBoard's "
                        "Graphs dashboard is left out; the drawn graph is not. Set `tensorboard: false` to skip "
                        "the trace. Training continues.",
                    )

    def _draw(self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput) -> bool:
        """Draw the module graph; ``False`` when torchview or dot is missing (one line says so)."""
        lacking = graph.missing()
        if lacking:
            rank_zero_info(f"ModelGraphCallback: {lacking}, so model_graph.png/.svg are not drawn.")
            return False
        source, on_meta = graph.module_graph(
            pl_module, inp, depth=self.depth, direction=self.direction, expand_nested=self.expand_nested
        )
        data = {
            "dot": source,
            "model": type(pl_module).__name__,
            "depth": self.depth,
            "meta": on_meta,
            "modules": sum(1 for n, _ in pl_module.named_modules() if n),
        }
        self.emit_figure(
            trainer, render_graph, data, tag=f"viz/{self.viz_name}/graph", stem="model_graph", step=0
        )
        files, owner = [s for s in self._sinks if isinstance(s, FileSink)], type(self).__name__

        def svg() -> None:
            fan_out(files, "raw", "model_graph.svg", dot_pipe(source, "svg"), owner=owner)

        self._submit("model_graph.svg", svg)
        return True

"""PredictionGridCallback: a fixed sample with its true and predicted labels, and the epoch's worst examples."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from lightning_viz.core import distributed, targets
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int, step_stem
from lightning_viz.core.errors import check_names
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.model_input import ModelInput, model_input
from lightning_viz.core.records import Reduced, Sums, SumsAndRows
from lightning_viz.core.sample_batch import FixedSample, inference, on_model, shrunk_images
from lightning_viz.core.schedule import Schedule
from lightning_viz.core.warn import short_error, warn_once
from lightning_viz.render.predictions import render_predictions

SEQUENCE_SHOWN, SEQUENCE_TOKENS = 8, 64  # the examples and positions the sequence panel shows

DEFAULT_SAMPLE = 16  # examples in the fixed sample by default (fewer when the data has fewer)


class PredictionGridCallback(VizCallback):
    """What the model predicts: a fixed sample of validation examples with their true and predicted labels
    and the probability of the prediction, and the epoch's highest-loss validation examples, every N epochs
    (a series: TensorBoard's step slider and the report show them change).

    The task comes from the model's output and the batch's target (``task: auto``), or is named:
    ``classification`` (integer targets ``[N]``, logits ``[N, C]``), ``binary`` (one logit per example,
    targets 0/1), ``regression`` (float targets: prediction against target, the first value of each
    example) or ``sequence`` (per-token classes ``[N, T, C]``; the fixed sample's tokens, right and wrong).
    Image inputs (``[N, C, H, W]``, C 1 or 3) are drawn as a grid, each tile labelled ``true → predicted
    (probability)`` in green when right and red when wrong; other inputs as bars. The target of a batch is
    its second element (``(x, y)``) or its ``y``/``label``/``labels``/``target``/``targets`` key; the
    prediction is the model's output (a dict's ``logits``). The worst examples are taken from the model's
    own forward pass during validation (a forward hook on the LightningModule; when ``validation_step``
    does not call ``self(...)``, one more ``no_grad`` forward of each batch), ranked by the loss of each
    example (cross-entropy, or squared error), over every rank's batches. Figures are
    ``predictions_stepNNNNNN.png`` with a ``.json`` of the data.

    Args:
        every_n_epochs: draw at the end of every N-th training epoch.
        sample_size: examples in the fixed sample (default: 16, or the whole dataset when it is smaller).
        sample_from: ``"val"`` (the first validation dataloader; the training data when there is none) or
            ``"train"``.
        task: ``"auto"``, ``"classification"``, ``"binary"``, ``"regression"`` or ``"sequence"``.
        worst_k: how many of the epoch's highest-loss validation examples to show; 0 for none.
        class_names: names of the classes, by index (default: the indices).
        max_image_px: image tiles are shrunk to at most this many pixels a side.
        output_dir: where files go; default ``<trainer.log_dir>/viz/prediction_grid``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "prediction_grid"
    captures: ClassVar[str] = "prediction grids"
    section_title, report_rank = "Predictions", 2
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "predictions",
            "The fixed sample's predictions and the epoch's worst examples",
            "lightning_viz.render.predictions:render_predictions",
            "predictions_step*.json",
        ),
    )

    def __init__(
        self,
        every_n_epochs: int = 1,
        sample_size: int | None = None,
        sample_from: Literal["val", "train"] = "val",
        task: Literal["auto", "classification", "binary", "regression", "sequence"] = "auto",
        worst_k: int = 8,
        class_names: list[str] | None = None,
        max_image_px: int = 64,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("every_n_epochs", every_n_epochs, 1)
        check_int("sample_size", sample_size, 1, optional=True)
        check_choice("sample_from", sample_from, ("val", "train"))
        check_choice("task", task, targets.TASKS)
        check_int("worst_k", worst_k, 0)
        check_int("max_image_px", max_image_px, 4)
        self.every_n_epochs = every_n_epochs
        self.sample_size = sample_size
        self.sample_from = sample_from
        self.task = task
        self.worst_k = worst_k
        self.class_names = check_names("class_names", class_names)
        self.max_image_px = max_image_px
        self.schedule = Schedule(None, every_n_epochs)
        self._sample = FixedSample(type(self).__name__, sample_from, sample_size, DEFAULT_SAMPLE)
        self._task: targets.Task | None = None
        self._worst: torch.Tensor | None = None  # [k, F] rows of this rank's worst examples so far
        self._worst_shape: tuple[int, ...] | None = None  # the image shape in the rows, or ()
        self._hook: Any = None
        self._last_output: Any = None
        self._owns_batch = True

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "task": self.task}

    # ------------------------------------------------------------------ setup
    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._task = None if self.task == "auto" else self.task
        self._sample.setup(trainer)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # ranks that share a batch (tensor parallelism) offer their worst examples once (a collective)
        self._owns_batch = distributed.owns_its_batch(trainer)

    def _which_task(self, p: torch.Tensor, y: torch.Tensor) -> targets.Task | None:
        if self._task is None:
            self._task = targets.detect_task(p, y)
            if self._task is None:
                warn_once(
                    (type(self).__name__, "task"),
                    f"PredictionGridCallback: cannot tell the task from the output {tuple(p.shape)} "
                    f"({p.dtype}) and the target {tuple(y.shape)} ({y.dtype}); set `task` to one of "
                    f"{list(targets.TASKS[1:])}. Nothing is drawn; training continues.",
                )
        return self._task

    # ------------------------------------------------------------------ the fixed sample
    def _sample_pair(self, pl_module: LightningModule) -> tuple[ModelInput, torch.Tensor] | None:
        got = self._sample.get(pl_module)
        if got is None or got[1] is None:
            if got is not None:  # once: the sample is discarded
                warn_once(
                    (type(self).__name__, "target"),
                    "PredictionGridCallback: the batches hold no target (a tuple's second element, or a "
                    f"dict key among {list(targets.TARGET_KEYS)}); the fixed sample is not drawn.",
                )
                self._sample.discard()
            return None
        return got[0], got[1]

    def _predict(self, trainer: Trainer, pl_module: LightningModule, inp: ModelInput) -> torch.Tensor | None:
        with inference(trainer, pl_module):
            return targets.prediction_of(on_model(trainer, pl_module, inp)(pl_module))

    # ------------------------------------------------------------------ the worst examples (every rank)
    def _row_width(self) -> int:
        return 4 + (math.prod(self._worst_shape) if self._worst_shape else 0)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.worst_k and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._worst = None
            self._remove_hook()
            if self._worst_shape is None:  # from the fixed sample: the same on every rank (the rows' width)
                with self.guard(trainer, "fixed sample"):
                    pair = self._sample_pair(pl_module)
                    images = shrunk_images(pair[0].primary(), self.max_image_px) if pair else None
                    self._worst_shape = tuple(images.shape[1:]) if images is not None else ()
            self._hook = pl_module.register_forward_hook(self._keep_output)

    def _keep_output(self, module: Any, args: Any, output: Any) -> None:
        self._last_output = output

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._last_output = None  # only what this batch's validation_step computes

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        out, self._last_output = self._last_output, None
        if self._hook is None or dataloader_idx != 0:
            return
        with self.guard(trainer, "worst-example recording"):
            self._add_worst(trainer, pl_module, batch, out)

    def _add_worst(self, trainer: Trainer, pl_module: LightningModule, batch: Any, out: Any) -> None:
        y = targets.target_of(batch)
        inp = model_input(batch, pl_module)
        if y is None or inp is None:
            return
        p = targets.prediction_of(out) if out is not None else None
        if p is None or p.shape[:1] != y.shape[:1]:  # validation_step did not call self(...): one more pass
            with torch.no_grad():
                p = targets.prediction_of(inp.apply(lambda t: t.to(pl_module.device))(pl_module))
            self._last_output = None  # that pass went through the hook too
        if p is None:
            return
        task = self._which_task(p, y)
        if task not in ("classification", "binary", "regression"):
            return
        judged = targets.judge(task, p, y.to(p.device))
        images = shrunk_images(inp.primary(), self.max_image_px)
        cols = [judged.loss, judged.true.float(), judged.pred.float(), judged.conf.float()]
        rows = torch.stack(cols, 1)
        if self._worst_shape:
            if images is None or tuple(images.shape[1:]) != self._worst_shape:
                return
            rows = torch.cat([rows, images.to(rows.device).reshape(len(rows), -1)], 1)
        both = rows if self._worst is None else torch.cat([self._worst.to(rows.device), rows])
        top = torch.argsort(both[:, 0].nan_to_num(-math.inf), descending=True)[: self.worst_k]
        self._worst = both[top].detach()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hook()
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ capture (every rank)
    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> SumsAndRows | None:
        step = trainer.global_step
        values: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"step": step, "epoch": trainer.current_epoch, "task": None, "image": None}
        failed = False
        try:
            pair = self._sample_pair(pl_module)
            if pair is not None:
                inp, y = pair
                p = self._predict(trainer, pl_module, inp)
                task = self._which_task(p, y) if p is not None else None
                if task is not None and p is not None:
                    judged = targets.judge(task, p, y.to(p.device))
                    meta["task"] = task
                    if task == "sequence":
                        n = min(SEQUENCE_SHOWN, len(y))
                        values["seq_true"] = judged.true[:n].reshape(n, -1)[:, :SEQUENCE_TOKENS].float().cpu()
                        values["seq_pred"] = judged.pred[:n].reshape(n, -1)[:, :SEQUENCE_TOKENS].float().cpu()
                        values["seq_acc"] = judged.conf[:n].float().cpu()
                    else:
                        for k in ("loss", "true", "pred", "conf"):
                            values[f"s_{k}"] = getattr(judged, k).float().cpu()
                        images = shrunk_images(inp.primary(), self.max_image_px)
                        if images is not None:
                            values["s_images"] = images.cpu()
        except Exception as err:  # every rank still takes part in the collectives
            failed = True
            warn_once(
                (type(self).__name__, "capture", type(err).__name__),
                f"PredictionGridCallback: the fixed sample's forward pass failed at step {step}: {short_error(err)}. "
                "Training continues; this warning is shown once.",
            )
            values = {}
        meta["keys"] = sorted(values)
        width = self._row_width() if self.worst_k else 0
        row = torch.full((self.worst_k, width), math.nan)
        if self.worst_k:
            row[:, 0] = -math.inf
            if self._worst is not None and self._worst.shape[1] == width and self._owns_batch:
                row[: len(self._worst)] = self._worst.float().cpu()
        meta["worst_shape"] = list(self._worst_shape or ())
        self._worst = None
        sums = Sums(step, values, dict.fromkeys(values, "rank0"), failed=failed, meta=meta)
        return SumsAndRows(sums, row.reshape(-1), step=step, failed=failed)

    # ------------------------------------------------------------------ render (rank 0)
    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        meta, values = reduced.meta, reduced.values
        task = meta["task"] or self._task
        if task is None:
            return
        data: dict[str, Any] = {
            "step": meta["step"],
            "epoch": meta["epoch"],
            "task": task,
            "class_names": self.class_names,
            "sample": None,
            "worst": None,
            "sequence": None,
            "notes": [],
        }
        if "seq_true" in values:
            data["sequence"] = {
                "true": values["seq_true"].long().tolist(),
                "pred": values["seq_pred"].long().tolist(),
                "accuracy": values["seq_acc"].tolist(),
            }
        elif "s_true" in values:
            data["sample"] = {k: values[f"s_{k}"].tolist() for k in ("loss", "true", "pred")} | {
                # no probability (regression): null, as for the worst examples (NaN is not strict JSON)
                "conf": [None if c != c else c for c in values["s_conf"].tolist()],
                "images": values["s_images"].tolist() if "s_images" in values else None,
            }
        rows = values["rows"].reshape(-1, self._row_width_of(meta)) if self.worst_k else None
        if rows is not None:
            rows = rows[torch.isfinite(rows[:, 0])]
            rows = rows[torch.argsort(rows[:, 0], descending=True)][: self.worst_k]
            if len(rows):
                shape = meta["worst_shape"]
                data["worst"] = {
                    "loss": rows[:, 0].tolist(),
                    "true": rows[:, 1].tolist(),
                    "pred": rows[:, 2].tolist(),
                    "conf": [None if math.isnan(c) else c for c in rows[:, 3].tolist()],
                    "images": rows[:, 4:].reshape(len(rows), *shape).tolist() if shape else None,
                }
            elif task == "sequence":
                data["notes"].append("worst examples: for classification and regression outputs only")
            else:
                data["notes"].append("no validation examples in this epoch: no worst examples")
        self.emit_figure(
            trainer,
            render_predictions,
            data,
            tag=f"viz/{self.viz_name}/predictions",
            stem=step_stem("predictions", meta["step"]),
            step=meta["step"],
        )

    @staticmethod
    def _row_width_of(meta: dict[str, Any]) -> int:
        return 4 + (math.prod(meta["worst_shape"]) if meta["worst_shape"] else 0)

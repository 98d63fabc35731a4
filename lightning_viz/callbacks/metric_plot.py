"""MetricPlotCallback: the LightningModule's torchmetrics objects, drawn with their own ``.plot()`` each epoch.

Per epoch end of the chosen stage (every rank): ``metric.compute()``, which is where torchmetrics syncs the
metric's states across processes, so every rank must call it, and in the same order. Rank zero then draws
the value with the metric's own ``.plot(value, ax=...)`` on a lightning-viz figure, in the background, and
sends it to the files and every logger like any other picture.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric

from lightning_viz.core import distributed
from lightning_viz.core.base import VizCallback, WhenFull, check_choice, check_int
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.schedule import Schedule
from lightning_viz.render.metrics import metric_record, render_metric

Stage = Literal["val", "train", "test"]
# class-name fragments of the metrics drawn when `metrics` is not given
PICTURE_METRICS = ("ConfusionMatrix", "ROC", "PrecisionRecallCurve")


def to_host(value: Any) -> Any:
    """A metric's value with every tensor detached and on the CPU (tuples and lists kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(to_host(v) for v in value)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    return value


class MetricPlotCallback(VizCallback):
    """Draw torchmetrics ``Metric`` objects held by the LightningModule at epoch end, with their own ``.plot``.

    Give the attribute names (``val_confmat``, or a dotted path such as ``metrics.roc`` for a metric inside a
    ``ModuleDict`` or ``MetricCollection``). Your module only calls ``metric.update(...)`` in its steps;
    this callback computes the metric at the end of the stage's epoch on every process (torchmetrics syncs
    the states there, so the picture covers the whole dataset under DDP), draws it on rank zero to
    ``<viz>/metric_plot/<name>_epochNNN.png`` (with the values as ``.npz``) and to every logger.

    Args:
        metrics: attribute names of the metrics to draw. Default: every ``*ConfusionMatrix``, ``*ROC`` and
            ``*PrecisionRecallCurve`` metric the module holds.
        stage: the loop whose epoch end draws them: ``"val"``, ``"train"`` or ``"test"``.
        every_n_epochs: draw every N-th epoch (the test stage draws at its single epoch).
        reset: reset each metric when the stage's epoch starts, so each picture shows one epoch. Harmless
            when your module resets it too; set false to let it accumulate across epochs.
        output_dir: where files go; default ``<trainer.log_dir>/viz/metric_plot``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name = "metric_plot"
    section_title, report_rank = "Metric plots", 5
    render_modules = ("lightning_viz.render.metrics", "torchmetrics")  # each metric draws with its own .plot
    # one series per metric, named after it: <name>_epochNNN (the report heads it with the metric's class)
    figures = (FigureSpec("*", "", "lightning_viz.render.metrics:render_metric", "*_epoch*.npz"),)

    def __init__(
        self,
        metrics: list[str] | None = None,
        stage: Stage = "val",
        every_n_epochs: int = 1,
        reset: bool = True,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_choice("stage", stage, ("val", "train", "test"))
        check_int("every_n_epochs", every_n_epochs)
        if metrics is not None and (isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics)):
            raise ValueError(f"`metrics` must be a list of attribute names; got {metrics!r}")
        self.metrics = list(metrics) if metrics is not None else None
        self.stage = stage
        self.every_n_epochs = every_n_epochs
        self.schedule = Schedule(None, every_n_epochs)  # drawn at the stage's epoch end, not captured
        self.reset = reset
        self._resolved: dict[str, Metric] = {}

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "metrics": self.metrics, "stage": self.stage}

    # ------------------------------------------------------------------ setup
    def check_model(self, pl_module: LightningModule) -> None:
        self._resolved = resolve_metrics(pl_module, self.metrics)

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "train":
            self._reset()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "val":
            self._reset()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "test":
            self._reset()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.stage == "train":
            self._draw(trainer)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "val" and not trainer.sanity_checking:
            self._draw(trainer)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stage == "test":
            self._draw(trainer, scheduled=True)

    # ------------------------------------------------------------------ work
    def _reset(self) -> None:
        if self.reset:
            for metric in self._resolved.values():
                metric.reset()

    def _draw(self, trainer: Trainer, scheduled: bool | None = None) -> None:
        """Every rank: compute each metric (a collective inside torchmetrics); rank zero: draw it."""
        if scheduled is None:
            scheduled = self.schedule.epoch_due(trainer)
        if not scheduled:
            return
        for name, metric in self._resolved.items():
            # Decided together: a rank without any update must still join the sync of the others.
            if not distributed.agree_any(metric.update_count > 0):
                continue
            with self.guard(trainer, f"computing metric {name!r}"):
                value = to_host(metric.compute())
                if not self.emitting(trainer):
                    continue
                epoch = trainer.current_epoch
                stem = f"{name.replace('.', '_')}_epoch{epoch:03d}"
                data = {"metric": metric, "value": value, "name": name, "epoch": epoch}
                self.emit_figure(
                    trainer,
                    render_metric,
                    data,
                    tag=f"viz/{self.viz_name}/{name}",
                    stem=stem,
                    step=trainer.global_step,
                    save_data=metric_record(metric, value, name, epoch) or False,  # redrawn from it
                )


def resolve_metrics(pl_module: LightningModule, names: Sequence[str] | None) -> dict[str, Metric]:
    """Map names to the module's ``Metric`` objects; ``ValueError`` naming the closest ones when wrong."""
    found = {n: m for n, m in pl_module.named_modules() if n and isinstance(m, Metric)}
    if names is None:
        chosen = {n: m for n, m in found.items() if any(p in type(m).__name__ for p in PICTURE_METRICS)}
        if not chosen:
            raise ValueError(
                f"`metrics` was not given and {type(pl_module).__name__} holds no confusion-matrix, ROC or "
                f"precision-recall metric; name the ones to draw. Metrics it holds: {sorted(found) or 'none'}"
            )
        return chosen
    out: dict[str, Metric] = {}
    for name in names:
        if name not in found:
            close = difflib.get_close_matches(name, list(found), n=3, cutoff=0.3) or sorted(found)[:5]
            what = "is not a torchmetrics Metric" if hasattr(pl_module, name) else "matched no attribute"
            raise ValueError(
                f"`metrics` entry {name!r} {what} of {type(pl_module).__name__}; closest: {close}"
            )
        out[name] = found[name]
    return out

"""ReportCallback: at the end of fit, one self-contained ``<log_dir>/viz/report.html`` of the whole run.

It also keeps ``<viz>/run.json``, the run record the report's summary is built from: the model and data
classes, epochs and steps run, the fit's wall time, the last logged metrics, the torchmetrics objects the
model holds and where LightningCLI saved the resolved config. The record is written when training starts,
after every training epoch (in the background) and when fit ends or fails, so ``lightning-viz report`` on a
crashed or killed run still shows what was known at its last record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric, MetricCollection

from lightning_viz.core import distributed, writer
from lightning_viz.core.base import VizCallback, WhenFull, check_int
from lightning_viz.core.files import atomic_write_json
from lightning_viz.core.warn import warn_once
from lightning_viz.report import REPORT_NAME, RUN_RECORD, build_report


def class_path(obj: Any) -> str | None:
    """``module.QualName`` of an object's class (``None`` for ``None``)."""
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def _first_dataset(loaders: Any) -> Any:
    """The dataset of the first DataLoader in a dataloader, list, tuple or dict of them."""
    if hasattr(loaders, "dataset"):
        return loaders.dataset
    items = loaders.values() if isinstance(loaders, Mapping) else loaders
    for item in items if isinstance(items, (list, tuple)) or isinstance(loaders, Mapping) else ():
        found = _first_dataset(item)
        if found is not None:
            return found
    return None


def _saves_config(cb: Any) -> bool:
    """A LightningCLI ``SaveConfigCallback`` (or subclass), known without importing jsonargparse."""
    return any(c.__name__ == "SaveConfigCallback" for c in type(cb).__mro__)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats (one host copy per device); non-scalars left out."""
    out: dict[str, float] = {}
    tensors: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    for name, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            tensors.setdefault(v.device, []).append((name, v.detach().float().reshape(())))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    for group in tensors.values():
        for (name, _), v in zip(group, torch.stack([t for _, t in group]).cpu().tolist()):
            out[name] = v
    return dict(sorted(out.items()))


class ReportCallback(VizCallback):
    """Build ``report.html`` from every picture the other callbacks saved, when fit ends (or fails).

    The report (see :mod:`lightning_viz.report`) opens with a run summary (model and data classes, epochs,
    steps, wall time, final and best metrics, the resolved config), then the health findings, the model
    summary table, the curves, the weight and gradient evolution, and the activation grids and metric plots
    with a step/epoch slider, all embedded in one HTML file that needs no server and no network. It is built
    once, on rank zero, after every other callback has written its last file; ``lightning-viz report
    <viz-dir>`` rebuilds it from the files at any time, the summary from ``<viz-dir>/run.json``.

    Args:
        max_frames: most frames per slider; longer series are thinned evenly (first and last kept).
        output_dir: the viz directory the report reads and writes ``report.html`` into; default
            ``<trainer.log_dir>/viz``.
        when_full: unused (the report is built once, after the rendering queue is flushed); kept for a
            uniform signature.
    """

    viz_name = ""  # the report reads and writes the viz directory itself, not a folder of its own

    def __init__(
        self, max_frames: int = 60, output_dir: str | None = None, when_full: WhenFull = "wait"
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("max_frames", max_frames, minimum=2)
        self.max_frames = max_frames
        self.report_path: Path | None = None
        self._started: tuple[float, float] | None = None  # (wall clock, monotonic) at fit setup
        self._config_file: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._started = (time.time(), time.monotonic())
            # LightningCLI's SaveConfigCallback writes <trainer.log_dir>/<config_filename> in its setup
            save = [cb for cb in trainer.callbacks if _saves_config(cb)]  # type: ignore[attr-defined]
            name = getattr(save[0], "config_filename", None) if save else None
            log_dir = trainer.log_dir or trainer.default_root_dir
            self._config_file = str(Path(log_dir) / name) if name else None
        # Go last, so that the files other callbacks write in their own fit-end hooks are in the report. A
        # new list (not an in-place move): Lightning is iterating over the current one right now.
        if stage == "fit" and trainer.callbacks[-1] is not self:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not self] + [self]

    # ------------------------------------------------------------------ the run record
    def run_record(
        self, trainer: Trainer, status: str, *, epoch_end: bool = False, error: str | None = None
    ) -> dict[str, Any]:
        """What ``run.json`` holds now. ``status``: ``"running"``, ``"finished"``, ``"failed"`` or
        ``"interrupted"``; ``epoch_end``: called as a training epoch ends (it counts as run)."""
        module, datamodule = trainer.lightning_module, trainer.datamodule
        data = datamodule if datamodule is not None else _first_dataset(trainer.train_dataloader)
        started, t0 = self._started or (time.time(), time.monotonic())
        metrics = sorted(
            n
            for n, m in (module.named_modules() if module is not None else ())
            if n and isinstance(m, (Metric, MetricCollection))
        )
        strategy = type(trainer.strategy).__name__
        return {
            "status": status,
            "error": error,
            "model": class_path(module),
            "data": class_path(data),
            "data_kind": None if data is None else ("datamodule" if datamodule is not None else "dataset"),
            "started": _iso(started),
            "updated": _iso(time.time()),
            "duration_s": round(time.monotonic() - t0, 3),
            "epochs": trainer.current_epoch + (1 if epoch_end else 0),
            "max_epochs": trainer.max_epochs,
            "global_step": trainer.global_step,
            "max_steps": trainer.max_steps,
            "metrics": _scalars(trainer.callback_metrics),
            "metric_modules": metrics,
            "config_file": self._config_file,
            "trainer": {
                "accelerator": type(trainer.accelerator).__name__.replace("Accelerator", "").lower(),
                "world_size": trainer.world_size,
                "precision": str(trainer.precision),
                "strategy": strategy,
            },
            "ckpt_path": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
        }

    def _write_record(self, trainer: Trainer, status: str, background: bool = False, **kw: Any) -> None:
        if not distributed.is_emitter(trainer) or self.viz_dir is None or self._started is None:
            return
        record, path = self.run_record(trainer, status, **kw), self.viz_dir / RUN_RECORD
        if background:
            self._submit(RUN_RECORD, lambda: atomic_write_json(path, record))
        else:
            atomic_write_json(path, record)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        with self.guard(trainer, "writing the run record"):
            self._write_record(trainer, "running", background=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        with self.guard(trainer, "writing the run record"):
            self._write_record(trainer, "running", background=True, epoch_end=True)

    # ------------------------------------------------------------------ the report
    def _build(self, trainer: Trainer) -> None:
        if not distributed.is_emitter(trainer) or self.viz_dir is None:
            return
        try:
            writer.flush()
            self.report_path = build_report(
                self.viz_dir, self.viz_dir / REPORT_NAME, max_frames=self.max_frames
            )
        except Exception as err:  # the report never fails a finished run
            warn_once(
                ("ReportCallback", type(err).__name__),
                f"ReportCallback: building the report in {self.viz_dir} failed: {err!r}. "
                f"Rebuild it with: lightning-viz report {self.viz_dir}",
            )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)  # the other callbacks' files are flushed
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        with self.guard(trainer, "writing the run record"):
            self._write_record(trainer, status, error=f"{type(exception).__name__}: {exception}"[:500])
        self._build(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)  # flushes the rendering queue
        if stage != "fit":
            return
        with self.guard(trainer, "writing the run record"):
            writer.flush()  # an epoch's record waiting in the queue must not land after this one
            self._write_record(trainer, "finished")
        self._build(trainer)

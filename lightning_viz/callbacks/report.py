"""ReportCallback: at the end of fit, one self-contained ``<log_dir>/viz/report.html`` of the whole run."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer

from lightning_viz.core import distributed, writer
from lightning_viz.core.base import VizCallback, WhenFull, check_int
from lightning_viz.core.warn import warn_once
from lightning_viz.report import REPORT_NAME, build_report


class ReportCallback(VizCallback):
    """Build ``report.html`` from every picture the other callbacks saved, when fit ends (or fails).

    The report (see :mod:`lightning_viz.report`) holds the health findings, the model summary table, the
    curves, the weight and gradient evolution, and the activation grids and metric plots with a step/epoch
    slider, all embedded in one HTML file that needs no server and no network. It is built once, on rank
    zero, after every other callback has written its last file; ``lightning-viz report <viz-dir>`` rebuilds
    it from the files at any time.

    Args:
        max_frames: most frames per slider; longer series are thinned evenly (first and last kept).
        output_dir: the viz directory the report reads and writes ``report.html`` into; default
            ``<trainer.log_dir>/viz``.
        when_full: unused (the report is built once, after the rendering queue is flushed); kept for a
            uniform signature.
    """

    viz_name = "report"

    def __init__(
        self, max_frames: int = 60, output_dir: str | None = None, when_full: WhenFull = "wait"
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        check_int("max_frames", max_frames, minimum=2)
        self.max_frames = max_frames
        self.report_path: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if not self.output_dir:  # the report reads the viz directory itself, not a folder of its own
            assert self.viz_dir is not None
            self.viz_dir = self.viz_dir.parent
        # Go last, so that the files other callbacks write in their own fit-end hooks are in the report. A
        # new list (not an in-place move): Lightning is iterating over the current one right now.
        if stage == "fit" and trainer.callbacks[-1] is not self:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not self] + [self]

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)  # flushes the rendering queue
        if stage != "fit" or not distributed.is_emitter(trainer) or self.viz_dir is None:
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

"""A 2-process DDP fit with MetricPlotCallback; run as ``python ddp_metric_job.py OUT`` (Lightning starts rank 1).

Every rank writes the confusion matrix it holds after the epoch (its own updates only, as torchmetrics
restores the local state after syncing) so the test can check that the picture is the sum over ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback, Trainer, seed_everything
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_viz.callbacks.metric_plot import MetricPlotCallback
from tests.helpers import RandomImages, TinyCNN


class WithConfmat(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.val_confmat = MulticlassConfusionMatrix(num_classes=4)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_confmat.update(self(x), y)


class RecordLocal(Callback):
    """After MetricPlotCallback: each rank's own (unsynced) confusion matrix of the epoch."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            local = pl_module.val_confmat.confmat.tolist()
            (self.out / f"local_rank{trainer.global_rank}.json").write_text(json.dumps(local))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=0,
        callbacks=[
            MetricPlotCallback(metrics=["val_confmat"], output_dir=str(out / "viz")),
            RecordLocal(out),
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    trainer.fit(WithConfmat(), datamodule=RandomImages(n=64, batch_size=8))

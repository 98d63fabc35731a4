"""MetricPlotCallback draws the module's torchmetrics objects with their own .plot(), one epoch per picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassROC

from lightning_viz.callbacks.metric_plot import MetricPlotCallback
from tests.helpers import RandomImages, TinyCNN, make_trainer


class WithMetrics(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.val_confmat = MulticlassConfusionMatrix(num_classes=4)
        self.val_roc = MulticlassROC(num_classes=4, thresholds=16)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        logits = self(x)
        self.val_confmat.update(logits, y)
        self.val_roc.update(logits.softmax(1), y)


def test_confusion_matrix_and_roc_each_epoch(tmp_path):
    cb = MetricPlotCallback()  # default: every confusion-matrix / ROC / PR-curve metric of the module
    model, data = WithMetrics(), RandomImages(n=48)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=2)
    trainer.fit(model, datamodule=data)
    out = cb.viz_dir
    assert sorted(cb._resolved) == ["val_confmat", "val_roc"]
    for epoch in (0, 1):
        for name in ("val_confmat", "val_roc"):
            assert (out / f"{name}_epoch{epoch:03d}.png").stat().st_size > 5000
    # one epoch per picture (the sanity check's batches are not in epoch 0), and the last epoch's matrix is
    # exactly the confusion of the trained model on the validation set, computed independently
    first = np.load(out / "val_confmat_epoch000.npz")["value"]
    last = np.load(out / "val_confmat_epoch001.npz")["value"]
    assert first.sum() == last.sum() == 32
    x, y = data.x[:32], data.y[:32]
    with torch.no_grad():
        pred = model(x).argmax(1)
    expected = np.zeros((4, 4), dtype=np.int64)
    np.add.at(expected, (y.numpy(), pred.numpy()), 1)
    np.testing.assert_array_equal(last, expected)
    roc = np.load(out / "val_roc_epoch001.npz")
    assert {"value_0", "value_1", "value_2"} <= set(roc.files)  # fpr, tpr, thresholds


def test_unknown_name_lists_the_closest_metrics(tmp_path):
    cb = MetricPlotCallback(metrics=["val_confmatrix"])
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1)
    with pytest.raises(
        ValueError, match=r"`metrics` entry 'val_confmatrix' matched no attribute.*val_confmat"
    ):
        trainer.fit(WithMetrics(), datamodule=RandomImages(n=16))


def test_module_without_picture_metrics_is_told_what_to_do(tmp_path):
    trainer = make_trainer(tmp_path, [MetricPlotCallback()], max_epochs=1, limit_train_batches=1)
    with pytest.raises(ValueError, match="name the ones to draw"):
        trainer.fit(TinyCNN(), datamodule=RandomImages(n=16))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"stage": "valid"}, "`stage` must be one of"), ({"every_n_epochs": 0}, "`every_n_epochs`")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetricPlotCallback(**kwargs)


@pytest.mark.distributed
def test_ddp_picture_covers_every_rank(tmp_path):
    """Under DDP every rank computes (torchmetrics syncs), rank zero alone draws the summed matrix."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    job = Path(__file__).with_name("ddp_metric_job.py")
    proc = subprocess.run(
        [sys.executable, str(job), str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out"
    drawn = np.load(out / "viz" / "val_confmat_epoch000.npz")["value"]
    local = [np.array(json.loads((out / f"local_rank{r}.json").read_text())) for r in (0, 1)]
    assert local[0].sum() == local[1].sum() == 16  # 32 validation images split over 2 ranks
    np.testing.assert_array_equal(drawn, local[0] + local[1])
    assert sorted(p.name for p in (out / "viz").iterdir()) == [
        "val_confmat_epoch000.npz",
        "val_confmat_epoch000.png",
    ]

"""PredictionGridCallback (#18 item 2) under DDP and FSDP2: real 2-process gloo jobs. The worst examples are
the highest losses over every rank's validation batches (the test's own forward pass on each rank), each
example once (under FSDP2's tensor-parallel group both ranks see one batch); every rank calls the same
collectives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.distributed.test_distributed import results, run_job

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_worst_examples_are_the_highest_losses_over_every_ranks_batches(tmp_path, strategy):
    out = run_job(
        tmp_path, name=strategy, strategy=strategy, devices=2, callbacks=["predgrid"], val_loss_probe=True
    )
    viz = out / "tb" / "version_0" / "viz" / "prediction_grid"
    files = sorted(viz.glob("predictions_step*.json"))
    assert len(files) == 2
    for epoch, path in enumerate(files):
        data = json.loads(path.read_text())
        assert data["task"] == "classification" and len(data["sample"]["true"]) == 4
        ranks = [dict(np.load(out / f"val_losses_rank{r}_epoch{epoch}.npz")) for r in (0, 1)]
        shared = np.array_equal(ranks[0]["targets"], ranks[1]["targets"])
        assert shared == (strategy == "fsdp2")
        losses = ranks[0]["losses"] if shared else np.concatenate([ranks[0]["losses"], ranks[1]["losses"]])
        want = np.sort(losses)[::-1][:5]
        np.testing.assert_allclose(data["worst"]["loss"], want, rtol=1e-5)
    counts = [
        sum(n for k, n in r["collectives"].items() if k.startswith("PredictionGridCallback."))
        for r in results(out).values()
    ]
    assert counts[0] == counts[1], counts

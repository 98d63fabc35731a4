"""SaliencyCallback (#18 item 6) under DDP and FSDP2: real 2-process gloo jobs. Every rank runs the forward
and backward pass of the fixed sample (under FSDP2 its parameters are gathered for both); the Grad-CAM drawn
is rank 0's own (the test's computation on each rank) and every rank calls the same collectives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.distributed.test_distributed import results, run_job

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_gradcam_is_rank_zeros_own_and_every_rank_calls_the_same_collectives(tmp_path, strategy):
    pytest.importorskip("captum")
    out = run_job(
        tmp_path, name=strategy, strategy=strategy, devices=2, callbacks=["saliency"], saliency_probe=True
    )
    files = sorted((out / "tb" / "version_0" / "viz" / "saliency").glob("saliency_step*.json"))
    assert len(files) == 2
    for epoch, path in enumerate(files):
        data = json.loads(path.read_text())
        mine = dict(np.load(out / f"saliency_rank0_epoch{epoch}.npz"))
        assert (data["method"], data["layer"]) == ("gradcam", "conv2")
        assert data["target"] == mine["target"].tolist()
        peak = mine["maps"].reshape(4, -1).max(1)
        np.testing.assert_allclose(data["peak"], peak, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(
            np.asarray(data["maps"]), mine["maps"] / peak[:, None, None], rtol=1e-4, atol=1e-6
        )
    counts = [
        sum(n for k, n in r["collectives"].items() if k.startswith("SaliencyCallback."))
        for r in results(out).values()
    ]
    assert counts[0] == counts[1] and counts[0] > 0, counts

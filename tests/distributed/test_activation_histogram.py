"""ActivationHistogramCallback and WeightPictureCallback under DDP and FSDP2 (#18 items 3 and 4): real 2-process gloo jobs. The histograms
pool every rank's batch exactly: the TensorBoard counts equal numpy on both ranks' layer outputs, copied by
hooks of the test's own; every rank calls the same collectives, only on logging steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.distributed.test_distributed import edges_of, run_job, tb_histograms

pytestmark = pytest.mark.distributed

LAYERS = ["conv1", "act1", "conv2", "act2", "pool", "fc"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_activation_histograms_pool_every_ranks_batch_exactly_and_weight_pictures_are_full(
    tmp_path, strategy
):
    out = run_job(
        tmp_path,
        name=strategy,
        strategy=strategy,
        devices=2,
        every_n_steps=2,
        callbacks=["acthist", "weightpic"],
        activation_probe_steps=[0, 4],
        probe_steps=[0, 4],
    )
    hists = tb_histograms(out)
    assert sorted(hists) == sorted(f"activations/{n}" for n in LAYERS)
    checked = 0
    for step in (0, 4):
        ranks = [dict(np.load(out / f"acts_rank{r}_step{step:06d}.npz")) for r in (0, 1)]
        shared = np.array_equal(ranks[0]["conv1"], ranks[1]["conv1"])
        # DDP: each rank draws its own batch. The FSDP2 job's ModelParallelStrategy has one data-parallel
        # replica and a tensor-parallel group of 2: both ranks see one batch, which counts once.
        assert shared == (strategy == "fsdp2")
        for name in LAYERS:
            (event,) = [e for e in hists[f"activations/{name}"] if e.step == step]
            pooled = ranks[0][name] if shared else np.concatenate([ranks[0][name], ranks[1][name]])
            edges = edges_of(event.histogram_value)
            want = np.histogram(pooled, bins=edges)[0]
            np.testing.assert_array_equal(np.asarray(event.histogram_value.bucket, dtype=np.int64), want)
            assert event.histogram_value.num == pooled.size
            assert event.histogram_value.min == pooled.min() and event.histogram_value.max == pooled.max()
            checked += 1
    assert checked == 12
    results = {int(p.stem[-1]): json.loads(p.read_text()) for p in out.glob("result_rank*.json")}
    logging_steps = len(range(0, results[0]["global_step"], 2))
    # per logging step: two for the histograms (min/max, counts) and one or two for the gradient norms;
    # under FSDP2's shared batch, one more at fit start (which ranks share a batch)
    counts = [
        sum(n for k, n in results[r]["collectives"].items() if k.startswith("ActivationHistogramCallback."))
        for r in (0, 1)
    ]
    extra = 1 if strategy == "fsdp2" else 0
    assert counts[0] == counts[1] and logging_steps * 3 <= counts[0] - extra <= logging_steps * 4, counts
    viz = out / "tb" / "version_0" / "viz" / "activation_histogram"
    assert {p.name for p in viz.glob("*.png")} >= {"activation_grad_norms.png"}
    assert list(viz.glob("activations_evolution_step*.png"))

    # WeightPictureCallback (#18 item 4) in the same job: under FSDP2 the shards are gathered on every rank
    # first; the filters and matrices rank 0 draws equal the full weights the probe gathered itself
    viz = out / "tb" / "version_0" / "viz" / "weight_picture"
    for step in (0, 4):
        data = json.loads((viz / f"weights_step{step:06d}.json").read_text())
        full = dict(np.load(out / f"params_rank0_step{step:06d}.npz"))
        np.testing.assert_allclose(
            np.asarray(data["filters"]["tiles"]), full["weights/conv1.weight"][:, 0], rtol=1e-6
        )
        (fc,) = data["matrices"]
        np.testing.assert_allclose(np.asarray(fc["values"]), full["weights/fc.weight"], rtol=1e-6)
    assert list(viz.glob("weights_step*.png"))  # (a snapshot waiting while a newer came may be left undrawn)

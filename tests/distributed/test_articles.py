"""The article callbacks under DDP and FSDP2: one real 2-process gloo job per strategy runs
EmbeddingCallback, ModelGraphCallback and SaliencyCallback (#18 items 5, 1, 6) together, with probes that
compute on each rank what the callbacks should show.

* Embedding: the features drawn and written for TensorBoard's projector are rank 0's own (the probe's
  forward pass with its own hook); their PCA equals ``numpy.linalg.svd``'s.
* Model graph: rank 0 alone draws and traces the model, before the strategy wraps or shards it (FSDP2's
  fully_shard runs in configure_model, after), so neither rank calls a collective for it.
* Saliency: every rank runs the forward and backward pass of the fixed sample (under FSDP2 its parameters are
  gathered for both); the Grad-CAM drawn is rank 0's own (the probe's computation on each rank).

Every rank calls the same collectives for each callback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.callbacks.test_embedding import numpy_pca
from tests.distributed.test_distributed import results, run_job
from tests.helpers import read_events

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def job(request, tmp_path_factory):
    """One job of the three callbacks and their probes, 2 epochs on 2 processes."""
    strategy = request.param
    callbacks = ["embedding", "saliency"]
    if shutil.which("dot") is not None:
        callbacks.append("graph")
    return run_job(
        tmp_path_factory.mktemp(strategy),
        name=strategy,
        strategy=strategy,
        devices=2,
        callbacks=callbacks,
        embedding_probe=True,
        saliency_probe=True,
    )


def test_the_features_are_rank_zeros_own_and_every_rank_calls_the_same_collectives(job):
    out = job
    run = out / "tb" / "version_0"
    files = sorted((run / "viz" / "embedding").glob("embedding_step*.json"))
    assert len(files) == 2
    for epoch, path in enumerate(files):
        data = json.loads(path.read_text())
        ranks = [dict(np.load(out / f"embedding_rank{r}_epoch{epoch}.npz")) for r in (0, 1)]
        mine = ranks[0]
        assert (data["layer"], data["source"], data["dims"]) == ("fc", "input", 24)
        coords, explained = numpy_pca(mine["features"])
        np.testing.assert_allclose(np.asarray(data["coords"]), coords, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(data["explained"], explained, rtol=1e-5)
        assert data["labels"] == mine["labels"].tolist()
        assert data["predicted"] == mine["predicted"].tolist()
        tsv = run / "projector" / "viz_embedding_fc" / f"step{data['step']:06d}" / "tensors.tsv"
        np.testing.assert_array_equal(np.loadtxt(tsv, dtype=np.float32), mine["features"])
    assert len(list(out.rglob("projector_config.pbtxt"))) == 1  # rank 0 alone writes
    counts = [
        sum(n for k, n in r["collectives"].items() if k.startswith("EmbeddingCallback."))
        for r in results(out).values()
    ]
    assert counts[0] == counts[1] and counts[0] > 0, counts


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_rank_zero_draws_and_traces_the_whole_model_before_it_is_wrapped(job):
    pytest.importorskip("torchview")
    out = job
    run = out / "tb" / "version_0"
    viz = run / "viz" / "model_graph"
    data = json.loads((viz / "model_graph.json").read_text())
    assert data["meta"] is True and data["model"] in ("TinyCNN", "ShardedCNN")
    svg = (viz / "model_graph.svg").read_text()
    for name in ("conv1", "conv2", "pool", "fc"):
        assert f">{name}</text>" in svg, name
    assert "(2, 6, 8, 8)" in svg  # conv2's output for two examples of 1x8x8
    assert len(list(out.rglob("model_graph.png"))) == 1
    traced = [n.op for n in read_events(run).Graph().node]
    assert traced.count("aten::_convolution") == 2 and traced.count("aten::linear") == 1
    counts = [
        sum(n for k, n in r["collectives"].items() if k.startswith("ModelGraphCallback."))
        for r in results(out).values()
    ]
    assert counts == [0, 0], counts


def test_gradcam_is_rank_zeros_own_and_every_rank_calls_the_same_collectives(job):
    pytest.importorskip("captum")
    out = job
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

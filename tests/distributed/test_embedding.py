"""EmbeddingCallback (#18 item 5) under DDP and FSDP2: real 2-process gloo jobs. The features drawn and
written for TensorBoard's projector are rank 0's own (the test's forward pass on each rank, with its own
hook), their PCA equals ``numpy.linalg.svd``'s; every rank calls the same collectives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.callbacks.test_embedding import numpy_pca
from tests.distributed.test_distributed import results, run_job

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_the_features_are_rank_zeros_own_and_every_rank_calls_the_same_collectives(tmp_path, strategy):
    out = run_job(
        tmp_path, name=strategy, strategy=strategy, devices=2, callbacks=["embedding"], embedding_probe=True
    )
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

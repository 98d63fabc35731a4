"""ModelGraphCallback (#18 item 1) under DDP and FSDP2: real 2-process gloo jobs. Rank 0 alone draws and
traces the model, before the strategy wraps or shards it (FSDP2's fully_shard runs in configure_model,
after), so no rank waits on another: neither calls a collective for it."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.distributed.test_distributed import results, run_job
from tests.helpers import read_events

pytestmark = pytest.mark.distributed


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_rank_zero_draws_and_traces_the_whole_model_before_it_is_wrapped(tmp_path, strategy):
    pytest.importorskip("torchview")
    out = run_job(tmp_path, name=strategy, strategy=strategy, devices=2, callbacks=["graph"], max_epochs=1)
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

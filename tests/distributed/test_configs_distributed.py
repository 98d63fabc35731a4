"""`lightning-viz fit --config configs/quickstart.yaml --config configs/{ddp,fsdp}.yaml` on 2 CPU processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.test_distributed import run_quickstart_with
from tests.helpers import read_events

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
CALLBACK_DIRS = ("model_summary", "weight_histogram", "activation_map", "curves")


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp.yaml"])
def test_quickstart_composes_with_distributed_overlay(tmp_path, overlay):
    run = run_quickstart_with(tmp_path, overlay)
    for name in CALLBACK_DIRS:
        pngs = list((run / "viz" / name).glob("*.png"))
        assert pngs, f"{name} wrote no picture under {run / 'viz'}"
    acc = read_events(run)
    assert any(t.startswith("weights/") for t in acc.Tags()["histograms"])

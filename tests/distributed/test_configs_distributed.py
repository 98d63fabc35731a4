"""`lightning-viz fit --config configs/quickstart.yaml --config configs/{ddp,fsdp}.yaml` on 2 CPU processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.test_distributed import TIMEOUT, assert_no_duplicate_events, clean_env
from tests.helpers import read_events

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
CALLBACK_DIRS = ("model_summary", "weight_histogram", "activation_map", "curves")


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp.yaml"])
def test_quickstart_composes_with_distributed_overlay(tmp_path, overlay):
    cli = Path(sys.executable).parent / "lightning-viz"
    cmd = [
        str(cli), "fit",
        "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--config", str(ROOT / "configs" / overlay),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert log.count("lightning-viz: pictures are in") == 1, log[-3000:]

    versions = sorted((tmp_path / "quickstart").iterdir())
    assert [v.name for v in versions] == ["version_0"], "one run directory, written once"
    run = versions[0]
    assert_no_duplicate_events(run)
    for name in CALLBACK_DIRS:
        pngs = list((run / "viz" / name).glob("*.png"))
        assert pngs, f"{name} wrote no picture under {run / 'viz'}"
    acc = read_events(run)
    assert any(t.startswith("weights/") for t in acc.Tags()["histograms"])

"""Ray Train (#19 item 3): ``ray.train.torch.TorchTrainer`` on 2 CPU workers of a local Ray cluster, the
Trainer built as Ray documents it (``RayDDPStrategy`` / ``RayFSDPStrategy``, ``RayLightningEnvironment``,
``prepare_trainer``; tests/distributed/ray_job.py). The callbacks write one set of outputs from the rank-0
worker, say where, and count exactly; each job runs under a timeout, so a hang fails the test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.test_distributed import (
    ROOT,
    TIMEOUT,
    assert_no_duplicate_events,
    check_against_probe,
    clean_env,
    run_job,
    tb_histograms,
)

pytest.importorskip("ray.train.lightning", reason="Ray Train is a test extra (pip install 'ray[train]')")
pytestmark = [pytest.mark.distributed, pytest.mark.engines]

JOB = ROOT / "tests" / "distributed" / "ray_job.py"
SPEC = {"every_n_steps": 2, "probe_steps": [0, 2], "max_epochs": 2}


def ray_job(tmp: Path, name: str, **spec) -> tuple[Path, str]:
    out = tmp / name
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({**SPEC, **spec, "out": str(out)}))
    env = clean_env(RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, str(JOB), str(path)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    return out, log


def where(log: str) -> list[str]:
    """The folders named by the callbacks' fit-end line (Ray forwards the rank-0 worker's output)."""
    found = re.findall(r"lightning-viz: pictures are in (\S+)", log)
    return sorted(set(found))


def test_ray_ddp_writes_once_and_matches_lightnings_own_launcher(tmp_path):
    out, log = ray_job(tmp_path, "ray_ddp", strategy="ddp")
    assert json.loads((out / "ray_result.json").read_text())["world_size"] == 2
    run = out / "tb" / "version_0"
    assert where(log) == [str(run / "viz")], log[-3000:]
    assert_no_duplicate_events(run)
    assert check_against_probe(out, [0, 2]) > 0  # exact against numpy on the gathered values
    ref = run_job(tmp_path, name="ref", strategy="ddp", devices=2, **SPEC)
    a, b = tb_histograms(ref), tb_histograms(out)
    assert sorted(a) == sorted(b) and a
    for tag in a:
        assert [list(e.histogram_value.bucket) for e in a[tag]] == [
            list(e.histogram_value.bucket) for e in b[tag]
        ], tag


def test_ray_fsdp_counts_the_full_parameters(tmp_path):
    out, log = ray_job(tmp_path, "ray_fsdp", strategy="fsdp")
    run = out / "tb" / "version_0"
    assert where(log) == [str(run / "viz")], log[-3000:]
    assert_no_duplicate_events(run)
    assert check_against_probe(out, [0, 2]) > 0  # the shards' histograms are those of the full parameters


def test_ray_with_the_default_logger_says_where_the_pictures_are(tmp_path):
    _, log = ray_job(tmp_path, "ray_default", strategy="ddp", explicit_dir=False, probe_steps=[])
    dirs = where(log)
    assert len(dirs) == 1, log[-3000:]
    viz = Path(dirs[0])
    assert viz.is_dir() and any(viz.rglob("*.png")), viz

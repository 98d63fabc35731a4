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


def ray_jobs(tmp: Path, **jobs: dict) -> str:
    """Run the named jobs one after another on one local Ray cluster (its start-up is most of a short
    job's time); each writes into ``tmp / name``. Returns the driver's log (every worker's output)."""
    path = tmp / "jobs.json"
    specs = [{**SPEC, **spec, "out": str(tmp / name)} for name, spec in jobs.items()]
    path.write_text(json.dumps({"jobs": specs}))
    env = clean_env(RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, str(JOB), str(path)],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * len(specs),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    return log


def where(log: str) -> list[str]:
    """The folders named by the callbacks' fit-end line (Ray forwards the rank-0 worker's output)."""
    found = re.findall(r"lightning-viz: pictures are in (\S+)", log)
    return sorted(set(found))


def test_ray_ddp_and_fsdp_write_once_count_exactly_and_say_where(tmp_path):
    """Three jobs on one cluster: DDP (its histograms equal those of Lightning's own launcher), FSDP (the
    shards' histograms are those of the full parameters) and DDP with Lightning's default logger (one line
    names the one folder that holds the pictures)."""
    log = ray_jobs(
        tmp_path,
        ray_ddp={"strategy": "ddp"},
        ray_fsdp={"strategy": "fsdp"},
        ray_default={"strategy": "ddp", "explicit_dir": False, "probe_steps": []},
    )
    said = where(log)

    # DDP: one set of outputs, exact, the same histograms as Lightning's own DDP launcher
    out = tmp_path / "ray_ddp"
    assert json.loads((out / "ray_result.json").read_text())["world_size"] == 2
    run = out / "tb" / "version_0"
    assert str(run / "viz") in said, said
    assert_no_duplicate_events(run)
    assert check_against_probe(out, [0, 2]) > 0  # exact against numpy on the gathered values
    ref = run_job(tmp_path, name="ref", strategy="ddp", devices=2, **SPEC)
    a, b = tb_histograms(ref), tb_histograms(out)
    assert sorted(a) == sorted(b) and a
    for tag in a:
        assert [list(e.histogram_value.bucket) for e in a[tag]] == [
            list(e.histogram_value.bucket) for e in b[tag]
        ], tag

    # FSDP: the shards' histograms are those of the full parameters
    out = tmp_path / "ray_fsdp"
    run = out / "tb" / "version_0"
    assert str(run / "viz") in said, said
    assert_no_duplicate_events(run)
    assert check_against_probe(out, [0, 2]) > 0

    # the default logger: exactly one more folder is named, and it holds the pictures
    named = [
        tmp_path / "ray_ddp" / "tb" / "version_0" / "viz",
        tmp_path / "ray_fsdp" / "tb" / "version_0" / "viz",
    ]
    others = [d for d in said if Path(d) not in named]
    assert len(said) == 3 and len(others) == 1, said
    viz = Path(others[0])
    assert viz.is_dir() and any(viz.rglob("*.png")), viz

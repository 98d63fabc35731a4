"""Real 2-process gloo jobs: DDP, FSDP2 (ModelParallelStrategy + fully_shard), multi-node on loopback.

Each job runs ``tests/distributed/worker.py`` in a subprocess under a timeout, so a hang fails the test
instead of stalling the suite. Numbers are checked against numpy on the full parameters that a probe
callback gathered independently at the same hook.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import read_events

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "distributed" / "worker.py"
TIMEOUT = 240
OUR_SCALARS = ("weight_norm/", "grad_norm/", "nonfinite/", "activation/", "model/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(
        PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1"
    )
    env.update(extra)
    return env


def run_job(tmp: Path, worker: Path = WORKER, **spec) -> Path:
    """Run one job of ``worker`` launched by Lightning itself (it starts the other ranks)."""
    out = tmp / spec.pop("name", "job")
    spec["out"] = str(out)
    spec_path = tmp / f"{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(worker), str(spec_path)],
        cwd=tmp,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"job failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return out


def results(out: Path) -> dict[int, dict]:
    return {int(p.stem[-1]): json.loads(p.read_text()) for p in out.glob("result_rank*.json")}


def tb_histograms(out: Path) -> dict[str, list]:
    acc = read_events(out / "tb" / "version_0")
    return {tag: acc.Histograms(tag) for tag in acc.Tags()["histograms"]}


def edges_of(hist) -> np.ndarray:
    """Our bins have one power-of-two width, so the first left edge is exact from the first two limits."""
    limits = np.asarray(hist.bucket_limit, dtype=np.float64)
    return np.concatenate([[limits[0] - (limits[1] - limits[0])], limits])


def probe(out: Path, rank: int, step: int) -> dict[str, np.ndarray]:
    return dict(np.load(out / f"params_rank{rank}_step{step:06d}.npz"))


def check_against_probe(out: Path, steps: list[int], rank: int = 0) -> int:
    """Every weight/gradient histogram at the probed steps equals numpy on the full values; returns checks."""
    hists = tb_histograms(out)
    checked = 0
    for step in steps:
        values = probe(out, rank, step)
        for key, full in values.items():
            events = [e for e in hists[key] if e.step == step]
            assert len(events) == 1, f"{key} at step {step}: {len(events)} events (duplicate or missing)"
            h = events[0].histogram_value
            expected, _ = np.histogram(full.astype(np.float64).ravel(), bins=edges_of(h))
            assert np.array_equal(np.asarray(h.bucket, dtype=np.int64), expected), f"{key} step {step}"
            assert h.num == full.size
            checked += 1
    return checked


def assert_no_duplicate_events(run: Path) -> None:
    """No tag of ours appears twice at one step, and the run has exactly one events file (rank 0's)."""
    acc = read_events(run)
    for kind in ("histograms", "images", "scalars"):
        for tag in acc.Tags()[kind]:
            if kind == "scalars" and not tag.startswith(OUR_SCALARS):
                continue  # Lightning's own (it logs "epoch" at train and validation ends of one step)
            steps = [
                e.step for e in getattr(acc, kind.capitalize() if kind != "histograms" else "Histograms")(tag)
            ]
            dup = [s for s, c in Counter(steps).items() if c > 1]
            assert not dup, f"{kind} {tag!r} logged twice at steps {dup}"
    assert len(list(run.rglob("events.out.tfevents.*"))) == 1, "more than one events file"


def run_all(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> list[str]:
    """Start every ``(argv, env)`` at once; their logs; fails with the logs if one fails or overruns."""
    procs = [
        subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for argv, env in commands
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(log[-4000:] for log in logs)
    return logs


def run_two(argv: list[str], tmp: Path, env: dict[str, str], rank_var: str) -> None:
    """Start ``argv`` twice, with ``rank_var`` 0 and 1, under the timeout; fail with their logs if one fails."""
    run_all([(argv, {**env, rank_var: str(r)}) for r in (0, 1)], tmp)


def run_quickstart_with(tmp: Path, overlay: str, *overrides: str) -> Path:
    """``lightning-viz fit`` with the quickstart and ``configs/<overlay>``, one short epoch; the run directory,
    checked to be the only one, with one "pictures are in" line and no event logged twice."""
    cli = Path(sys.executable).parent / "lightning-viz"
    cmd = [
        str(cli), "fit",
        "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--config", str(ROOT / "configs" / overlay),
        *overrides,
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert log.count("lightning-viz: pictures are in") == 1, log[-3000:]
    runs = sorted((tmp / "quickstart").iterdir())
    assert [r.name for r in runs] == ["version_0"], "one run directory, written once"
    assert_no_duplicate_events(runs[0])
    return runs[0]


def viz_files(out: Path) -> list[str]:
    return sorted(
        str(p.relative_to(out)) for p in (out / "tb" / "version_0" / "viz").rglob("*") if p.is_file()
    )


def test_ddp_all_callbacks_write_once_and_count_exactly(tmp_path):
    out = run_job(tmp_path, name="ddp", strategy="ddp", devices=2, every_n_steps=2, probe_steps=[0, 2, 4])
    res = results(out)
    assert sorted(res) == [0, 1] and res[0]["world_size"] == 2

    # Counts equal numpy on rank 0's full values (DDP replicas: no double counting) and gradients agree
    # across ranks (they are all-reduced), so rank 1's view gives the same histograms.
    assert check_against_probe(out, [0, 2, 4], rank=0) == 3 * 6 * 2
    assert check_against_probe(out, [0, 2, 4], rank=1) == 3 * 6 * 2
    assert_no_duplicate_events(out / "tb" / "version_0")

    files = viz_files(out)
    assert len(files) == len(set(files))
    for sub in ("model_summary/summary.txt", "curves/curves.json"):
        assert any(f.endswith(sub) for f in files), f"missing {sub}: {files}"
    assert any("activation_map" in f and f.endswith(".png") for f in files)
    assert any("weight_histogram" in f and f.endswith(".png") for f in files)

    # Every rank issued the same collectives in the same hooks, and histograms cost at most 2 per
    # logging step and none on other steps.
    assert res[0]["collectives"] == res[1]["collectives"]
    hist = {
        k: v for k, v in res[0]["collectives"].items() if k.startswith("WeightHistogramCallback.on_before")
    }
    assert hist, res[0]["collectives"]
    assert set(hist) <= {f"WeightHistogramCallback.on_before_optimizer_step@{s}" for s in range(0, 100, 2)}
    assert all(v <= 2 for v in hist.values()), hist
    per_step = [k for k in res[0]["collectives"] if "batch" in k]
    assert not per_step, f"collectives in per-batch hooks: {per_step}"


def test_fsdp2_histograms_and_summary_are_of_the_full_parameters(tmp_path):
    out = run_job(
        tmp_path,
        name="fsdp",
        strategy="fsdp2",
        devices=2,
        every_n_steps=2,
        probe_steps=[0, 2],
        callbacks=["summary", "weights"],
    )
    assert check_against_probe(out, [0, 2], rank=0) == 2 * 6 * 2
    assert_no_duplicate_events(out / "tb" / "version_0")
    full = probe(out, 0, 0)
    total = sum(v.size for k, v in full.items() if k.startswith("weights/"))
    summary = json.loads(next(out.rglob("model_summary/summary.json")).read_text())
    assert summary["totals"]["total_params"] == total
    res = results(out)
    assert res[0]["collectives"] == res[1]["collectives"]


def test_multi_node_on_loopback_matches_two_devices(tmp_path):
    """num_nodes=2 with one process per node (NODE_RANK per process) gives the same outputs as devices=2."""
    ref = run_job(tmp_path, name="ref", strategy="ddp", devices=2, every_n_steps=2, callbacks=["weights"])
    out = tmp_path / "nodes"
    spec = {
        "out": str(out),
        "strategy": "ddp",
        "devices": 1,
        "num_nodes": 2,
        "every_n_steps": 2,
        "callbacks": ["weights"],
    }
    spec_path = tmp_path / "nodes.json"
    spec_path.write_text(json.dumps(spec))
    env = clean_env(WORLD_SIZE="2", LOCAL_RANK="0")
    run_two([sys.executable, str(WORKER), str(spec_path)], tmp_path, env, "NODE_RANK")
    assert sorted(results(out)) == [0, 1]
    assert_no_duplicate_events(out / "tb" / "version_0")
    a, b = tb_histograms(ref), tb_histograms(out)
    assert sorted(a) == sorted(b)
    for tag in a:
        assert [e.step for e in a[tag]] == [e.step for e in b[tag]], tag
        for ea, eb in zip(a[tag], b[tag]):
            assert list(ea.histogram_value.bucket) == list(eb.histogram_value.bucket), (tag, ea.step)
            assert list(ea.histogram_value.bucket_limit) == list(eb.histogram_value.bucket_limit)


def test_slow_rank_neither_deadlocks_nor_duplicates(tmp_path):
    out = run_job(
        tmp_path,
        name="slow",
        strategy="ddp",
        devices=2,
        every_n_steps=2,
        slow_rank=1,
        slow_steps=[0, 2],
        slow_seconds=3.0,
        probe_steps=[0, 2],
    )
    assert check_against_probe(out, [0, 2], rank=0) == 2 * 6 * 2
    assert_no_duplicate_events(out / "tb" / "version_0")


EXIT_PROBE = """
import atexit, os, sys
import torch.distributed as dist
from lightning_viz.core import distributed
atexit.register(lambda: print("group alive at exit:", dist.is_initialized(), flush=True))  # runs last
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
distributed.destroy_group_at_exit()
distributed.destroy_group_at_exit()  # once is enough: registered a single time
dist.all_reduce(__import__("torch").ones(3))
"""


def test_a_gloo_group_is_destroyed_before_the_interpreter_finalizes(tmp_path):
    """Lightning destroys the process group at exit for NCCL only; a gloo group alive into finalization can
    abort a finished run ("terminate called without an active exception"). The callbacks' setup registers
    the destruction at exit: the group is gone before the interpreter's last exit handlers run."""
    run = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "group alive at exit: False" in run.stdout
    assert "terminate called" not in run.stderr

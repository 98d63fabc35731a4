"""``make gpu-check`` (``python -m benchmarks.gpu_check``) on a machine without CUDA: one line says so and
names what runs on the CPU, those parts run and pass, nothing is written, and the exit status is 0. Also
the GPU benchmark's writers: only the ``gpu`` key of results.json and the text between the GPU markers of
RESULTS.md change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: make gpu-check runs it all")
def test_gpu_check_without_cuda_runs_the_cpu_parts_and_passes():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    said = [line for line in proc.stdout.splitlines() if "no CUDA device" in line]
    assert len(said) == 1, proc.stdout[-2000:]
    assert said[0].startswith("gpu-check: ") and "tests/gpu" in said[0] and "dry run" in said[0], said
    assert "gpu-check: tests/gpu on CPU: passed" in proc.stdout, proc.stdout[-2000:]
    assert "gpu-check: GPU benchmark: passed" in proc.stdout, proc.stdout[-2000:]
    assert (
        "skipped" in proc.stdout and "needs a CUDA device" in proc.stdout
    )  # the CUDA variants skip, saying why
    assert "dry run: nothing written" in proc.stdout  # printed instead of writing RESULTS.md and results.json


def fake_gpu() -> dict:
    """A ``gpu`` entry as benchmarks/gpu.py makes it (made-up numbers)."""
    arm = {"steady_ratio": 1.02, "amortized_ratio": 1.1, "logging_step_excess_ms": 3.0, "peak_gpu_mb": 9000.0}
    hist = {"tensors": 322, "elements": 51_100_000, "bytes": 204_400_000, "rounds": 3, "reps_per_round": 5}
    hist |= {"vs_floor": 4.0, "vs_floor_fused": 20.0, "exactness_checked": 322, "mismatches": 0}
    hist |= {"median_seconds": {"ours": 0.02, "floor": 0.005, "floor_fused": 0.001}}
    hist |= {"median_event_seconds": {"ours": 0.019, "floor": 0.004, "floor_fused": 0.001}}
    return {
        "command": "make gpu-check",
        "device": "NVIDIA H200",
        "machine": {"torch": "2.11.0"},
        "setup": {"model": "resnet50", "precision": "bf16-mixed", "input": "3x224x224", "batch": 64}
        | {"epochs": 4, "steps_per_epoch": 10},
        "fits": {
            "rounds": 2,
            "arms": [{"arm": "B0", "note": "", "b0_steady_ms": 40.0, "b0_amortized_ms": 60.0} | arm],
        },
        "histograms": hist,
        "wandb_skipped": "wandb is not usable here (ImportError: x)",
        "wall_seconds": 100.0,
    }


def test_results_writers_touch_only_the_gpu_parts(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"suite_overhead_ratio": 1.5, "histograms": {"x": 1}}))
    (tmp_path / "RESULTS.md").write_text("# head\n\nCPU text\n")
    entry = fake_gpu()
    gpu.write_results(entry, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == {"suite_overhead_ratio": 1.5, "histograms": {"x": 1}, "gpu": entry}
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.startswith("# head\n\nCPU text\n\n<!-- gpu -->\n## GPU rows: resnet50 on NVIDIA H200")
    assert md.endswith("<!-- /gpu -->\n") and "| B0 | 1.020 | 1.100 | 3.0 | 9000 |" in md
    assert "**4.00x**" in md and "322 of 322 tensors" in md and "peer-W&B not measured: wandb" in md
    # a second run replaces the section, and only it
    (tmp_path / "RESULTS.md").write_text(md + "\n## after\n")
    entry["device"] = "NVIDIA H100"
    gpu.write_results(entry, tmp_path)
    again = (tmp_path / "RESULTS.md").read_text()
    assert again.count("<!-- gpu -->") == 1 and "on NVIDIA H100" in again and "H200" not in again
    assert again.startswith("# head\n\nCPU text\n\n<!-- gpu -->") and again.endswith(
        "<!-- /gpu -->\n\n## after\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "results.json"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    for name in ("RESULTS.md", "results.json"):  # as readable as the umask says, not owner-only
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_cpu_report_keeps_the_gpu_rows(tmp_path):
    """`make bench` rewrites RESULTS.md from results.json: the GPU section of `make gpu-check` survives it."""
    from benchmarks.report import write_results_md

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    results["gpu"] = fake_gpu()
    (tmp_path / "results.json").write_text(json.dumps(results))
    md = write_results_md(tmp_path).read_text()
    assert md.count("<!-- gpu -->") == 1 and "## GPU rows: resnet50 on NVIDIA H200" in md

"""``make gpu-check``: the CUDA tests (``tests/gpu``) and the GPU benchmark rows (``benchmarks/gpu.py``) in one
command that exits non-zero when any part fails, within ``BUDGET_S`` on one CUDA device.

Without a CUDA device it says so in one line, runs what the CPU can (the CPU variants of ``tests/gpu``, whose
CUDA variants skip, and ``benchmarks/gpu.py --dry-run``, which writes nothing) and exits 0 when they pass.
Each part runs in its own process under the time left; one that overruns is stopped and fails the check.

    python -m benchmarks.gpu_check          # what `make gpu-check` runs
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 360  # the whole check on one GPU, tests and benchmark
TESTS_SHARE = 0.55  # of the budget, at most, for the tests; the benchmark gets what is left


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (asked in a child process, so that this one never touches CUDA)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT).returncode == 0


def parts(cuda: bool) -> list[tuple[str, list[str], float]]:
    """``(name, command, share of the budget)`` of each part, in order."""
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/gpu"]
    bench = [sys.executable, "-m", "benchmarks.gpu", *([] if cuda else ["--dry-run"])]
    return [("CUDA tests" if cuda else "tests/gpu on CPU", tests, TESTS_SHARE), ("GPU benchmark", bench, 1.0)]


def main() -> int:
    """Run every part; print one line per part and a last line; return the exit status."""
    t0 = time.monotonic()
    cuda = cuda_available()
    if not cuda:
        print(
            "gpu-check: no CUDA device here; running on the CPU only the CPU variants of tests/gpu (the CUDA "
            "ones skip) and a dry run of benchmarks/gpu.py (nothing written)",
            flush=True,
        )
    env = {**os.environ, "LV_GPU_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    failed = []
    for name, cmd, share in parts(cuda):
        left = BUDGET_S - (time.monotonic() - t0)
        limit = max(left * share if share < 1 else left, 1.0)
        if name == "GPU benchmark":  # it skips its second round of fits rather than overrun
            cmd = [*cmd, "--budget-s", f"{limit - 15:.0f}"]
        start = time.monotonic()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit).returncode
            status = "passed" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            rc, status = (
                124,
                f"FAILED (stopped after {limit:.0f} s, the time left of the {BUDGET_S} s budget)",
            )
        print(f"gpu-check: {name}: {status} in {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    total = time.monotonic() - t0
    if failed:
        print(f"gpu-check: FAILED: {', '.join(failed)} ({total:.0f} s)", flush=True)
        return 1
    print(f"gpu-check: all parts passed in {total:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``quickstart_whole_ratio``: the first command a newcomer runs, timed as whole processes, side by side.

``lightning-viz fit --config configs/quickstart.yaml`` against the same command with no callbacks
(``--trainer.callbacks=[] --viz_defaults=false``: the core callbacks are on by default when none is configured,
so ``--trainer.callbacks=[]`` alone would not turn them off). The rounds alternate the two commands (the order
flips every round), each a fresh process started in its own temporary directory, so start-up, imports, the
render process and the flush at fit end all count. Each run's wall time and CPU seconds (the process and every
child it waited for, the render process included) are kept; the ratio is that of the medians.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WITH = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml")]
WITHOUT = [*WITH, "--trainer.callbacks=[]", "--viz_defaults=false"]


def _run(args: list[str]) -> dict[str, float]:
    """One whole ``lightning-viz`` process; its wall time and CPU seconds (with its children)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the example project, as from the repository root
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="lvbench-quickstart-") as cwd:
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lightning_viz", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"`lightning-viz {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def run_quickstart(rounds: int) -> dict[str, Any]:
    """``rounds`` pairs of the two commands, alternating which runs first."""
    runs: dict[str, list[dict[str, float]]] = {"suite": [], "no_callbacks": []}
    for r in range(rounds):
        order = [("suite", WITH), ("no_callbacks", WITHOUT)]
        for arm, args in order if r % 2 == 0 else order[::-1]:
            runs[arm].append(_run(args))
            print(f"  quickstart round {r + 1}/{rounds}: {arm} {runs[arm][-1]['wall_s']:.1f} s", flush=True)
    med = {
        arm: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "cpu_s")} for arm, rs in runs.items()
    }
    return {
        "rounds": rounds,
        "commands": {
            "suite": "lightning-viz " + " ".join(WITH[:2]) + " configs/quickstart.yaml",
            "no_callbacks": "lightning-viz "
            + " ".join(WITHOUT[:2])
            + " configs/quickstart.yaml "
            + " ".join(WITHOUT[3:]),
        },
        "runs": runs,
        "median": med,
        "whole_ratio": med["suite"]["wall_s"] / med["no_callbacks"]["wall_s"],
        "cpu_ratio": med["suite"]["cpu_s"] / med["no_callbacks"]["cpu_s"],
        "extra_cpu_s": med["suite"]["cpu_s"] - med["no_callbacks"]["cpu_s"],
    }


def section(q: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of ``quickstart_whole_ratio``."""
    m = q["median"]
    rows = [
        f"| {arm} | `{q['commands'][arm]}` | {m[arm]['wall_s']:.1f} | {m[arm]['cpu_s']:.1f} | "
        + ", ".join(f"{x['wall_s']:.1f}" for x in q["runs"][arm])
        + " |"
        for arm in ("suite", "no_callbacks")
    ]
    return [
        "## The quickstart as a newcomer runs it (`quickstart_whole_ratio`)",
        "",
        "Whole processes, side by side: each round runs both commands (the order flips every round), each a fresh "
        "process in its own temporary directory, so start-up, imports, the render process and the fit-end flush "
        "count. CPU seconds are the process's and its children's (the render process included).",
        "",
        "| arm | command | median wall (s) | median CPU (s) | wall per round (s) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Whole-process ratio **{q['whole_ratio']:.2f}** (CPU seconds {q['cpu_ratio']:.2f}x, "
        f"{q['extra_cpu_s']:.1f} s more), over {q['rounds']} rounds.",
        "",
    ]

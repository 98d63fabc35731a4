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


# The same command, with what its processes spent written to a file at exit (for the breakdown only; the
# timed rounds run the plain command). Registered before the renderer exists, so it runs after it closed.
PROFILED = """
import atexit, json, resource, sys
from lightning_viz.core import renderer
out = sys.argv.pop(1)
child = {}
close = renderer.RenderProcess.close
def closing(self):
    cpu = self.cpu_seconds()
    if cpu is not None:
        child["cpu_s"] = child.get("cpu_s", 0.0) + cpu
    close(self)
renderer.RenderProcess.close = closing
def dump():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rp = renderer._process
    with open(out, "w") as fh:
        json.dump({"main_cpu_s": ru.ru_utime + ru.ru_stime, "render_cpu_s": child.get("cpu_s", 0.0),
                   "drawing": rp.costs if rp is not None else {}}, fh)
atexit.register(dump)
sys.argv[0] = "lightning-viz"
from lightning_viz.command import main
main()
"""


def _profiled(args: list[str]) -> dict[str, Any]:
    """One run of the command that reports its training process's CPU seconds and its render process's
    (start-up and imports, and each kind of figure drawn)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="lvbench-quickstart-") as cwd:
        out = Path(cwd) / "spent.json"
        done = subprocess.run(
            [sys.executable, "-c", PROFILED, str(out), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the profiled quickstart failed:\n{done.stderr[-3000:]}")
        import json

        return json.loads(out.read_text())


def breakdown() -> dict[str, Any]:
    """Where the suite's extra CPU seconds go: the training process, the render process's start-up, and
    the drawing of each kind of figure (one profiled run of each command)."""
    suite, base = _profiled(WITH), _profiled(WITHOUT)
    drawing = {
        k.rsplit(".", 1)[-1]: {"figures": int(n), "cpu_s": c} for k, (n, c) in suite["drawing"].items()
    }
    drawn = sum(d["cpu_s"] for d in drawing.values())
    return {
        "training_process_extra_cpu_s": suite["main_cpu_s"] - base["main_cpu_s"],
        "render_process_cpu_s": suite["render_cpu_s"],
        "render_start_up_cpu_s": suite["render_cpu_s"] - drawn,
        "drawing": drawing,
    }


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
        "breakdown": breakdown(),
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
    out = [
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
    b = q.get("breakdown")
    if b:
        kinds = ", ".join(
            f"{name.removeprefix('render_')} {d['cpu_s']:.2f} s ({d['figures']} drawn)"
            for name, d in sorted(b["drawing"].items(), key=lambda kv: -kv[1]["cpu_s"])
        )
        out += [
            "Where the extra CPU seconds go (one more run of each command, with what its processes spent "
            f"written at exit): the training process {b['training_process_extra_cpu_s']:+.1f} s (the "
            "callbacks' hooks, captures and the writer threads); the render process "
            f"{b['render_process_cpu_s']:.1f} s, of which {b['render_start_up_cpu_s']:.1f} s start-up (Python, "
            "matplotlib, the render functions, torch and torchmetrics for the confusion matrix: it runs beside "
            f"Lightning's import, on the second core) and the drawing: {kinds}.",
            "",
        ]
    return out

"""CPU seconds per figure of each kind, as the render process draws them, now and at a baseline commit.

The data: one run of ``lightning-viz fit --config configs/quickstart.yaml --config
configs/pathologies/vanishing.yaml`` (so that the health figure has findings to show), two epochs, in a
temporary directory; the latest data file of each kind of figure is kept. The drawing: two render processes
side by side, this checkout's and the baseline commit's (``git worktree``, removed afterwards), each a plain
``python -m lightning_viz.core.renderer`` with torch and torchmetrics loaded (as in the quickstart, whose
confusion matrices draw with torchmetrics' own ``.plot``). Every round draws each kind once in each process,
alternating which goes first; a figure's cost is the CPU time its process used from the request until it is
idle again (``/proc/<pid>/stat``): drawing, rasterising, PNG-encoding, and the garbage collection after it.
"""

from __future__ import annotations

import os
import pickle
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASELINE = "f6a8405"  # the commit before the render process froze its libraries out of the collector
KINDS = {  # render function -> the kind of figure, as the tables name it
    "render_evolution": "weight / gradient evolution",
    "render_curves": "learning curves",
    "render_feature_maps": "activation maps",
    "render_heatmaps": "activation heatmaps",
    "render_activation_stats": "activation statistics",
    "render_health": "training health",
    "render_summary": "model summary",
    "render_metric": "confusion matrix (torchmetrics .plot)",
}
_HEADER = struct.Struct("<Q")


class Child:
    """A render process of the checkout at ``tree``, spoken to with its own protocol."""

    def __init__(self, tree: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        # the child's module: render_child since it left renderer.py (the baseline commit is older)
        child = "render_child" if (tree / "lightning_viz/core/render_child.py").exists() else "renderer"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"lightning_viz.core.{child}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=tree,
        )
        self.call(("stats",))  # after its warm-up
        import importlib

        # as in the quickstart, torch and torchmetrics loaded (for the metric plots): a "render" request of
        # import_module, which every version of the child serves (answering that a module is no figure)
        for module in ("torch", "torchmetrics"):
            self.call(("render", importlib.import_module, module))

    def call(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
        self.proc.stdin.flush()
        (size,) = _HEADER.unpack(self.proc.stdout.read(_HEADER.size))
        return pickle.loads(self.proc.stdout.read(size))

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def draw(self, render: Any, data: Any) -> float:
        """CPU seconds the child spent on one figure: from the request until it is idle again. The child
        collects garbage after it has replied, so a second request (its stats, answered once that is done)
        closes the measurement; otherwise that work would be charged to nothing, or to the next figure."""
        before = self.cpu()
        reply = self.call(("render", render, data))
        if reply[0] != "ok":
            raise RuntimeError(f"drawing failed: {reply}")
        self.call(("stats",))
        return self.cpu() - before

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def figure_data(root: Path) -> dict[str, tuple[Any, Any, str]]:
    """One run of the quickstart with a planted pathology; the latest data of each kind of figure."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIGHTNING_VIZ_REDRAW_S": "0"}
    cmd = [
        sys.executable,
        "-m",
        "lightning_viz",
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
    ]
    cmd += ["--config", str(REPO / "configs" / "pathologies" / "vanishing.yaml"), "--trainer.max_epochs=2"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the data run failed:\n{done.stderr[-3000:]}")
    from lightning_viz import rerender

    found: dict[str, tuple[Any, Any, str]] = {}
    for path in sorted(rerender.find_data(root)):
        for render, data, stem in rerender.load(path) or []:
            if render.__name__ in KINDS:
                found[render.__name__] = (render, data, stem)  # sorted: the latest step wins
    return found


def _baseline_tree(ref: str, where: Path) -> Path | None:
    tree = where / "baseline"
    done = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
        capture_output=True,
        text=True,
    )
    return tree if done.returncode == 0 else None


def run_figure_costs(rounds: int, baseline: str = BASELINE) -> dict[str, Any]:
    """``rounds`` of every kind of figure in this checkout's render process and the baseline's."""
    with tempfile.TemporaryDirectory(prefix="lvbench-figures-") as tmp:
        root = Path(tmp)
        found = figure_data(root)
        tree = _baseline_tree(baseline, root)
        children = {"now": Child(REPO)}
        try:
            if tree is not None:
                children["baseline"] = Child(tree)
            for child in children.values():  # warm-up: the first drawing of each kind, not counted
                for render, data, _ in found.values():
                    child.draw(render, data)
            costs: dict[str, dict[str, list[float]]] = {name: {k: [] for k in children} for name in found}
            walls: dict[str, list[float]] = {name: [] for name in found}
            for r in range(rounds):
                order = list(children) if r % 2 == 0 else list(children)[::-1]
                for name, (render, data, _) in found.items():
                    for k in order:
                        t = time.perf_counter()
                        costs[name][k].append(children[k].draw(render, data))
                        if k == "now":
                            walls[name].append(time.perf_counter() - t)
        finally:
            for child in children.values():
                child.close()
            if tree is not None:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False
                )
                subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
    rows = []
    for name, by in costs.items():
        now = statistics.median(by["now"])
        base = statistics.median(by["baseline"]) if by.get("baseline") else None
        rows.append(
            {
                "render": name,
                "kind": KINDS[name],
                "example": found[name][2],
                "cpu_s": now,
                "wall_s": statistics.median(walls[name]),
                "baseline_cpu_s": base,
                "ratio_to_baseline": now / base if base else None,
            }
        )
    rows.sort(key=lambda row: -(row["baseline_cpu_s"] or row["cpu_s"]))
    return {"rounds": rounds, "baseline": baseline if tree is not None else None, "rows": rows}


def section(f: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of the figure costs."""
    base = f["baseline"]
    head = "| figure | example | CPU s per figure now | wall s now |"
    rule = "|---|---|---|---|"
    if base:
        head += f" CPU s at {base} | now / then |"
        rule += "---|---|"
    lines = [
        "## CPU seconds per figure of each kind",
        "",
        "Each kind drawn by a render process with torch and torchmetrics loaded (as in the quickstart), from the "
        "data of one quickstart run with a planted pathology (`configs/pathologies/vanishing.yaml`, so that the "
        "health figure has findings); the CPU time of the render process from the request until it is idle "
        "again, so drawing, rasterising, PNG-encoding and the garbage collection after the figure; median of "
        f"{f['rounds']} rounds"
        + (f", side by side with the render process of commit {base} (a `git worktree`)." if base else "."),
        "",
        head,
        rule,
    ]
    for row in f["rows"]:
        line = f"| {row['kind']} | `{row['example']}` | {row['cpu_s']:.3f} | {row['wall_s']:.3f} |"
        if base:
            then = row["baseline_cpu_s"]
            line += f" {then:.3f} | {row['ratio_to_baseline']:.2f} |" if then else " n/a | |"
        lines.append(line)
    lines.append("")
    return lines

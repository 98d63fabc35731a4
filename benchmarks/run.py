"""``make bench``: lightning-viz against no callbacks, TensorBoard histograms and wandb.watch, on CPU.

Usage::

    python -m benchmarks.run                 # everything; writes benchmarks/RESULTS.md and results.json
    python -m benchmarks.run --quick         # a smoke run (minutes less; numbers not meaningful)
    python -m benchmarks.run --parts latency --merge   # figure_latency_s only, into the existing results
    python -m benchmarks.run --parts quickstart --merge --no-wandb   # quickstart_whole_ratio only
    python -m benchmarks.run --parts figures --merge --no-wandb      # CPU seconds per figure of each kind
    python -m benchmarks.run --device cuda --parts resnet,hist --out /tmp/gpu   # GPU rows (results_gpu.json)

Arms are trained in one process, interleaved (the order rotates every round) and repeated; medians are
reported. The headline suite overhead comes from its own B0/suite fits in adjacent pairs (``run_overhead``).
The soak (memory growth) runs in a fresh child process, long enough for bounded buffers to fill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = (
    "histograms",
    "drawing",
    "overhead",
    "overhead_core_free",
    "latency",
    "quickstart",
    "figures",
    "cnn",
    "resnet50",
    "soak",
    "soak_articles",
)


def _quiet() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="lvbench-wandb-"))
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def machine(device: str, threads: int) -> dict[str, Any]:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import wandb

        info["wandb"] = wandb.__version__
    except ImportError:
        info["wandb"] = None
    return info


def _median(values: list[float]) -> float:
    import numpy as np

    return float(np.median(values)) if values else float("nan")


def summarize_arms(names: list[str], records: dict[str, list[Any]], arms: dict[str, Any]) -> list[dict]:
    """Per arm: ratios to B0 of the same round (amortized, logging steps, other steps), RSS."""
    rows = []
    base = records["B0"]
    for name in names:
        recs, arm = records[name], arms[name]
        amort, log_ratio, other_ratio, excess, growth, peak = [], [], [], [], [], []
        steady, fixed = [], []
        n_logging = 0
        for rec, b in zip(recs, base):
            b_steps = [dt for g, dt, _ in b.steps[2:]]
            b_med = _median(b_steps)
            amort.append(rec.amortized / b.amortized)
            if rec.steady is not None and b.steady is not None:
                steady.append(rec.steady / b.steady)
                fixed.append(rec.fixed - b.fixed)
            if arm.name.startswith("peer-W&B"):
                flags = [fired for _, _, fired in rec.steps[2:]]
            elif arm.logging_step is None:
                flags = [False] * len(rec.steps[2:])
            else:
                flags = [arm.logging_step(g) for g, _, _ in rec.steps[2:]]
            dts = [dt for _, dt, _ in rec.steps[2:]]
            logging = [dt for dt, f in zip(dts, flags) if f]
            other = [dt for dt, f in zip(dts, flags) if not f]
            n_logging += len(logging)
            if logging:
                log_ratio.append(_median(logging) / b_med)
                excess.append((_median(logging) - b_med) * 1e3)
            if other:
                other_ratio.append(_median(other) / b_med)
            if rec.rss:
                growth.append(rec.rss[-1][1] - rec.rss[0][1])
                peak.append(max(r for _, r in rec.rss))
        rows.append(
            {
                "arm": name,
                "note": arm.note,
                "rounds": len(recs),
                "steps_per_fit": recs[0].n_steps,
                "amortized_ratio": _median(amort),
                "steady_ratio": _median(steady) if steady else None,
                "fixed_extra_seconds": _median(fixed) if fixed else None,
                "fit_seconds": _median([rec.fit_seconds for rec in recs]),
                "logging_step_ratio": _median(log_ratio) if log_ratio else None,
                "non_logging_step_ratio": _median(other_ratio) if other_ratio else None,
                "logging_step_excess_ms": _median(excess) if excess else None,
                "logging_steps_per_fit": n_logging / max(len(recs), 1),
                "b0_step_ms": _median([_median([dt for _, dt, _ in b.steps[2:]]) for b in base]) * 1e3,
                "b0_amortized_ms": _median([b.amortized for b in base]) * 1e3,
                "b0_steady_ms": _median([b.steady for b in base if b.steady is not None]) * 1e3
                if any(b.steady is not None for b in base)
                else None,
                "peak_rss_mb": max(peak) if peak else None,
                "rss_growth_mb": _median(growth) if growth else None,
            }
        )
    return rows


def run_arms(kind: str, args: argparse.Namespace, with_wandb: bool) -> dict[str, Any]:
    from benchmarks import arms as A
    from benchmarks.measure import timed_fit

    if kind == "cnn":
        arm_list = A.cnn_arms(log_every_n_steps=5, with_wandb=with_wandb)
        loaders = A.synthetic_loaders(args.cnn_train, args.cnn_val, (1, 8, 8), 10, 64)
        factory, fit_kw = A.digits_cnn, {"max_epochs": args.cnn_epochs}
        rounds = args.cnn_rounds
        setup = {
            "model": "example_projects.digits.DigitsClassifier (quickstart settings)",
            "data": f"synthetic 1x8x8, {args.cnn_train} train / {args.cnn_val} val, batch 64",
            "epochs_per_fit": args.cnn_epochs,
            "steps_per_epoch": -(-args.cnn_train // 64),
        }
    else:
        arm_list = A.resnet_arms(with_wandb=with_wandb)
        size, batch = args.resnet_size, args.resnet_batch
        n_train = batch * args.resnet_steps
        loaders = A.synthetic_loaders(n_train, batch * 2, (3, size, size), 1000, batch)
        factory, fit_kw = (lambda: A.ResNet50(size)), {"max_epochs": 1}
        rounds = args.resnet_rounds
        setup = {
            "model": "torchvision.models.resnet50(weights=None)",
            "data": f"synthetic 3x{size}x{size}, batch {batch}, {args.resnet_steps} steps per fit, 2 val batches",
        }
    arms = {a.name: a for a in arm_list}
    names = [a.name for a in arm_list]
    records: dict[str, list[Any]] = {n: [] for n in names}
    root = tempfile.mkdtemp(prefix=f"lvbench-{kind}-")
    timed_fit(arms["B0"], factory, loaders, device=args.device, root=root, **fit_kw)  # warm-up, not counted
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            records[name].append(
                timed_fit(arms[name], factory, loaders, device=args.device, root=root, **fit_kw)
            )
        print(f"  {kind}: round {r + 1}/{rounds} done", flush=True)
    return {"setup": setup, "rounds": rounds, "arms": summarize_arms(names, records, arms)}


def _pin_helper_threads(core: int) -> None:
    """Keep every thread of this process but the main one (the training thread) on ``core``, as on a machine
    whose spare cores run them: a background thread moves threads as they start (writer threads, the
    logger's event-file thread; threads inherit the pinning of the thread that starts them)."""
    main = threading.get_native_id()

    def pin() -> None:
        os.sched_setaffinity(0, {core})  # this thread first
        done: set[int] = set()
        while True:
            for tid in map(int, os.listdir("/proc/self/task")):
                if tid != main and tid not in done:
                    try:
                        os.sched_setaffinity(tid, {core})
                        done.add(tid)
                    except OSError:  # the thread ended meanwhile
                        pass
            time.sleep(0.05)

    threading.Thread(target=pin, daemon=True, name="bench-pin").start()


def overhead_child(args: argparse.Namespace) -> None:
    """One fit of one arm of :func:`run_overhead`, in a fresh process pinned to ``--core``; from ``--go``."""
    from benchmarks import arms as A
    from benchmarks.measure import timed_fit

    if args.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})  # inherited by the render process the suite starts
    if args.free_core is not None:  # a core left for the rest: the render process and every helper thread
        if args.overhead_child == "suite":
            from lightning_viz.core import renderer

            drawing = renderer.get_renderer()
            drawing.start()
            if drawing.pid is not None:
                os.sched_setaffinity(drawing.pid, {args.free_core})
        _pin_helper_threads(args.free_core)
    loaders = A.synthetic_loaders(args.cnn_train, args.cnn_val, (1, 8, 8), 10, 64)
    root = tempfile.mkdtemp(prefix="lvbench-overhead-")
    timed_fit(A.Arm("warm-up", list), A.digits_cnn, loaders, device="cpu", root=root, max_steps=50)
    arm = A.Arm("B0", list) if args.overhead_child == "B0" else A.Arm("suite", A.suite)
    # B0 trains two epochs more, so the suite's measured epochs never run beside an idle core
    epochs = args.overhead_epochs + (2 if args.overhead_child == "B0" else 0)
    Path(args.overhead_json + ".ready").touch()
    while not Path(args.go).exists():  # both fits of a round start together, once both are warm
        time.sleep(0.002)
    rec = timed_fit(arm, A.digits_cnn, loaders, device="cpu", root=root, max_epochs=epochs)
    # The same epochs in both arms: not the first two (start-up: the suite's render process imports matplotlib
    # at normal priority, on this core, during the first epoch or two) and not the last (the fit-end flush).
    measured = range(2, args.overhead_epochs - 1)
    seconds = rec.epoch_starts[measured.stop] - rec.epoch_starts[measured.start]
    out = {
        "arm": args.overhead_child,
        "core": args.core,
        "steady": seconds / sum(rec.epoch_steps[k] for k in measured),
    }
    Path(args.overhead_json).write_text(json.dumps(out))


def run_overhead(args: argparse.Namespace, setting: str = "all_busy") -> dict[str, Any]:
    """The headline ``suite_overhead_ratio``: B0 and the full suite (defaults) on the example CNN, side by side.

    ``setting="core_free"`` (the headline ``suite_overhead_ratio``, the setting users have): both arms train on
    one core, and the suite's render process and every other thread of both arms are moved to the other one,
    so figures are drawn there while the suite trains (and the training thread never waits for them);
    ``"all_busy"`` (``suite_overhead_all_busy_ratio``) is described below: the suite's every core trains, so
    its figures are drawn while its training thread waits for them.

    This machine's speed wanders by tens of percent within seconds (shared host), so fits run one after the
    other differ by more than the 5% to resolve (two identical B0 fits: up to 15% apart). Each round therefore
    trains B0 and the suite at the same time, each in a fresh process pinned to its own core with one torch
    thread (the suite's render process inherits the pinning, so its drawing is charged to the suite's core),
    starting together; which starts first alternates every round, and the cores every two. Both see the same machine at the same moments, and the
    ratio of their steady per-step times is taken per round, the median over rounds reported. A/A rounds
    (B0 beside B0) in the same set-up show how far identical work differs: the resolution of the ratio.
    """
    cores = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    pinned = len(cores) == 2

    def pair(first: str, second: str, r: int) -> dict[str, dict[str, Any]]:
        """Round ``r``: which arm is started first alternates every round, which core each gets every two
        (the process started second ran a few percent slower in A/A rounds here: both must take turns)."""
        go = tempfile.mktemp(suffix=".go")  # created once both children are warm
        swap = (r // 2) % 2
        other = swap if setting == "core_free" else 1 - swap  # core_free: both train on one core
        order = [
            ("first", first, cores[swap] if pinned else None),
            ("second", second, cores[other] if pinned else None),
        ]
        procs = []
        for role, name, core in order if r % 2 == 0 else order[::-1]:
            path = tempfile.mktemp(suffix=".json")
            cmd = [sys.executable, "-m", "benchmarks.run", "--overhead-child", name, "--overhead-json", path]
            cmd += ["--go", str(go), "--threads", "1", "--overhead-epochs", str(args.overhead_epochs)]
            cmd += ["--cnn-train", str(args.cnn_train), "--cnn-val", str(args.cnn_val)]
            cmd += ["--core", str(core)] if core is not None else []
            if setting == "core_free" and pinned:
                cmd += ["--free-core", str(cores[1 - swap])]
            procs.append((role, subprocess.Popen(cmd, cwd=HERE.parent, stdout=subprocess.DEVNULL), path))
        while not all(Path(path + ".ready").exists() for _, _, path in procs):
            if any(proc.poll() is not None for _, proc, _ in procs):
                break  # a child failed before it was ready: reported below
            time.sleep(0.01)
        Path(go).touch()
        got = {}
        for k, (role, proc, path) in enumerate(procs):
            if proc.wait() != 0:
                raise RuntimeError(f"overhead child exited with {proc.returncode}")
            got[role] = {**json.loads(Path(path).read_text()), "started": k + 1}
            Path(path).unlink()
            Path(path + ".ready").unlink()
        Path(go).unlink()
        return got

    def series(second: str, n: int, label: str) -> list[list[dict[str, Any]]]:
        out = []
        for r in range(n):
            got = pair("B0", second, r)
            out.append([got["first"], got["second"]])
            ratio = got["second"]["steady"] / got["first"]["steady"]
            print(f"  overhead: {label}round {r + 1}/{n}: {ratio:.3f}", flush=True)
        return out

    rounds = series("suite", args.overhead_rounds, "")
    aa = series("B0", args.overhead_aa_rounds, "A/A ")
    import numpy as np

    ratios = [s["steady"] / b["steady"] for b, s in rounds]
    aa_ratios = [y["steady"] / x["steady"] for x, y in aa]
    q1, q3 = (float(x) for x in np.percentile(ratios, [25, 75]))
    return {
        "setting": setting,
        "design": (
            "concurrent pairs sharing one core, one torch thread each; the suite's render process on the other core"
            if setting == "core_free"
            else "concurrent pairs, one core and one torch thread per arm"
        )
        if pinned
        else "concurrent pairs (not pinned)",
        "rounds": args.overhead_rounds,
        "epochs_per_fit": args.overhead_epochs,
        "steady_epochs_per_fit": max(args.overhead_epochs - 3, 0),
        "steps_per_epoch": -(-args.cnn_train // 64),
        "cores": cores if pinned else None,
        "ratios": ratios,
        "median_ratio": _median(ratios),
        "ratio_iqr": [q1, q3],
        "aa_ratios": aa_ratios,
        "aa_median_abs_dev": _median([abs(x - 1.0) for x in aa_ratios]) if aa_ratios else None,
        # every pair, A/A included: the fit started second over the one started first (its arm's steady
        # per-step time); a start-order effect shows here, and it cancels in the medians above
        "started_second_over_first": [
            (y if y["started"] == 2 else x)["steady"] / (x if y["started"] == 2 else y)["steady"]
            for x, y in [*rounds, *aa]
        ],
        "b0_steady_ms": _median([b["steady"] for b, _ in rounds]) * 1e3,
        "b0_steady_ms_range": [
            min(b["steady"] for b, _ in rounds) * 1e3,
            max(b["steady"] for b, _ in rounds) * 1e3,
        ],
        "pairs": rounds,
        "aa_pairs": aa,
    }


def soak_child(args: argparse.Namespace) -> None:
    """Full suite on the small model for ``--soak-steps`` steps; RSS every 50 steps (run in a child)."""
    from benchmarks import arms as A
    from benchmarks.measure import rss_slope_mb_per_1000, timed_fit
    from lightning_viz.core import writer
    from lightning_viz.render import open_figure_count

    loaders = A.synthetic_loaders(args.cnn_train, args.cnn_val, (1, 8, 8), 10, 64)
    if args.soak_suite == "articles":  # the callbacks of #18 at their defaults: fixed samples every epoch
        arm = A.Arm("the article callbacks (defaults)", A.suite_articles)
    else:
        arm = A.Arm("full suite (quickstart settings)", A.suite_quickstart)  # more records than the defaults
    rec = timed_fit(
        arm,
        A.digits_cnn,
        loaders,
        device="cpu",
        root=tempfile.mkdtemp(prefix="lvbench-soak-"),
        max_epochs=-1,
        max_steps=args.soak_steps,
        rss_every=50,
    )
    writer.flush()
    out = {
        "steps": rec.n_steps,
        "steps_per_epoch": -(-args.cnn_train // 64),
        "seconds": rec.fit_seconds,
        "rss_samples": rec.rss,
        "rss_growth_mb_per_1000_steps": rss_slope_mb_per_1000(rec.rss),
        # the same slope over a 3000-step soak (its first 3000 steps): bounded buffers still filling dominate it
        "rss_growth_first_3000_steps": rss_slope_mb_per_1000([s for s in rec.rss if s[0] <= 3000]),
        "rss_first_mb": rec.rss[0][1] if rec.rss else None,
        "rss_last_mb": rec.rss[-1][1] if rec.rss else None,
        "open_figures_at_end": open_figure_count(),
        # figures: drawn, replaced by a newer cumulative version, waited on disk while drawing was behind
        "render_jobs": {
            k: getattr(writer.get_writer("render"), k) for k in ("completed", "superseded", "spilled")
        },
    }
    Path(args.soak_json).write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument(
        "--parts",
        default="overhead,overhead_core_free,latency,quickstart,figures,cnn,resnet,hist,drawing,soak",
    )
    p.add_argument("--quickstart-rounds", type=int, default=3)
    p.add_argument("--figure-rounds", type=int, default=5)
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers not meaningful")
    p.add_argument("--cnn-train", type=int, default=16384)
    p.add_argument("--cnn-val", type=int, default=1024)
    p.add_argument("--cnn-epochs", type=int, default=4)
    p.add_argument("--cnn-rounds", type=int, default=2)
    p.add_argument("--overhead-rounds", type=int, default=8)
    p.add_argument("--overhead-epochs", type=int, default=6)
    p.add_argument("--overhead-aa-rounds", type=int, default=3)
    p.add_argument("--overhead-child", choices=("B0", "suite"), help=argparse.SUPPRESS)
    p.add_argument("--overhead-json", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, help=argparse.SUPPRESS)
    p.add_argument("--free-core", type=int, help=argparse.SUPPRESS)
    p.add_argument("--go", help=argparse.SUPPRESS)
    p.add_argument("--latency-rounds", type=int, default=2)
    p.add_argument("--latency-epochs", type=int, default=12)
    p.add_argument("--latency-child", choices=("core_free", "all_busy"), help=argparse.SUPPRESS)
    p.add_argument("--latency-json", help=argparse.SUPPRESS)
    p.add_argument("--resnet-size", type=int, default=32)
    p.add_argument("--resnet-batch", type=int, default=8)
    p.add_argument("--resnet-steps", type=int, default=12)
    p.add_argument("--resnet-rounds", type=int, default=2)
    p.add_argument("--hist-rounds", type=int, default=5)
    p.add_argument("--drawing-rounds", type=int, default=3)
    p.add_argument("--soak-steps", type=int, default=12000)
    p.add_argument("--soak-train", type=int, default=16384)
    p.add_argument("--soak-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--soak-json", help=argparse.SUPPRESS)
    p.add_argument("--soak-suite", choices=("core", "articles"), default="core", help=argparse.SUPPRESS)
    p.add_argument("--merge", action="store_true", help="keep the other parts of an existing results file")
    p.add_argument("--no-wandb", action="store_true", help="leave the W&B peer out (wandb not installed)")
    args = p.parse_args(argv)
    if args.quick:
        args.cnn_train, args.cnn_val, args.cnn_epochs, args.cnn_rounds = 1024, 128, 3, 1
        args.resnet_steps, args.resnet_rounds, args.hist_rounds, args.soak_steps = 10, 1, 1, 300
        args.drawing_rounds = 1
        args.overhead_rounds, args.overhead_epochs, args.overhead_aa_rounds = 2, 4, 1
        args.soak_train = 1024
        args.latency_rounds, args.latency_epochs = 1, 6
        args.quickstart_rounds, args.figure_rounds = 1, 1
    _quiet()
    import torch

    torch.set_num_threads(args.threads)
    if args.soak_child:
        soak_child(args)
        return
    if args.overhead_child:
        overhead_child(args)
        return
    if args.latency_child:
        from benchmarks.latency import latency_child

        latency_child(args)
        return
    parts = set(args.parts.split(","))
    with_wandb = not args.no_wandb
    t0 = time.time()
    command = (
        "make bench"
        if argv is None and sys.argv[1:] == []
        else "python -m benchmarks.run " + " ".join(sys.argv[1:])
    )
    res: dict[str, Any] = {
        "command": command,
        "machine": machine(args.device, args.threads),
        "quick": args.quick,
    }
    if "overhead" in parts and args.device == "cpu":  # first: before wandb's background service starts
        print("full suite beside B0, in concurrent pairs ...", flush=True)
        res["overhead"] = run_overhead(args)
    if "overhead_core_free" in parts and args.device == "cpu":
        print("full suite beside B0 on one core, its figures drawn on the other ...", flush=True)
        res["overhead_core_free"] = run_overhead(args, "core_free")
    if "latency" in parts and args.device == "cpu":
        from benchmarks.latency import run_latency

        print("figure latency, with a core left free and with every core training ...", flush=True)
        res["latency"] = run_latency(args)
    if "quickstart" in parts and args.device == "cpu":
        from benchmarks.quickstart import run_quickstart

        print("the quickstart command, whole processes, with and without the callbacks ...", flush=True)
        res["quickstart"] = run_quickstart(args.quickstart_rounds)
    if "figures" in parts and args.device == "cpu":
        from benchmarks.figures import run_figure_costs

        print("CPU seconds per figure of each kind, now and at the baseline commit ...", flush=True)
        res["figures"] = run_figure_costs(args.figure_rounds)
    if with_wandb:
        import wandb

        wandb.init(project="lightning-viz-bench", mode="offline", dir=os.environ["WANDB_DIR"])
    if "hist" in parts:
        from benchmarks.measure import histogram_micro

        print("resnet50 histograms ...", flush=True)
        size, batch = args.resnet_size, args.resnet_batch
        res["histograms"] = histogram_micro(args.hist_rounds, size, batch, args.device, with_wandb)
    if "drawing" in parts and args.device == "cpu":
        from benchmarks.measure import render_interference

        print("training steps while figures are drawn ...", flush=True)
        res["drawing"] = render_interference(args.drawing_rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / ("results.partial.json" if args.device == "cpu" else "results_gpu.partial.json")

    def dump() -> None:  # raw data so far, in case a later part fails
        partial.write_text(json.dumps(res, indent=1, default=float) + "\n")

    dump()
    if "cnn" in parts and args.device == "cpu":
        print("example CNN arms ...", flush=True)
        res["cnn"] = run_arms("cnn", args, with_wandb)
        dump()
    if "resnet" in parts:
        print("resnet50 arms ...", flush=True)
        res["resnet50"] = run_arms("resnet", args, with_wandb)
        dump()
    if with_wandb:
        wandb.finish()
    for part, suite in (("soak", "core"), ("soak_articles", "articles")):
        if part not in parts or args.device != "cpu":
            continue
        print(f"{part} ...", flush=True)
        soak_file = tempfile.mktemp(suffix=".json")
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--soak-child",
            "--soak-json",
            soak_file,
            "--threads",
            str(args.threads),
            "--soak-steps",
            str(args.soak_steps),
            "--cnn-train",
            str(args.soak_train),
            "--cnn-val",
            str(args.cnn_val),
            "--soak-suite",
            suite,
        ]
        subprocess.run(cmd, check=True, cwd=HERE.parent)
        res[part] = json.loads(Path(soak_file).read_text())
    from lightning_viz.core import writer
    from lightning_viz.render import open_figure_count

    writer.flush()
    res["open_figures_after_arms"] = open_figure_count()
    res["wall_seconds"] = time.time() - t0
    name = "results.json" if args.device == "cpu" else "results_gpu.json"
    if args.merge and (out / name).exists():  # parts measured now replace those of the earlier run
        old = json.loads((out / name).read_text())
        res = {**{k: v for k, v in old.items() if k in PARTS}, **res}
        res["command"] = f"{old['command']}, then {res['command']}"
        res["wall_seconds"] += old.get("wall_seconds", 0.0)
        res["open_figures_after_arms"] = max(res["open_figures_after_arms"], old["open_figures_after_arms"])
        res["earlier_machine"] = old["machine"]
    if (out / name).exists():  # the GPU rows of `make gpu-check` come from another machine: always kept
        gpu = json.loads((out / name).read_text()).get("gpu")
        if gpu is not None:
            res["gpu"] = gpu
    headline = {}
    # steady state: what a long run pays per step (one-off costs are reported beside it), in the setting users
    # have (a core left for the rest), and with every core training
    if "overhead_core_free" in res:
        headline["suite_overhead_ratio"] = res["overhead_core_free"]["median_ratio"]
    if "overhead" in res:
        headline["suite_overhead_all_busy_ratio"] = res["overhead"]["median_ratio"]
    if "latency" in res:
        headline["figure_latency_s"] = res["latency"]["core_free"]["figure_latency_s"]
        headline["figure_latency_all_busy_s"] = res["latency"]["all_busy"]["figure_latency_s"]
    if "quickstart" in res:
        headline["quickstart_whole_ratio"] = res["quickstart"]["whole_ratio"]
    if "cnn" in res:
        suite = next(r for r in res["cnn"]["arms"] if r["arm"] == "full suite (defaults)")
        headline.setdefault("suite_overhead_ratio", suite["steady_ratio"])
        headline["suite_fixed_extra_seconds"] = suite["fixed_extra_seconds"]
        headline["suite_whole_fit_ratio"] = suite["amortized_ratio"]
    if "histograms" in res:
        headline["hist_speedup_vs_tensorboard"] = res["histograms"]["speedup_vs_tensorboard"]
        headline["hist_speedup_vs_wandb"] = res["histograms"]["speedup_vs_wandb"]
        headline["hist_counts_exact"] = res["histograms"]["exact"]
        if "vs_floor" in res["histograms"]:
            headline["hist_vs_floor"] = res["histograms"]["vs_floor"]
    if "soak" in res:
        headline["rss_growth_mb_per_1000_steps"] = res["soak"]["rss_growth_mb_per_1000_steps"]
        headline["open_figures_at_end"] = max(
            res["soak"]["open_figures_at_end"], res["open_figures_after_arms"]
        )
    else:
        headline["open_figures_at_end"] = res["open_figures_after_arms"]
    res = {**headline, **res}
    (out / name).write_text(json.dumps(res, indent=1, default=float) + "\n")
    from benchmarks.report import write_results_md

    write_results_md(out)
    partial.unlink(missing_ok=True)
    print(f"wrote {out / name} and {out / 'RESULTS.md'} in {res['wall_seconds']:.0f} s", flush=True)
    for k, v in headline.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()

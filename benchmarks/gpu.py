"""GPU rows of the benchmark: resnet50 at 224x224, batch 64, ``bf16-mixed``, on one CUDA device.

Usage::

    python -m benchmarks.gpu              # on a CUDA machine: the GPU section of benchmarks/RESULTS.md and
                                          # the `gpu` key of benchmarks/results.json (make gpu-check runs it)
    python -m benchmarks.gpu --dry-run    # any machine: a tiny model, a few steps; nothing is written

The arms are those of the CPU benchmark's resnet50 part (``benchmarks.arms.resnet_arms``: B0, the
TensorBoard peer, ``wandb.watch`` offline, WeightHistogram at N = 10, the full suite at its defaults), each
trained one after the other in this process, the order rotating every round, with the step clocks of
``benchmarks.measure``. Added here for CUDA: the fits run under ``precision`` on data already on the device, peak GPU memory is
read per fit, and the histograms are timed against a floor that does not synchronise once per tensor
(``benchmarks.measure.histogram_micro``'s floor calls ``float()`` on every sum: 322 host syncs on a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import arms as A
from benchmarks import measure
from benchmarks.measure import MB, FitRecord
from benchmarks.run import _quiet, machine, summarize_arms
from lightning_viz.core import stats
from lightning_viz.core.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
START, END = "<!-- gpu -->", "<!-- /gpu -->"
BINS = 64  # WeightHistogramCallback's default


class SmallNet(A.ResNet50):
    """The dry run's model: resnet50's LightningModule (steps, optimizer) around a two-layer CNN."""

    def __init__(self, size: int, classes: int = 10) -> None:
        LightningModule.__init__(self)
        self.net = nn.Sequential(
            *(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            *(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            nn.Linear(16, classes),
        )
        self.example_input_array = torch.zeros(2, 3, size, size)


def device_loaders(
    steps: int, val_batches: int, size: int, batch: int, classes: int, device: str
) -> tuple[DataLoader, DataLoader]:
    """Random images and labels already on ``device`` (no host-to-device copy in the timed steps)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = (steps + val_batches) * batch
    x = torch.rand(n, 3, size, size, generator=g, device=device)
    y = torch.randint(0, classes, (n,), generator=g, device=device)
    cut = steps * batch
    return (
        DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch),
        DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch),
    )


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_fit(
    arm: A.Arm,
    factory: Callable[[], LightningModule],
    loaders: Any,
    *,
    device: str,
    precision: str,
    epochs: int,
) -> tuple[FitRecord, float]:
    """``benchmarks.measure.timed_fit`` under ``precision``; also returns the fit's peak GPU memory (MB)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    root = tempfile.mkdtemp(prefix="lvbench-gpu-")
    rec = measure.timed_fit(
        arm, factory, loaders, device=device, root=root, max_epochs=epochs, precision=precision
    )  # log_every_n_steps=5, as in the CPU benchmark (the suite arm's logging steps assume it)
    peak = torch.cuda.max_memory_allocated() / MB if device == "cuda" else math.nan
    return rec, peak


def run_fits(args: argparse.Namespace, factory: Callable[[], LightningModule], with_wandb: bool) -> dict:
    """Every arm, ``args.rounds`` times, order rotating; one B0 warm-up fit first (not counted)."""
    arm_list = A.resnet_arms(with_wandb=with_wandb)
    arms = {a.name: a for a in arm_list}
    names = list(arms)
    loaders = device_loaders(args.steps, 2, args.size, args.batch, args.classes, args.device)
    kw = {"device": args.device, "precision": args.precision, "epochs": args.epochs}
    timed_fit(arms["B0"], factory, loaders, **kw)
    records: dict[str, list[FitRecord]] = {n: [] for n in names}
    peaks: dict[str, list[float]] = {n: [] for n in names}
    done, last = 0, 0.0
    for r in range(args.rounds):
        if r and args.deadline is not None and time.monotonic() + last > args.deadline:
            print(f"  gpu: round {r + 1} would end past --budget-s: {r} round(s) measured", flush=True)
            break
        began = time.monotonic()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rec, peak = timed_fit(arms[name], factory, loaders, **kw)
            records[name].append(rec)
            peaks[name].append(peak)
        done, last = r + 1, time.monotonic() - began
        print(f"  gpu: round {done}/{args.rounds} of {len(names)} arms done in {last:.0f} s", flush=True)
    rows = summarize_arms(names, records, arms)
    for row in rows:
        row["peak_gpu_mb"] = max(peaks[row["arm"]])
    return {"arms": rows, "rounds": done}


HOOKS = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]


def _timed_hooks(callbacks: list[Callback], device: str, spent: dict[tuple[str, str], list[float]]) -> None:
    """Wrap every hook each callback overrides: the device synchronised before and after each call, so that
    the GPU work a hook queues is charged to it; ``spent[(class, hook)]`` gathers the seconds of each call."""
    for cb in callbacks:
        for name in HOOKS:
            if getattr(type(cb), name, None) is getattr(Callback, name, None):
                continue
            fn = getattr(cb, name)

            def timed(*a: Any, _fn: Callable = fn, _key: tuple = (type(cb).__name__, name), **k: Any) -> Any:
                _sync(device)
                t = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    _sync(device)
                    spent.setdefault(_key, []).append(time.perf_counter() - t)

            setattr(cb, name, timed)


def hook_profile(args: argparse.Namespace, factory: Callable[[], LightningModule]) -> dict[str, Any]:
    """One more fit of the full suite, every hook of its callbacks timed (:func:`_timed_hooks`): where its
    extra time goes, the one-off costs (fit start, fit end) apart from the per-step ones."""
    spent: dict[tuple[str, str], list[float]] = {}

    def callbacks() -> list[Callback]:
        cbs = A.suite()
        _timed_hooks(cbs, args.device, spent)
        return cbs

    arm = A.Arm("full suite (hooks timed)", callbacks, None)
    loaders = device_loaders(args.steps, 2, args.size, args.batch, args.classes, args.device)
    rec, _ = timed_fit(
        arm, factory, loaders, device=args.device, precision=args.precision, epochs=args.epochs
    )
    rows = sorted(
        ([cls, hook, sum(v), len(v), max(v)] for (cls, hook), v in spent.items()), key=lambda r: -r[2]
    )
    return {"fit_seconds": rec.fit_seconds, "hooks": rows}


def _time(fn: Callable[[], Any], device: str, reps: int) -> tuple[float, float]:
    """Median wall seconds (synchronised before and after) and median CUDA-event seconds of ``fn``."""
    walls, events = [], []
    for _ in range(reps):
        _sync(device)
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            b.record()
        _sync(device)
        walls.append(time.perf_counter() - t)
        events.append(a.elapsed_time(b) / 1e3 if device == "cuda" else math.nan)
    return float(np.median(walls)), float(np.median(events))


def histogram_timing(args: argparse.Namespace, factory: Callable[[], LightningModule]) -> dict[str, Any]:
    """All weight and gradient histograms of the model after one backward pass under ``precision``, against
    one read of the same tensors (a sum over each, then one synchronisation; and one fused read,
    ``torch._foreach_norm``); counts checked against ``numpy.histogram`` on the same edges."""
    torch.manual_seed(0)
    model = factory().to(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, args.classes, (args.batch,), device=args.device)
    with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision.startswith("bf16")):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    names, tensors = [], []
    for n, p in model.named_parameters():
        names += [f"weights/{n}", f"gradients/{n}"]
        tensors += [p.detach(), p.grad]
    ways: dict[str, Callable[[], Any]] = {
        "ours": lambda: stats.histogram_set(tensors, names, BINS),
        "floor": lambda: [t.sum() for t in tensors],
        "floor_fused": lambda: torch._foreach_norm(tensors),
    }
    for fn in ways.values():  # warm-up: allocator, kernels
        fn()
    wall: dict[str, list[float]] = {k: [] for k in ways}
    event: dict[str, list[float]] = {k: [] for k in ways}
    keys = list(ways)
    for r in range(args.hist_rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            w, e = _time(ways[k], args.device, args.hist_reps)
            wall[k].append(w)
            event[k].append(e)
    hs, failed = stats.histogram_set(tensors, names, BINS)
    mismatches = 0
    for i, t in enumerate(tensors):
        v = t.double().cpu().numpy().ravel()
        mismatches += int(
            not np.array_equal(np.histogram(v[np.isfinite(v)], bins=hs.edges[i])[0], hs.counts[i])
        )
    med = {k: float(np.median(v)) for k, v in wall.items()}
    return {
        "tensors": len(tensors),
        "elements": int(sum(t.numel() for t in tensors)),
        "bytes": int(sum(t.numel() * t.element_size() for t in tensors)),
        "rounds": args.hist_rounds,
        "reps_per_round": args.hist_reps,
        "wall_seconds": wall,
        "event_seconds": event,
        "median_seconds": med,
        "median_event_seconds": {k: float(np.median(v)) for k, v in event.items()},
        "vs_floor": med["ours"] / med["floor"],
        "vs_floor_fused": med["ours"] / med["floor_fused"],
        "exact": mismatches == 0 and not failed,
        "exactness_checked": len(tensors),
        "mismatches": mismatches,
    }


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def section(gpu: dict[str, Any]) -> str:
    """The GPU section of RESULTS.md (without its markers) from the ``gpu`` key of results.json."""
    s, h = gpu["setup"], gpu["histograms"]
    med, ev = h["median_seconds"], h["median_event_seconds"]
    lines = [
        f"## GPU rows: {s['model']} on {gpu['device']}",
        "",
        f"Command: `{gpu['command']}` ({gpu['wall_seconds']:.0f} s). torch {gpu['machine']['torch']}, "
        f"`{s['precision']}`, {s['input']}, batch {s['batch']}, {s['epochs']} epochs of {s['steps_per_epoch']} "
        f"steps per fit (2 validation batches each), data already on the device; arms one after the other in "
        f"one process, the order rotating every round; medians over {gpu['fits']['rounds']} rounds.",
        "",
        "| arm | steady-state step / B0 | whole fit / B0 | logging-step excess (ms) | peak GPU memory (MB, the "
        "data on the device included) | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in gpu["fits"]["arms"]:
        lines.append(
            f"| {r['arm']} | {_f(r.get('steady_ratio'))} | {_f(r['amortized_ratio'])} | "
            f"{_f(r['logging_step_excess_ms'], '{:.1f}')} | {_f(r['peak_gpu_mb'], '{:.0f}')} | {r['note']} |"
        )
    b0 = gpu["fits"]["arms"][0]
    lines += [
        "",
        f"B0: {_f(b0.get('b0_steady_ms'), '{:.1f}')} ms per step in the steady state, "
        f"{_f(b0['b0_amortized_ms'], '{:.1f}')} ms per step over the whole fit.",
        "",
        f"Weight + gradient histograms of all {h['tensors']} tensors ({h['elements'] / 1e6:.1f} M values, "
        f"{h['bytes'] / 1e6:.0f} MB) per logging step, `stats.histogram_set` with {BINS} bins: "
        f"**{med['ours'] * 1e3:.2f} ms** (wall, synchronised before and after; CUDA events "
        f"{_f(ev['ours'] * 1e3, '{:.2f}')} ms), against one read of the same tensors on the device: a sum over "
        f"each {med['floor'] * 1e3:.2f} ms (**{h['vs_floor']:.2f}x**), one fused read (`torch._foreach_norm`) "
        f"{med['floor_fused'] * 1e3:.2f} ms ({h['vs_floor_fused']:.2f}x); median of {h['rounds']} rounds of "
        f"{h['reps_per_round']}. Counts equal to `numpy.histogram` on the same edges: "
        f"{h['exactness_checked'] - h['mismatches']} of {h['exactness_checked']} tensors.",
    ]
    prof = gpu.get("hook_profile")
    if prof:
        top = prof["hooks"][:12]
        total = sum(r[2] for r in prof["hooks"])
        lines += [
            "",
            f"Where the full suite's time goes: one more fit of it ({prof['fit_seconds']:.1f} s), every hook of "
            f"its callbacks timed with the device synchronised before and after it (so the GPU work a hook "
            f"queues is charged to it): {total:.2f} s in the hooks in all; the {len(top)} costliest:",
            "",
            "| callback | hook | seconds in all | calls | longest call (s) |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {c} | `{h}` | {t:.3f} | {n} | {m:.3f} |" for c, h, t, n, m in top]
    if gpu.get("wandb_skipped"):
        lines += ["", f"peer-W&B not measured: {gpu['wandb_skipped']}."]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())  # whole or not at all, readable as the umask says


def write_results(gpu: dict[str, Any], folder: Path) -> None:
    """Set the ``gpu`` key of ``results.json`` (the other keys kept) and replace the text between the
    ``<!-- gpu -->`` markers of ``RESULTS.md`` (the section appended when the markers are absent)."""
    js = folder / "results.json"
    data = json.loads(js.read_text()) if js.exists() else {}
    data["gpu"] = gpu
    _atomic_write(js, json.dumps(data, indent=1, default=float) + "\n")
    md = folder / "RESULTS.md"
    text = md.read_text() if md.exists() else ""
    block = f"{START}\n{section(gpu)}\n{END}"
    i = text.find(START)
    j = text.find(END, i) if i >= 0 else -1
    if i >= 0 and j >= 0:
        text = text[:i] + block + text[j + len(END) :]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    _atomic_write(md, text)


def start_wandb(wanted: bool) -> str | None:
    """An offline wandb run for the peer; returns why the W&B arm is skipped, or ``None``."""
    if not wanted:
        return "--no-wandb given"
    try:
        import wandb

        wandb.init(project="lightning-viz-bench", mode="offline", dir=os.environ["WANDB_DIR"])
    except Exception as err:  # not installed, or its carried wheels do not work on this machine
        return f"wandb is not usable here ({type(err).__name__}: {err})"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny model, few steps, nothing written")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4, help="per fit (the steady state is the middle ones)")
    p.add_argument("--steps", type=int, default=10, help="training steps per epoch")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--hist-rounds", type=int, default=3)
    p.add_argument("--hist-reps", type=int, default=5)
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument("--budget-s", type=float, help="start no round of fits that would end later than this")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.classes = 1000
    if args.dry_run:
        args.rounds, args.epochs, args.steps, args.size, args.batch = 1, 3, 2, 16, 4
        args.hist_rounds, args.hist_reps, args.classes = 1, 1, 10
    elif args.device != "cuda":
        print(
            "benchmarks.gpu: no CUDA device; use --dry-run to exercise the code on the CPU", file=sys.stderr
        )
        return 2
    _quiet()
    t0 = time.time()
    args.deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    factory: Callable[[], LightningModule] = (
        (lambda: SmallNet(args.size, args.classes)) if args.dry_run else (lambda: A.ResNet50(args.size))
    )
    skipped = start_wandb(not args.no_wandb)
    print(f"benchmarks.gpu: {args.device}{' (dry run)' if args.dry_run else ''}: histograms ...", flush=True)
    hist = histogram_timing(args, factory)
    print("benchmarks.gpu: the arms ...", flush=True)
    fits = run_fits(args, factory, with_wandb=skipped is None)
    print("benchmarks.gpu: where the full suite's time goes ...", flush=True)
    profile = hook_profile(args, factory)
    if skipped is None:
        import wandb

        wandb.finish()
    gpu = {
        "command": "make gpu-check" if os.environ.get("LV_GPU_CHECK") else "python -m benchmarks.gpu",
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (dry run)",
        "machine": machine(args.device, torch.get_num_threads()),
        "setup": {
            "model": "SmallNet (dry run)" if args.dry_run else "torchvision.models.resnet50(weights=None)",
            "precision": args.precision,
            "input": f"3x{args.size}x{args.size}",
            "batch": args.batch,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
        },
        "histograms": hist,
        "fits": fits,
        "hook_profile": profile,
        "wandb_skipped": skipped,
        "wall_seconds": time.time() - t0,
    }
    if not hist["exact"]:
        print(f"benchmarks.gpu: {hist['mismatches']} histograms differ from numpy.histogram", file=sys.stderr)
    if args.dry_run:
        print(section(gpu))
        print("benchmarks.gpu: dry run: nothing written", flush=True)
    else:
        write_results(gpu, Path(args.out))
        print(f"benchmarks.gpu: wrote the GPU section of {Path(args.out) / 'RESULTS.md'} and results.json")
    return 0 if hist["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())

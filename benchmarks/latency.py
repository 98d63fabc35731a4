"""``figure_latency_s``: how long after an epoch ends its cumulative figures are on disk, in two settings.

Each fit runs in a fresh process (the render process and the writer's counters start afresh) with the full
suite at its default settings on the example CNN:

- ``core_free``: what users have (training on a GPU, or on all cores but one): torch uses one thread fewer
  than the process's cores, so a core is left for the rest, the render process included.
- ``all_busy``: every core the process may use trains: the process is pinned to one core with one torch
  thread, before the render process starts (it inherits the pinning), so the render process (``SCHED_IDLE``)
  gets CPU only when the training thread waits for a late figure (:mod:`lightning_viz.core.pacing`).

An epoch's latency is the time from its ``on_train_epoch_end`` to the moment the last of its cumulative
figures (or a newer version of it, which shows the same history and more) is written as a PNG file. The last
epoch is left out: its figures come from the fit-end flush, when nothing trains any more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SETTINGS = ("core_free", "all_busy")


def _instrument() -> tuple[list, list]:
    """Record every cumulative figure submitted (tag, step, time) and every PNG written (tag, step, time)."""
    from lightning_viz.core import base, sinks

    submitted: list[tuple[str, int, float]] = []
    written: list[tuple[str, int, float]] = []
    emit, figure = base.VizCallback.emit_figure, sinks.FileSink.figure

    def emit_figure(self: Any, trainer: Any, render: Any, data: Any, **kw: Any) -> None:
        cumulative = kw.get("cumulative")
        if cumulative is None:  # as emit_figure decides: what the callback declares for the stem
            try:
                cumulative = self.figure_spec(kw["stem"]).cumulative
            except LookupError:
                cumulative = False
        if cumulative and self.emitting(trainer):
            submitted.append((kw["tag"], int(kw["step"]), time.perf_counter()))
        emit(self, trainer, render, data, **kw)

    def file_figure(self: Any, tag: str, rgba: Any, png: bytes, step: int, stem: str) -> None:
        figure(self, tag, rgba, png, step, stem)
        written.append((tag, int(step), time.perf_counter()))

    base.VizCallback.emit_figure = emit_figure  # type: ignore[method-assign]
    sinks.FileSink.figure = file_figure  # type: ignore[method-assign]
    return submitted, written


def epoch_latencies(
    ends: list[tuple[int, float]],
    submitted: list[tuple[str, int, float]],
    written: list[tuple[str, int, float]],
) -> list[float]:
    """Per epoch (``ends``: its global step and end time, in order): seconds until each cumulative figure
    submitted at its end is on disk in that version or a newer one; inf where one never was."""
    out = []
    for k, (step, t_end) in enumerate(ends):
        t_next = ends[k + 1][1] if k + 1 < len(ends) else float("inf")
        tags = {tag for tag, s, t in submitted if t_end <= t < t_next}
        if not tags:  # nothing cumulative submitted at this epoch end: a broken measurement, not 0 s
            raise RuntimeError(f"no cumulative figure was submitted at the end of the epoch at step {step}")
        worst = 0.0
        for tag in tags:
            got = [t for wtag, s, t in written if wtag == tag and s >= step and t >= t_end]
            worst = max(worst, (min(got) - t_end) if got else float("inf"))
        out.append(worst)
    return out


def latency_child(args: argparse.Namespace) -> None:
    """One fit in one setting (``--latency-child``); writes what it measured to ``--latency-json``."""
    import torch
    from lightning.pytorch import Callback

    from benchmarks import arms as A
    from benchmarks.measure import timed_fit
    from lightning_viz.core import pacing

    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if args.latency_child == "all_busy":
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cores[-1]})  # before the render process starts: it inherits this
        threads = 1
    else:
        threads = max(len(cores) - 1, 1)
    torch.set_num_threads(threads)
    submitted, written = _instrument()
    ends: list[tuple[int, float]] = []

    class EpochEnds(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            ends.append((trainer.global_step, time.perf_counter()))

    waited: list[float] = []

    class Waited(Callback):  # after the suite: reads the pacer's account before the next fit resets it
        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            p = next(cb for cb in trainer.callbacks if isinstance(cb, pacing.DrawingPacer)).pacer
            waited.append(p.waited)

    arm = A.Arm("suite", lambda: [EpochEnds(), *A.suite(), Waited()])
    loaders = A.synthetic_loaders(args.cnn_train, args.cnn_val, (1, 8, 8), 10, 64)
    t0 = time.perf_counter()
    rec = timed_fit(
        arm,
        A.digits_cnn,
        loaders,
        device="cpu",
        root=tempfile.mkdtemp(prefix="lvbench-lat-"),
        max_epochs=args.latency_epochs,
    )
    lat = epoch_latencies(ends, submitted, written)
    out = {
        "setting": args.latency_child,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": threads,
        "epochs": len(ends),
        "epoch_seconds": float(np.median(np.diff([t for _, t in ends]))) if len(ends) > 1 else None,
        "latencies": lat[:-1],
        "last_epoch_latency": lat[-1] if lat else None,
        "fit_seconds": rec.fit_seconds,
        "train_seconds": ends[-1][1] - t0 if ends else None,
        "waited_seconds": waited[0] if waited else None,
        "figures_written": len(written),
    }
    Path(args.latency_json).write_text(json.dumps(out))


def run_latency(args: argparse.Namespace) -> dict[str, Any]:
    """``figure_latency_s`` in both settings: ``--latency-rounds`` fresh fits each, alternating."""
    fits: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    for r in range(args.latency_rounds):
        for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            path = tempfile.mktemp(suffix=".json")
            cmd = [sys.executable, "-m", "benchmarks.run", "--latency-child", setting, "--latency-json", path]
            cmd += ["--latency-epochs", str(args.latency_epochs)]
            cmd += ["--cnn-train", str(args.cnn_train), "--cnn-val", str(args.cnn_val)]
            subprocess.run(cmd, check=True, cwd=HERE.parent, stdout=subprocess.DEVNULL)
            got = json.loads(Path(path).read_text())
            Path(path).unlink()
            fits[setting].append(got)
            med = float(np.median(got["latencies"])) if got["latencies"] else float("nan")
            print(f"  latency: {setting} round {r + 1}/{args.latency_rounds}: median {med:.1f} s", flush=True)
    rows = {}
    for setting, got in fits.items():
        lat = [x for g in got for x in g["latencies"]]
        finite = [x for x in lat if np.isfinite(x)]
        waited = [g["waited_seconds"] / g["train_seconds"] for g in got if g["waited_seconds"] is not None]
        rows[setting] = {
            "figure_latency_s": float(np.median(lat)) if lat else None,
            "latency_p90_s": float(np.percentile(finite, 90)) if finite else None,
            "latency_max_s": float(max(lat)) if lat else None,
            "epochs_measured": len(lat),
            "never_written": len(lat) - len(finite),
            "epoch_seconds": float(np.median([g["epoch_seconds"] for g in got if g["epoch_seconds"]])),
            "training_waited_share": float(np.median(waited)) if waited else None,
            "cores": got[0]["cores"],
            "torch_threads": got[0]["torch_threads"],
            "fits": got,
        }
    return {
        "rounds": args.latency_rounds,
        "epochs_per_fit": args.latency_epochs,
        "steps_per_epoch": -(-args.cnn_train // 64),
        **rows,
    }

"""Step clocks, RSS sampling, one timed fit, the resnet50 histogram micro-benchmark and the soak."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from benchmarks.arms import Arm, WandbWatchPeer
from lightning_viz.core import stats, writer

MB = float(1 << 20)
_PROC = psutil.Process()


def rss_mb() -> float:
    """Resident memory of this process and its children (the lightning-viz render process included)."""
    total = _PROC.memory_info().rss
    for child in _PROC.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # it ended meanwhile
            pass
    return total / MB


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class FitRecord:
    """What one fit of one arm measured."""

    steps: list[tuple[int, float, bool]] = field(default_factory=list)  # (global step, seconds, probe fired)
    rss: list[tuple[int, float]] = field(default_factory=list)  # (global step, MB)
    fit_seconds: float = math.nan
    epoch_starts: list[float] = field(default_factory=list)  # seconds since fit start
    epoch_steps: list[int] = field(default_factory=list)  # training steps in each epoch

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def amortized(self) -> float:
        """Whole fit (fit start to fit end, final flush included) per training step."""
        return self.fit_seconds / max(self.n_steps, 1)

    @property
    def steady(self) -> float | None:
        """Seconds per training step over the middle epochs: each from its first batch's start to the next
        epoch's, so its validation and epoch-end work are included; the first epoch (start-up) and the last
        (the fit-end flush) are left out. None with fewer than 3 epochs."""
        if len(self.epoch_starts) < 3:
            return None
        middle = range(1, len(self.epoch_starts) - 1)
        seconds = sum(self.epoch_starts[k + 1] - self.epoch_starts[k] for k in middle)
        return seconds / max(sum(self.epoch_steps[k] for k in middle), 1)

    @property
    def fixed(self) -> float | None:
        """What the fit cost beyond its steady per-step rate: start-up, the first epoch's extra, the end."""
        return None if self.steady is None else self.fit_seconds - self.steady * self.n_steps


class _Clock:
    def __init__(self, device: str, probe: Callable[[], int] | None, rss_every: int) -> None:
        self.device, self.probe, self.rss_every = device, probe, rss_every
        self.rec = FitRecord()
        self.t0 = self.fit_t0 = 0.0
        self.g = 0
        self.p0 = 0


class ClockStart(Callback):
    """First callback: starts the fit clock and each step's clock."""

    def __init__(self, clock: _Clock) -> None:
        self.c = clock

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _sync(self.c.device)
        self.c.fit_t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _sync(self.c.device)
        self.c.rec.epoch_starts.append(time.perf_counter() - self.c.fit_t0)
        self.c.rec.epoch_steps.append(0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        _sync(self.c.device)
        self.c.rec.epoch_steps[-1] += 1
        self.c.g = trainer.global_step
        self.c.p0 = self.c.probe() if self.c.probe else 0
        self.c.t0 = time.perf_counter()


class ClockEnd(Callback):
    """Last callback: stops each step's clock (after every other callback's hooks) and the fit clock (after
    every other callback's ``on_fit_end``, so after lightning-viz has flushed its background writer)."""

    def __init__(self, clock: _Clock) -> None:
        self.c = clock

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        _sync(self.c.device)
        dt = time.perf_counter() - self.c.t0
        fired = bool(self.c.probe and self.c.probe() != self.c.p0)
        self.c.rec.steps.append((self.c.g, dt, fired))
        if self.c.g % self.c.rss_every == 0:
            self.c.rec.rss.append((self.c.g, rss_mb()))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        writer.flush()
        _sync(self.c.device)
        self.c.rec.fit_seconds = time.perf_counter() - self.c.fit_t0


def timed_fit(
    arm: Arm,
    model_factory: Callable[[], LightningModule],
    loaders: tuple[Any, Any],
    *,
    device: str,
    root: str,
    max_epochs: int = 1,
    max_steps: int = -1,
    log_every_n_steps: int = 5,
    rss_every: int = 10,
    precision: str = "32-true",
) -> FitRecord:
    """Train one arm once (same seed, data and trainer settings for every arm) and time it."""
    seed_everything(0, verbose=False)
    model = model_factory()
    callbacks = arm.callbacks()
    peer = next((cb for cb in callbacks if isinstance(cb, WandbWatchPeer)), None)
    clock = _Clock(device, (lambda: peer.calls) if peer else None, rss_every)
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=TensorBoardLogger(root, name="arm"),
        callbacks=[ClockStart(clock), *callbacks, ClockEnd(clock)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(model, *loaders)
    return clock.rec


# ---------------------------------------------------------------------------- resnet50 histograms
def histogram_micro(rounds: int, size: int, batch: int, device: str, with_wandb: bool) -> dict[str, Any]:
    """Time per logging step of the weight + gradient histograms of resnet50, three ways, interleaved.

    ours: one ``stats.histogram_set`` over all parameters and gradients; floor: a sum over each tensor (one
    read of the same memory); peer-TB: ``SummaryWriter.add_histogram``
    per tensor; peer-W&B: wandb's own ``TorchHistory.log_tensor_stats`` (what ``wandb.watch`` calls) per tensor,
    then the step commit. Our counts are checked against ``numpy.histogram`` on our edges, bit for bit.
    """
    import torchvision
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    names, tensors = [], []
    for n, p in model.named_parameters():
        names += [f"weights/{n}", f"gradients/{n}"]
        tensors += [p.detach(), p.grad]
    numel = sum(t.numel() for t in tensors)

    def ours() -> stats.HistogramSet:
        hs, failed = stats.histogram_set(tensors, names, 64)
        assert not failed
        return hs

    tb = SummaryWriter(tempfile.mkdtemp(prefix="lvbench-tb-"))
    ways: dict[str, Callable[[], Any]] = {
        "ours": ours,
        # the floor: one read of the same tensors (a sum over each); an exact histogram needs a min/max pass
        # and a counting pass, so about 2x this is the limit (`hist_vs_floor`)
        "floor": lambda: [float(t.sum()) for t in tensors],
        "peer-TB": lambda: [tb.add_histogram(n, t, 0) for n, t in zip(names, tensors)],
    }
    if with_wandb:
        import wandb

        history = wandb.run._torch

        def wb() -> None:
            for n, t in zip(names, tensors):
                history.log_tensor_stats(t, n)
            wandb.run.log({}, commit=True)

        ways["peer-W&B"] = wb
    times: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    keys = list(ways)
    for k in keys:  # warm-up (allocator, lazy imports), not timed
        ways[k]()
    # the short ways (ours, the floor: tens of ms) are timed as the median of a few back-to-back runs in each
    # round, so that one preemption does not decide a round's ratio; the peers take seconds and run once
    reps = {k: 5 if k in ("ours", "floor") else 1 for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order every round
            walls, cpus = [], []
            for _ in range(reps[k]):
                _sync(device)
                t, c = time.perf_counter(), time.process_time()
                ways[k]()
                _sync(device)
                walls.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            times[k].append(float(np.median(walls)))
            cpu[k].append(float(np.median(cpus)))
    tb.close()

    # exactness, on the same tensors and on a constant tensor and one with NaN/Inf
    hs = ours()
    mismatches = 0
    for i, t in enumerate(tensors):
        v = t.detach().double().cpu().numpy().ravel()
        expected, _ = np.histogram(v[np.isfinite(v)], bins=hs.edges[i])
        mismatches += int(not np.array_equal(expected, hs.counts[i]))
    const = torch.full((1000,), 0.125, device=device)
    odd = torch.randn(5000, device=device)
    odd[::97] = math.nan
    odd[5::101] = math.inf
    extra, failed = stats.histogram_set([const, odd], ["constant", "nan_inf"], 64)
    for i, t in enumerate((const, odd)):
        v = t.double().cpu().numpy()
        expected, _ = np.histogram(v[np.isfinite(v)], bins=extra.edges[i])
        mismatches += int(not np.array_equal(expected, extra.counts[i]))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "device": device,
        "input": [batch, 3, size, size],
        "tensors": len(tensors),
        "elements": int(numel),
        "rounds": rounds,
        "seconds": times,
        "cpu_seconds": cpu,
        "median_seconds": med,
        "vs_floor": med["ours"] / med["floor"],
        "speedup_vs_tensorboard": med["peer-TB"] / med["ours"],
        "speedup_vs_wandb": med["peer-W&B"] / med["ours"] if "peer-W&B" in med else None,
        "exact": mismatches == 0 and not failed,
        "exactness_checked": len(tensors) + 2,
        "mismatches": mismatches,
    }


def rss_slope_mb_per_1000(samples: list[tuple[int, float]], skip_fraction: float = 0.2) -> float:
    """Least-squares slope of RSS over steps, after a warm-up, in MB per 1000 steps."""
    if len(samples) < 4:
        return math.nan
    start = samples[-1][0] * skip_fraction
    kept = [(s, r) for s, r in samples if s >= start]
    steps, rss = np.array([s for s, _ in kept], float), np.array([r for _, r in kept], float)
    return float(np.polyfit(steps, rss, 1)[0] * 1000)


# ---------------------------------------------------------------------------- drawing beside training
def _evolution_data(n_params: int = 10, n_steps: int = 20, bins: int = 64) -> dict[str, Any]:
    """What WeightHistogramCallback hands to ``render_evolution`` for a small model (synthetic counts)."""
    rng = np.random.default_rng(0)
    params = []
    for i in range(n_params):
        k = rng.integers(-40, -20, size=n_steps)
        w = np.full(n_steps, 2.0**-8)
        params.append(
            {
                "name": f"layer{i}.weight",
                "numel": 1000 * (i + 1),
                "steps": np.arange(n_steps) * 50,
                "edges": (k[:, None] + np.arange(bins + 1)) * w[:, None],
                "counts": rng.integers(0, 100, (n_steps, bins)),
                "nonfinite": np.zeros(n_steps, dtype=np.int64),
            }
        )
    return {"title": "weights over training", "params": params}


def render_interference(rounds: int, steps: int = 150) -> dict[str, Any]:
    """Median training-step time of the example CNN (plain PyTorch loop, no Lightning) three ways, interleaved:
    alone; while figures are drawn non-stop in a thread of the same process; while they are drawn non-stop
    by lightning-viz's render process. Shows why figures are drawn in a separate process."""
    import threading

    from benchmarks.arms import digits_cnn
    from lightning_viz.core import renderer
    from lightning_viz.render.histograms import render_evolution

    torch.manual_seed(0)
    model = digits_cnn()
    opt = torch.optim.Adam(model.parameters())
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    data = _evolution_data()

    def step_ms() -> float:
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1e3

    proc = renderer.RenderProcess()
    proc.render(render_evolution, data)  # start the child (imports) before timing
    if proc.pid is None:
        raise RuntimeError(f"the render process did not start: {proc.broken}")

    def drawing(draw: Callable[[], Any]) -> float:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                draw()

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        time.sleep(0.3)  # the first figure is under way
        try:
            return step_ms()
        finally:
            stop.set()
            th.join()

    ways: dict[str, Callable[[], float]] = {
        "alone": step_ms,
        "figures drawn in a thread": lambda: drawing(lambda: renderer.draw(render_evolution, data)),
        "figures drawn in the render process": lambda: drawing(lambda: proc.render(render_evolution, data)),
    }
    out: dict[str, list[float]] = {k: [] for k in ways}
    keys = list(ways)
    step_ms()  # warm-up
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            out[k].append(ways[k]())
    proc.close()
    med = {k: float(np.median(v)) for k, v in out.items()}
    return {"rounds": rounds, "steps": steps, "step_ms": out, "median_step_ms": med}

"""Pictures while training runs: the redraw interval, the training thread's bounded waits for a late
cumulative figure (core/pacing.py), and a normal run that says nothing but where the pictures are."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_viz.core import pacing, writer
from lightning_viz.core.writer import BackgroundWriter

REPO = Path(__file__).resolve().parents[2]
CUMULATIVE = ("weights_evolution", "gradients_evolution", "activation_map/stats", "viz/curves")


class FakeCpu:
    """The render process's CPU clock: still (it gets no CPU) or running with the wall clock (a free core)."""

    def __init__(self, running: bool) -> None:
        self.running, self.t0 = running, time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0 if self.running else 0.0


@pytest.fixture
def render_writer(monkeypatch):
    """A fresh "render" queue with a fake CPU clock, in the place of the process-wide one."""

    def make(cpu: FakeCpu) -> BackgroundWriter:
        w = BackgroundWriter(8, "test-render", 0.0, cpu)
        monkeypatch.setitem(writer._writers, "render", w)
        return w

    monkeypatch.setattr(writer, "LATE_AFTER_S", 0.05)
    monkeypatch.setattr(pacing, "MIN_WAIT_S", 0.05)
    return make


def train(pacer: pacing.Pacer, seconds: float, step: float = 0.005) -> None:
    """Batches of ``step`` seconds of work, with the pacer at every boundary."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(step)
        pacer.batch_boundary()


@pytest.mark.parametrize("starving", [False, True])
def test_training_waits_for_a_late_figure_only_while_the_render_process_gets_no_cpu(render_writer, starving):
    """A cumulative figure that is due and not drawn: while the render process's CPU clock stands still the
    training thread waits at a batch boundary, and the figure is drawn during that wait (the render process
    gets the idle core); while the clock runs (it draws on a free core) training never waits."""
    w = render_writer(FakeCpu(running=not starving))
    drawn, waiting = threading.Event(), threading.Event()
    real_wait = w.wait_late

    def wait_late(timeout: float) -> float:
        waiting.set()  # the cores are idle now: the render process draws
        return real_wait(timeout)

    w.wait_late = wait_late
    w.submit(lambda: (waiting.wait(1.0), drawn.set()), "evo", key="evo")
    pacer = pacing.Pacer()
    train(pacer, 0.6)
    w.flush()
    assert drawn.is_set()
    if starving:
        assert pacer.waits >= 1 and waiting.is_set()
    else:
        assert pacer.waits == 0 and not waiting.is_set()


def test_batch_boundaries_look_at_the_queue_a_bounded_number_of_times_a_second(render_writer, monkeypatch):
    """Lateness is measured in seconds, so a batch boundary asks the render queue at most CHECKS_PER_LATE
    times per LATE_AFTER_S: 5000 boundaries in a burst (short steps) cost one or two looks, not 5000 (each
    look takes the queue's lock, and when a figure is late reads the render process's CPU clock)."""
    w = render_writer(FakeCpu(running=True))
    monkeypatch.setattr(writer, "LATE_AFTER_S", 10.0)  # the burst below lasts far less than 10 s / 10
    looks = []
    real_late = w.late
    w.late = lambda now=None: looks.append(now) or real_late(now)
    pacer = pacing.Pacer()
    start = time.monotonic()
    for step in range(5000):
        pacer.batch_boundary(step)
    elapsed = time.monotonic() - start
    assert 1 <= len(looks) <= 1 + elapsed / (10.0 / pacing.CHECKS_PER_LATE) + 1, (len(looks), elapsed)


def test_no_wait_when_training_ends_within_the_redraw_interval(render_writer, monkeypatch):
    """A figure late near the end of training is left for the fit-end flush, which draws its newest version
    then: a short run draws each figure once instead of once mid-run and again at the end. The estimate is
    training's own pace so far over the steps it has left (``trainer.estimated_stepping_batches``)."""
    monkeypatch.setenv(writer.REDRAW_ENV, "6")
    pacer = pacing.Pacer()
    now = time.monotonic()
    pacer.plan(100, 0)
    pacer._from = (0, now - 5.0)  # 5 s for the first 50 steps: 5 s left
    assert pacer.ends_soon(50, now) is True
    assert pacer.ends_soon(10, now) is False  # 0.5 s a step, 90 steps left: 45 s
    assert pacer.ends_soon(0, now) is False  # no pace yet
    pacer.plan(float("inf"), 0)  # max_epochs=-1 or no max_steps: never known to end soon
    pacer._from = (0, now - 5.0)
    assert pacer.ends_soon(99, now) is False

    w = render_writer(FakeCpu(running=False))  # every core trains: the figure is late
    done = threading.Event()
    w.submit(lambda: done.wait(5.0), "evo", key="evo")  # drawn only once training is over
    pacer = pacing.Pacer()
    pacer.plan(40, 0)
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < 0.4:  # 40 steps of 10 ms: training ends 0.4 s after it starts
        time.sleep(0.01)
        step += 1
        pacer.batch_boundary(step)
    done.set()
    assert pacer.waits == 0
    w.flush()


@pytest.mark.parametrize("share", ["", "0"])
def test_waits_are_bounded_one_by_one_and_as_a_share_of_training(render_writer, monkeypatch, share):
    """A figure that never gets drawn while training runs: every wait ends by WAIT_AT_MOST_S, and all the
    waits together stay within WAIT_SHARE of the training's own time (plus the first burst); with
    LIGHTNING_VIZ_WAIT_SHARE=0 training never waits. Nothing is lost: the flush draws it."""
    monkeypatch.setattr(pacing, "WAIT_AT_MOST_S", 0.2)
    monkeypatch.setattr(pacing, "WAIT_SHARE", 0.1)
    monkeypatch.setenv(pacing.SHARE_ENV, share)
    w = render_writer(FakeCpu(running=False))
    gate, drawn = threading.Event(), threading.Event()
    w.submit(lambda: (gate.wait(30), drawn.set()), "stuck", key="evo")
    pacer = pacing.Pacer()
    waits: list[float] = []
    real_wait = w.wait_late

    def wait_late(timeout: float) -> float:
        waits.append(real_wait(timeout))
        return waits[-1]

    w.wait_late = wait_late
    t0 = time.monotonic()
    train(pacer, 1.5)
    training = time.monotonic() - t0 - pacer.waited
    gate.set()
    w.flush()
    assert drawn.is_set()
    if share == "0":
        assert waits == [] and pacer.waited == 0
    else:
        assert len(waits) >= 2 and max(waits) <= 0.2 + 0.1
        assert pacer.waited <= 0.2 + 0.1 * training + 0.1


def test_the_wait_share_and_the_redraw_interval_are_checked_by_name(monkeypatch):
    monkeypatch.setenv(pacing.SHARE_ENV, "2")
    with pytest.raises(ValueError, match="LIGHTNING_VIZ_WAIT_SHARE must be a number from 0 to 1; got '2'"):
        pacing.wait_share()
    monkeypatch.setenv(writer.REDRAW_ENV, "soon")
    with pytest.raises(ValueError, match="LIGHTNING_VIZ_REDRAW_S must be a number of seconds >= 0"):
        writer.redraw_every_s()
    monkeypatch.setenv(writer.REDRAW_ENV, "2.5")
    assert writer.redraw_every_s() == 2.5


def test_one_pacer_per_trainer_and_one_summary_line_only_when_something_happened(tmp_path, render_writer):
    """Two drawing callbacks add one pacer to the trainer, last in its list; a second fit adds none. The
    summary is None when every figure was drawn as it came, one line with the counts otherwise."""
    from lightning_viz import CurvePlotCallback, ModelSummaryCallback
    from tests.helpers import RandomImages, TinyCNN, make_trainer

    trainer = make_trainer(tmp_path, [ModelSummaryCallback(), CurvePlotCallback()], max_epochs=1)
    trainer.fit(TinyCNN(), RandomImages(n=32))
    trainer.validate(TinyCNN(), RandomImages(n=32))
    pacers = [cb for cb in trainer.callbacks if isinstance(cb, pacing.DrawingPacer)]
    assert len(pacers) == 1 and trainer.callbacks[-1] is pacers[0]

    w = render_writer(FakeCpu(running=True))
    pacer = pacing.Pacer()
    w.submit(lambda: None, "map")
    w.flush()
    assert pacer.summary() is None
    w.superseded += 3
    w.spilled += 2
    pacer.waits, pacer.waited = 2, 1.5
    line = pacer.summary()
    assert line.startswith("lightning-viz: drew 1 figure;") and "\n" not in line
    assert "3 replaced by newer versions" in line and "2 waited in temporary files" in line
    assert "training paused 1.5 s" in line


def _lightning_viz_lines(output: str) -> list[str]:
    names = ("ModelSummaryCallback", "WeightHistogramCallback", "ActivationMapCallback", "CurvePlotCallback")
    names += ("MetricPlotCallback", "ReportCallback", "TrainingHealthCallback")
    return [
        line
        for line in output.splitlines()
        if "lightning-viz" in line
        or "lightning_viz" in line
        or "VizWarning" in line
        or line.startswith(names)
    ]


def _one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@pytest.mark.slow
@pytest.mark.alone  # another test's processes on its core would starve the render process (SCHED_IDLE)
def test_cumulative_figures_reach_tensorboard_while_every_core_trains(tmp_path):
    """A real fit of twenty epochs with the four core callbacks at their defaults, in a process whose every core
    trains (pinned to one core, one torch thread; the render process inherits the pinning, so at SCHED_IDLE
    it gets CPU only when the training thread waits). Read back with TensorBoard's EventAccumulator: every
    cumulative figure has a picture of a mid-training version written before the last training scalar
    (before the pacing, all of them came after it, in the fit-end flush), and each tag's steps never
    decrease."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = subprocess.run(
        [sys.executable, "-m", "tests.core.live_fit", str(tmp_path), "20"],
        cwd=REPO,
        # rounds every 3 s: a 20-epoch fit (10 to 20 s alone) has several before its last seconds, in which
        # the pacer leaves the figures to the fit-end flush (a 10-epoch fit had one or two: flaky)
        env={**os.environ, writer.REDRAW_ENV: "3"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log_dir = run.stdout.strip().splitlines()[-1]
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    scalars = acc.Scalars("train_loss_step")
    last_scalar, last_step = scalars[-1].wall_time, scalars[-1].step
    tags = [t for t in acc.Tags()["images"] if t.endswith(CUMULATIVE)]
    assert len(tags) == len(CUMULATIVE), acc.Tags()["images"]
    for tag in tags:
        images = acc.Images(tag)
        steps = [e.step for e in images]
        assert steps == sorted(steps), f"{tag}: {steps}"
        early = [e for e in images if e.wall_time < last_scalar]
        assert early and early[0].step < last_step, f"{tag}: {[(e.step, e.wall_time) for e in images]}"
    assert "lightning-viz: drew" in run.stderr  # the one line at fit end (training waited for figures)


@pytest.mark.slow
def test_a_normal_quickstart_run_prints_no_lightning_viz_warning(tmp_path):
    """``lightning-viz fit --config configs/quickstart.yaml``, shortened, in a process whose every core
    trains, so drawing is behind (before, two lines said so during the run): no lightning-viz warning; the
    only lines from lightning-viz are where the pictures are and, at fit end, at most one about drawing.
    Python warnings from torch or Lightning are not ours and do not count."""
    command = [str(Path(sys.executable).with_name("lightning-viz")), "fit", "--config"]
    command += [str(REPO / "configs" / "quickstart.yaml"), "--trainer.max_epochs=3"]
    command += ["--trainer.limit_train_batches=10", "--trainer.enable_progress_bar=false"]
    command += [f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, preexec_fn=_one_core, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ours = _lightning_viz_lines(run.stderr + "\n" + run.stdout)
    assert not [line for line in ours if "Warning" in line], ours
    where = [line for line in ours if line.startswith("lightning-viz: pictures are in")]
    drawing = [line for line in ours if line.startswith("lightning-viz: drew")]
    assert len(where) == 1 and len(drawing) <= 1 and len(ours) == len(where) + len(drawing), ours
    if drawing:  # at fit end: after Lightning's own last line of the fit
        err = run.stderr.splitlines()
        stopped = [i for i, line in enumerate(err) if "`Trainer.fit` stopped" in line]
        assert stopped and err.index(drawing[0]) > stopped[-1]

"""The background writer and sink isolation."""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from lightning_viz.core import distributed, writer
from lightning_viz.core.sinks import FileSink, Sink, fan_out
from lightning_viz.core.warn import VizWarning
from lightning_viz.core.writer import BackgroundWriter
from lightning_viz.render._figure import png_bytes


def test_writer_runs_jobs_in_order_and_flushes():
    w = BackgroundWriter(maxsize=2)
    seen: list[int] = []
    for i in range(10):
        w.submit(lambda i=i: seen.append(i), f"job {i}")
    w.flush()
    assert seen == list(range(10))
    assert w.pending() == 0


def test_writer_drop_oldest_warns_once_and_keeps_newest():
    w = BackgroundWriter(maxsize=2)
    gate = threading.Event()
    seen: list[int] = []
    w.submit(gate.wait, "blocker")
    # let the worker pick up the blocker so the queue itself is empty
    while w._queue.qsize():
        pass
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(5):
            w.submit(lambda i=i: seen.append(i), f"job {i}", when_full="drop_oldest")
    gate.set()
    w.flush()
    assert seen == [3, 4]
    assert w.dropped == 3
    assert len([r for r in rec if issubclass(r.category, VizWarning)]) == 1


@pytest.fixture
def caplog(caplog):
    """The writer's INFO lines go through Lightning's console logger, which does not propagate."""
    log = logging.getLogger("lightning.pytorch")
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    log.addHandler(caplog.handler)
    yield caplog
    log.removeHandler(caplog.handler)


def test_cumulative_jobs_supersede_waiting_ones_only_when_behind(monkeypatch, caplog):
    """Below SUPERSEDE_ABOVE waiting jobs every keyed job runs; from there on a newer keyed job takes the
    place of the waiting ones with the same key, and unkeyed jobs all run, in order. Cumulative figures wait in
    their key's line and run before the snapshots (their latency is what "pictures while training" is
    about). Nothing is said during the run: the one line at fit end is the pacer's."""

    monkeypatch.setattr(writer, "SUPERSEDE_ABOVE", 4)
    w = BackgroundWriter(maxsize=32)
    gate = threading.Event()
    seen: list[str] = []
    w.submit(gate.wait, "blocker")
    while w._queue.qsize():  # the worker holds the blocker: everything below waits
        pass
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w.submit(lambda: seen.append("evo 1"), "evo 1", key="evo")
        w.submit(lambda: seen.append("map 1"), "map 1")
        w.submit(lambda: seen.append("evo 2"), "evo 2", key="evo")  # 2 waiting: not behind yet, in line
        w.submit(lambda: seen.append("curves 1"), "curves 1", key="curves")
        w.submit(lambda: seen.append("evo 3"), "evo 3", key="evo")  # 4 waiting: replaces evo 1 and 2
        w.submit(lambda: seen.append("map 2"), "map 2")
        w.submit(lambda: seen.append("curves 2"), "curves 2", key="curves")  # replaces curves 1
        w.submit(lambda: seen.append("other 1"), "other 1", key="other")  # no waiting twin: in line
        assert w.pending() == 1 + 5  # the blocker, then evo 3, curves 2, other 1, map 1, map 2
    gate.set()
    w.flush()
    assert seen == ["evo 3", "curves 2", "other 1", "map 1", "map 2"]  # oldest line first, then the queue
    assert w.superseded == 3 and w.pending() == 0
    assert not [r for r in rec if issubclass(r.category, VizWarning)]
    assert not [r for r in caplog.records if "lightning-viz" in r.getMessage()]


def test_a_redraw_interval_holds_back_the_next_version_and_the_newest_replaces_it(monkeypatch):
    """With a redraw interval, a key's first figure runs at once and the next one waits for the interval
    (snapshots run meanwhile); a newer one takes the waiting one's place; a flush runs it at once."""
    import time

    w = BackgroundWriter(maxsize=32, cadence=3600.0)
    seen: list[str] = []
    w.submit(lambda: seen.append("evo 1"), "evo 1", key="evo")
    w.flush()
    w.submit(lambda: seen.append("evo 2"), "evo 2", key="evo")
    w.submit(lambda: seen.append("map 1"), "map 1")
    w.submit(lambda: seen.append("evo 3"), "evo 3", key="evo")
    deadline = time.monotonic() + 10
    while "map 1" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["evo 1", "map 1"] and w.pending() == 1  # evo 3 waits for the interval
    assert w.superseded == 1
    t = time.monotonic()
    w.flush()
    assert seen == ["evo 1", "map 1", "evo 3"] and time.monotonic() - t < 5
    assert w.pending() == 0


def _record_payload(seen: list, payload: object) -> None:  # a DiskBacked job's run (module level: picklable)
    seen.append(payload)


def test_figures_spill_to_disk_when_behind_and_are_all_drawn_in_order(monkeypatch, tmp_path, caplog):
    """Under "wait", once SUPERSEDE_ABOVE jobs wait, a DiskBacked job's payload goes to a temporary file and
    submit() returns at once, with a full queue too (training never blocks on drawing); every spilled job
    runs, in order, as the queue drains, and its file is removed. A keyed (cumulative) job is not pickled: it
    waits in its key's line in memory, and a newer one with its key takes its place. A payload that cannot be
    pickled waits in memory, in its turn."""
    import tempfile

    monkeypatch.setattr(writer, "SUPERSEDE_ABOVE", 3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    w = BackgroundWriter(maxsize=4)
    gate = threading.Event()
    seen: list = []
    w.submit(gate.wait, "blocker")
    while w._queue.qsize():
        pass
    run = functools.partial(_record_payload, seen)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(3):  # below the mark: in memory
            w.submit(writer.DiskBacked(("map", i, np.full(1000, i)), run), f"map {i}")
        for i in range(3, 20):  # behind: on disk; the 4-slot queue would have blocked at i == 4
            w.submit(writer.DiskBacked(("map", i, np.full(1000, i)), run), f"map {i}")
        w.submit(writer.DiskBacked(("evo", 1), run), "evo 1", key="evo")
        w.submit(writer.DiskBacked(("evo", 2), run), "evo 2", key="evo")  # behind: replaces evo 1
        w.submit(writer.DiskBacked((lambda: None, 99), run), "unpicklable")  # waits in memory instead
        assert w.spilled == 17 and w.pending() == 1 + 3 + 17 + 1 + 1
        # cumulative figures are not pickled: one per key waits in memory
        assert len(list(tmp_path.glob("lightning-viz-spill-*"))) == 17
    gate.set()
    w.flush()
    assert [p[:2] for p in seen if p[0] == "map"] == [("map", i) for i in range(20)]
    assert [p[1] for p in seen if p[0] == "map"] == list(range(20))
    maps = {p[1]: p[2] for p in seen if p[0] == "map"}
    np.testing.assert_array_equal(maps[7], np.full(1000, 7))  # read back from its file
    assert [p for p in seen if p[0] == "evo"] == [("evo", 2)] and w.superseded == 1
    assert [p[1] for p in seen if callable(p[0])] == [99]
    assert seen[-1][1] == 99  # waited in memory in its turn, behind the older figures on disk
    assert w.pending() == 0 and not list(tmp_path.glob("lightning-viz-spill-*"))
    assert not [r for r in rec if issubclass(r.category, VizWarning)]
    assert not [r for r in caplog.records if "lightning-viz" in r.getMessage()]  # said once, at fit end


def test_spilled_figures_are_bounded_then_the_step_waits_again(monkeypatch, tmp_path):
    """At most SPILL_MAX figures wait on disk: the next submit blocks until the render process catches up."""
    import tempfile

    monkeypatch.setattr(writer, "SUPERSEDE_ABOVE", 1)
    monkeypatch.setattr(writer, "SPILL_MAX", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    w = BackgroundWriter(maxsize=4)
    gate = threading.Event()
    seen: list = []
    run = functools.partial(_record_payload, seen)
    w.submit(gate.wait, "blocker")
    while w._queue.qsize():
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):  # one in the queue, two on disk
            w.submit(writer.DiskBacked(i, run), f"fig {i}")
        late = threading.Thread(target=w.submit, args=(writer.DiskBacked(3, run), "fig 3"))
        late.start()
        late.join(0.3)
        assert late.is_alive() and w.spilled == 2  # waiting for room on disk
        gate.set()
        late.join(10)
    assert not late.is_alive()
    w.flush()
    assert seen == [0, 1, 2, 3] and not list(tmp_path.glob("lightning-viz-spill-*"))


def test_failing_job_warns_and_worker_survives():
    w = BackgroundWriter()
    out: list[str] = []
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w.submit(lambda: 1 / 0, "bad job")
        w.flush()
    w.submit(lambda: out.append("ok"), "good job")
    w.flush()
    assert out == ["ok"]
    assert any("bad job" in str(r.message) for r in rec)


def test_fan_out_isolates_a_failing_sink(tmp_path):
    class Broken(Sink):
        name = "broken"

        def data(self, stem, payload):
            raise RuntimeError("logger down")

    good = FileSink(tmp_path)
    with pytest.warns(VizWarning, match="broken"):
        fan_out([Broken(), good], "data", "d", {"a": np.arange(2)})
    assert np.load(tmp_path / "d.npz")["a"].tolist() == [0, 1]


def test_reduce_values_single_process_is_identity():
    vals = {"a": torch.arange(3.0), "b": torch.tensor([2.0])}
    out, failed = distributed.reduce_values(vals, {"a": "sum", "b": "max"})
    assert not failed and torch.equal(out["a"], vals["a"]) and torch.equal(out["b"], vals["b"])
    with pytest.raises(ValueError, match="reduction"):
        distributed.reduce_values(vals, {"a": "median", "b": "max"})


def test_tensorboard_sink_writes_a_step_as_one_event_and_reads_back(tmp_path):
    """Sixteen scalars (or histograms) of one step are one event, not sixteen: torch's SummaryWriter queue
    holds 10 and blocks the caller when full. TensorBoard's reader sees each value as its own series."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from lightning_viz.core.sinks import TensorBoardSink
    from tests.helpers import read_events

    logger = TensorBoardLogger(tmp_path, name="tb")
    sink = TensorBoardSink(logger)
    rng = np.random.default_rng(0)
    values = {f"norm/p{i}": float(i) / 3 for i in range(16)}
    sink.scalars(values, step=7)
    x = rng.normal(size=1000)
    edges = np.linspace(x.min(), x.max(), 9)
    counts = np.histogram(x, bins=edges)[0]
    stats = {"min": x.min(), "max": x.max(), "sum": x.sum(), "sum_squares": (x * x).sum()}
    empty = (np.array([0.0, 1.0]), np.array([0]), {"min": 0, "max": 0, "sum": 0, "sum_squares": 0})
    sink.histograms([(f"h/{i}", edges, counts, stats) for i in range(12)] + [("h/empty", *empty)], step=7)
    logger.experiment.flush()

    (event_file,) = (tmp_path / "tb" / "version_0").glob("events.out.tfevents.*")
    events = [e for e in EventFileLoader(str(event_file)).Load() if e.HasField("summary")]
    assert [len(e.summary.value) for e in events] == [16, 12]  # one event per call; the empty one left out
    acc = read_events(tmp_path / "tb" / "version_0")
    assert sorted(acc.Tags()["scalars"]) == sorted(values)
    for tag, v in values.items():
        (point,) = acc.Scalars(tag)
        assert point.step == 7 and point.value == pytest.approx(v)
    assert sorted(acc.Tags()["histograms"]) == sorted(f"h/{i}" for i in range(12))
    (h,) = acc.Histograms("h/3")
    assert h.step == 7 and h.histogram_value.num == 1000
    np.testing.assert_array_equal(h.histogram_value.bucket, counts)
    np.testing.assert_allclose(h.histogram_value.bucket_limit, edges[1:])


@pytest.mark.parametrize("cadence", [0.0, 0.02])
def test_each_keys_figures_run_in_step_order_and_its_newest_always_runs(monkeypatch, tmp_path, cadence):
    """Random interleavings of snapshots and cumulative figures from two submitting threads, jobs of random
    length, a small backlog mark (so figures spill and replace one another) and a redraw interval or none:
    every snapshot runs once, in its thread's order; each key's figures run in the order of their versions,
    and the last version of every key runs (the gradients_evolution at step 115 then 69 race cannot recur)."""
    import random
    import tempfile
    import time

    monkeypatch.setattr(writer, "SUPERSEDE_ABOVE", 3)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    w = BackgroundWriter(maxsize=8, cadence=cadence)
    seen: list = []
    last: dict = {}  # each key's newest version submitted
    lock = threading.Lock()

    def job(tag: tuple, delay: float) -> None:
        time.sleep(delay)
        with lock:
            seen.append(tag)

    def producer(name: str, seed: int) -> None:
        rng = random.Random(seed)
        for i in range(60):
            delay = rng.choice([0.0, 0.0, 0.001, 0.004])
            if rng.random() < 0.5:
                w.submit(functools.partial(job, ("snap", name, i), delay), f"{name} snap {i}")
            else:
                key = last_key = (name, rng.choice("ab"))
                last[last_key] = i
                w.submit(functools.partial(job, ("cum", key, i), delay), f"{key} {i}", key=key)
            time.sleep(rng.choice([0.0, 0.0005, 0.002]))

    threads = [threading.Thread(target=producer, args=(n, k)) for k, n in enumerate(("x", "y"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.flush()
    for name in ("x", "y"):
        snaps = [t[2] for t in seen if t[0] == "snap" and t[1] == name]
        assert snaps == sorted(snaps) and len(snaps) == len(set(snaps))
        for key in ((name, "a"), (name, "b")):
            versions = [t[2] for t in seen if t[0] == "cum" and t[1] == key]
            assert versions == sorted(versions) and len(versions) == len(set(versions)), key
            assert versions[-1] == last[key], key
    assert w.pending() == 0 and not list(tmp_path.glob("lightning-viz-spill-*"))


class _DrawingBehind(Callback):
    """Stands in for a render process that gets no CPU time while training runs: it draws one figure only
    when let, once at the end of each epoch in ``let_at``, and everything from fit end on (listed first, its
    ``on_fit_end`` runs before the flush). The picture is a blank 8x8 one: the order is what is tested."""

    def __init__(self, let_at: tuple[int, ...]) -> None:
        self.let_at = let_at
        self.cond = threading.Condition()
        self.permits, self.started, self.free = 0, 0, False
        self.rgba = np.full((8, 8, 4), 255, np.uint8)
        self.png = png_bytes(self.rgba)

    def render_png(self, render, data):
        with self.cond:
            self.started += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.free or self.permits > 0, timeout=20)
            self.permits = max(self.permits - 1, 0)
        return self.rgba, self.png

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch in self.let_at:  # one figure drawn; wait until the next one is taken
            with self.cond:
                started = self.started
                self.permits += 1
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.started > started, timeout=20)

    def on_fit_end(self, trainer, pl_module):
        with self.cond:
            self.free = True
            self.cond.notify_all()


def test_tensorboard_receives_each_tags_pictures_in_step_order_when_drawing_is_behind(tmp_path, monkeypatch):
    """A run whose drawing is behind (activation maps every step fill the queue and the overflow; one
    figure is drawn at the end of epoch 1): with the old writer TensorBoard got ``gradients_evolution`` at
    step 12 and then at step 8. Read back in the order written, every image tag's steps never decrease,
    and each series' last picture is its newest (step 12; the maps, captured before each batch: 11)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_viz import ActivationMapCallback, CurvePlotCallback, WeightHistogramCallback
    from lightning_viz.core import renderer
    from tests.helpers import RandomImages, TinyCNN, make_trainer

    behind = _DrawingBehind(let_at=(1,))
    monkeypatch.setattr(renderer, "render_png", behind.render_png)
    callbacks = [
        behind,
        ActivationMapCallback(every_n_steps=1, every_n_epochs=None, sample_size=2),
        WeightHistogramCallback(every_n_steps=1, bins=8, log="gradients"),
        CurvePlotCallback(),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VizWarning)  # "figures are produced faster than they are drawn"
        trainer.fit(TinyCNN(), RandomImages(n=32, batch_size=8))  # 4 steps per epoch
    writer.flush()
    trainer.logger.experiment.flush()

    # purge_orphaned_data=False: by default the reader drops the newer picture when an older step follows
    # it (it takes that for a restarted run), which would hide the disorder.
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0}, purge_orphaned_data=False)
    acc.Reload()
    steps = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    assert set(steps) == {
        "viz/activation_map/maps",
        "viz/activation_map/stats",
        "viz/weight_histogram/gradients_evolution",
        "viz/curves",
    }
    for tag, seq in steps.items():
        assert seq == sorted(seq), f"{tag}: {seq}"
    # snapshots too are a series: while drawing is behind a newer one takes a waiting one's place, and the
    # latest (step 11, before the last batch) is drawn
    assert steps["viz/activation_map/maps"][-1] == 11 and len(steps["viz/activation_map/maps"]) < 12
    assert steps["viz/activation_map/stats"][-1] == 11  # its latest capture
    for tag in ("viz/weight_histogram/gradients_evolution", "viz/curves"):
        assert steps[tag][-1] == 12, f"{tag}: {steps[tag]}"
    assert writer.get_writer("render").pending() == 0


def test_when_several_series_are_due_the_cumulative_ones_are_drawn_first():
    """A snapshot series (one epoch's maps) waits behind a cumulative one (the curves, everything so far)
    due at the same time or later: a bounded wait of the training thread then buys the most telling
    pictures first."""
    w = BackgroundWriter(8, "test-order", 0.0)
    gate, order = threading.Event(), []
    w.submit(lambda: gate.wait(5.0), "blocker", key="blocker")  # the thread is busy while the others arrive
    time.sleep(0.05)
    w.submit(lambda: order.append("maps"), "maps", key="maps", snapshot=True)
    w.submit(lambda: order.append("curves"), "curves", key="curves")
    gate.set()
    w.flush()
    assert order == ["curves", "maps"]

"""The background writer, atomic files and sink isolation."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest
import torch

from lightning_viz.core import distributed
from lightning_viz.core.sinks import FileSink, Sink, fan_out
from lightning_viz.core.warn import VizWarning
from lightning_viz.core.writer import BackgroundWriter, atomic_write_bytes, atomic_write_json


def test_atomic_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": np.arange(3), "nan": float("nan")})
    assert json.loads(target.read_text().replace("NaN", "null")) == {"x": [0, 1, 2], "nan": None}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


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


def test_cumulative_jobs_supersede_waiting_ones_only_when_behind(monkeypatch):
    """Below SUPERSEDE_ABOVE waiting jobs every keyed job runs; from there on a newer keyed job takes the
    place of the waiting one with the same key (one warning), and unkeyed jobs all run, in order."""
    from lightning_viz.core import writer

    monkeypatch.setattr(writer, "SUPERSEDE_ABOVE", 4)
    w = BackgroundWriter(maxsize=32)
    gate = threading.Event()
    seen: list[str] = []
    w.submit(gate.wait, "blocker")
    while w._queue.qsize():  # the worker holds the blocker: everything below waits in the queue
        pass
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w.submit(lambda: seen.append("evo 1"), "evo 1", key="evo")
        w.submit(lambda: seen.append("map 1"), "map 1")
        w.submit(lambda: seen.append("evo 2"), "evo 2", key="evo")  # 2 waiting: not behind yet, queued
        w.submit(lambda: seen.append("curves 1"), "curves 1", key="curves")
        w.submit(lambda: seen.append("evo 3"), "evo 3", key="evo")  # 4 waiting: replaces evo 1 and 2
        w.submit(lambda: seen.append("map 2"), "map 2")
        w.submit(lambda: seen.append("curves 2"), "curves 2", key="curves")  # replaces curves 1
        w.submit(lambda: seen.append("other 1"), "other 1", key="other")  # no waiting twin: queued
        assert w.pending() == 1 + 5  # the blocker, then evo 3, map 1, curves 2, map 2, other 1
    gate.set()
    w.flush()
    assert seen == ["evo 3", "map 1", "curves 2", "map 2", "other 1"]
    assert w.superseded == 3 and w.pending() == 0
    messages = [str(r.message) for r in rec if issubclass(r.category, VizWarning)]
    assert len(messages) == 1 and "evo 1 was replaced by the newer evo 3" in messages[0]


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

"""The render process: same pixels as drawing in a thread, low priority, no torch, and every fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lightning_viz import CurvePlotCallback, WeightHistogramCallback
from lightning_viz.core import renderer, writer
from lightning_viz.core.warn import reset_warnings
from tests.core import render_funcs
from tests.helpers import RandomImages, TinyCNN, make_trainer

DATA = {"values": [3.0, 1.0, 4.0, 1.5], "title": "pi"}


@pytest.fixture
def proc():
    rp = renderer.RenderProcess()
    yield rp
    rp.close()


def test_the_child_draws_the_same_pixels_at_low_priority_without_torch(proc):
    rgba, png = proc.render(render_funcs.bars, DATA)
    assert proc.drawn_in_process == 1 and proc.drawn_in_thread == 0
    ref_rgba, ref_png = renderer.draw(render_funcs.bars, DATA)
    np.testing.assert_array_equal(rgba, ref_rgba)
    assert png == ref_png
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
    stats = proc.child_stats()
    assert stats["pid"] == proc.pid and stats["open_figures"] == 0
    assert stats["imports_torch"] is False  # the child is small: numpy and matplotlib only
    assert stats["nice"] == 19
    if sys.platform.startswith("linux"):  # runs only on cores no training thread wants
        assert stats["sched_idle"] is True
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE


def test_start_loads_matplotlib_before_the_first_figure(proc):
    proc.start()
    pid = proc.pid
    assert pid is not None and proc.drawn_in_process == 0
    stats = proc.child_stats()  # answered after the warm-up, which drew one small figure
    assert stats["pid"] == pid and stats["open_figures"] == 0 and stats["warmed_up"] is True
    # normal priority until the first figure (what it preloads uses an idle core), then the lowest
    assert stats["sched_idle"] is False and stats["nice"] == 0
    proc.render(render_funcs.bars, DATA)
    assert proc.child_stats()["sched_idle"] is sys.platform.startswith("linux")


def test_preload_imports_in_the_child_without_waiting_for_it(proc):
    """``start(preload=...)`` names modules a render function needs beyond lightning_viz.render (the
    torchmetrics of a metric plot): imported at start-up, or, by a child already running, after it has
    answered, so the caller goes on while it imports. Each module is asked for once."""
    proc.start(preload=["json"])
    assert proc.child_stats()["pid"] == proc.pid
    proc.start(preload=["json", "colorsys"])  # a running child: only the new one is sent
    assert proc._preloaded == {"json", "colorsys"}
    proc.render(render_funcs.bars, DATA)  # answered after the import
    assert proc.drawn_in_process == 1 and proc.child_stats()["preloaded"] == ["json", "colorsys"]
    proc.start(preload=["no_such_module_here"])  # a failing import leaves the child serving
    proc.render(render_funcs.bars, DATA)
    assert proc.drawn_in_process == 2 and proc.broken is None
    assert proc.child_stats()["preloaded"] == ["json", "colorsys"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE")
def test_demote_drops_the_child_to_the_lowest_priority_from_the_parent(proc):
    """What the pacer does when training starts, while the child may still import at normal priority."""
    proc.start()
    proc.child_stats()
    assert os.sched_getscheduler(proc.pid) != os.SCHED_IDLE
    proc.demote()
    assert (
        os.sched_getscheduler(proc.pid) == os.SCHED_IDLE and os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
    )


def test_promote_gives_the_child_its_priority_back_at_fit_end_where_the_system_allows(proc, monkeypatch):
    """At fit end (DrawingPacer.on_fit_end) the child gets SCHED_OTHER and nice 0 back, so that other busy
    processes do not starve the last drawing; where the system refuses (an unprivileged process cannot raise
    a priority), nothing breaks and the child stays at the lowest priority."""
    proc.start()
    proc.child_stats()
    proc.demote()
    got = proc.promote()
    if os.geteuid() == 0:  # root (CI) may; an unprivileged user needs CAP_SYS_NICE
        assert got is True
        assert os.sched_getscheduler(proc.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 0
    proc.demote()  # the next fit lowers it again
    assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE

    def refused(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refused)
    assert proc.promote() is False
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == 19


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_the_childs_cpu_time_tells_drawing_from_starving(proc):
    """What the pacer reads to tell a render process that draws from one that gets no CPU: the child's own
    CPU time, which grows while it draws; None once it is gone (drawing then falls back to the thread)."""
    assert proc.cpu_seconds() is None  # not started
    proc.start()
    proc.child_stats()  # after the warm-up
    before = proc.cpu_seconds()
    for _ in range(20):  # well over the 10 ms resolution of the clock
        proc.render(render_funcs.bars, DATA)
    after = proc.cpu_seconds()
    assert before is not None and before > 0 and after > before
    proc.close()
    assert proc.cpu_seconds() is None


def test_a_render_function_that_prints_does_not_corrupt_the_replies(proc):
    for _ in range(2):
        rgba, _ = proc.render(render_funcs.chatty, DATA)
        assert rgba.shape[-1] == 4
    assert proc.drawn_in_process == 2 and proc.broken is None


def test_an_unpicklable_render_function_is_drawn_in_the_thread(proc):
    rgba, _ = proc.render(lambda d: render_funcs.bars(d), DATA)
    np.testing.assert_array_equal(rgba, renderer.draw(render_funcs.bars, DATA)[0])
    assert proc.drawn_in_thread == 1 and proc.drawn_in_process == 0 and proc.pid is None


def test_an_error_in_the_child_is_raised_with_its_type_and_message(proc):
    with pytest.raises(RuntimeError, match=r"ValueError in the rendering process: no picture for \[3.0"):
        proc.render(render_funcs.broken, DATA)
    assert proc.broken is None
    proc.render(render_funcs.bars, DATA)  # the child goes on serving
    assert proc.drawn_in_process == 1


def test_a_dead_child_falls_back_to_the_thread_with_one_warning(proc):
    proc.render(render_funcs.bars, DATA)
    pid = proc.pid
    os.kill(pid, signal.SIGKILL)
    reset_warnings()
    with pytest.warns(UserWarning, match="rendering process stopped .*drawn in a background thread"):
        rgba, _ = proc.render(render_funcs.bars, DATA)
    np.testing.assert_array_equal(rgba, renderer.draw(render_funcs.bars, DATA)[0])
    assert proc.broken is not None and proc.drawn_in_thread == 1
    proc.render(render_funcs.bars, DATA)  # later figures: the thread, no new child, no new warning
    assert proc.drawn_in_thread == 2 and proc.pid is None


def test_thread_mode_from_the_environment(proc, monkeypatch):
    monkeypatch.setenv(renderer.ENV, "thread")
    proc.render(render_funcs.bars, DATA)
    assert proc.drawn_in_thread == 1 and proc.pid is None


def test_a_wrong_mode_fails_at_setup_naming_the_variable_and_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv(renderer.ENV, "gpu")
    trainer = make_trainer(tmp_path, [CurvePlotCallback()], max_epochs=1)
    with pytest.raises(
        ValueError, match=r"LIGHTNING_VIZ_RENDER must be one of \['process', 'thread'\]; got 'gpu'"
    ):
        trainer.fit(TinyCNN(), RandomImages(n=16))


def test_training_draws_its_figures_in_the_render_process(tmp_path):
    shared = renderer.get_renderer()
    before = shared.drawn_in_process
    hist = WeightHistogramCallback(every_n_steps=1, bins=8, log="weights")
    trainer = make_trainer(tmp_path, [hist], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages(n=32))
    writer.flush()
    pngs = sorted(hist.viz_dir.glob("weights_evolution_*.png"))
    assert len(pngs) == 2
    for path in pngs:
        with Image.open(path) as img:
            img.verify()
    assert shared.drawn_in_process - before == 2
    assert shared.child_stats()["open_figures"] == 0


def test_figures_queued_at_interpreter_exit_are_drawn_in_the_child_and_written(tmp_path):
    script = f"""
import sys
sys.path[:0] = {sys.path!r}
from lightning_viz.core import files, renderer, writer
from tests.core import render_funcs

def job(i):
    rgba, png = renderer.render_png(render_funcs.bars, {{"values": [i, 1.0]}})
    files.atomic_write_bytes({str(tmp_path)!r} + f"/fig{{i}}.png", png)

for i in range(3):
    writer.get_writer().submit(lambda i=i: job(i), f"fig {{i}}")
print(renderer.get_renderer().drawn_in_thread)
"""  # exits right after queueing: the atexit handlers must draw and write all three
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for i in range(3):
        with Image.open(tmp_path / f"fig{i}.png") as img:
            img.verify()
    assert not list(tmp_path.glob(".*.tmp"))

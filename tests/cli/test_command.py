"""The ``lightning-viz`` entry point starts the render process before Lightning is imported, when it may draw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_viz import command
from lightning_viz.callbacks import MetricPlotCallback

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from lightning_viz import command
from lightning_viz.core import renderer
started = command.start_renderer_early(sys.argv[1:])
proc = renderer.get_renderer()
stats = proc.child_stats() if started else {}
print(json.dumps({"started": started, "pid": proc.pid, "lightning": "lightning" in sys.modules,
                  "preloaded": stats.get("preloaded"), "sched_idle": stats.get("sched_idle")}))
"""


def probe(*args: str, **env: str) -> dict:
    """``start_renderer_early(args)`` in a fresh interpreter: what it started, and what it had imported."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv, draws",
    [
        (["fit", "--config", "quickstart"], True),
        (["validate", "--model", "a.B"], True),
        (["fit", "--viz_defaults=false"], False),
        (["fit", "--viz_defaults", "False"], False),
        (["fit", "--viz_defaults=true"], True),
        (["fit", "--help"], False),
        (["fit", "--print_config"], False),
        (["fit", "--print_config=skip_null"], False),
        (["render", "runs/x/viz"], False),
        (["configs"], False),
        ([], False),
    ],
)
def test_which_commands_start_the_render_process_early(argv, draws):
    assert command.draws_figures(argv) is draws


def test_the_render_process_starts_before_lightning_is_imported():
    """Rank zero of a run: the child is up (answering) while this process has not imported Lightning yet,
    at normal priority until training starts, so that its start-up uses the core the import leaves idle."""
    got = probe("fit", "--config", "quickstart")
    assert got["started"] is True and got["pid"] is not None
    assert got["lightning"] is False
    assert got["sched_idle"] is False


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "1"},
        {"LOCAL_RANK": "3"},
        {"NODE_RANK": "1", "LOCAL_RANK": "0"},  # local rank 0 of node 1 under Lightning's own launcher
        {"SLURM_PROCID": "2", "LOCAL_RANK": "0"},
        {"LIGHTNING_VIZ_RENDER": "thread"},
    ],
)
def test_no_early_render_process_off_rank_zero_or_when_drawing_in_a_thread(env):
    got = probe("fit", "--config", "quickstart", **env)
    assert got["started"] is False and got["pid"] is None


def test_a_config_naming_metric_plots_preloads_what_they_draw_with(tmp_path):
    """MetricPlotCallback draws each metric with torchmetrics' own ``.plot``: the render process imports it
    while Lightning is imported, when a config on the command line names the callback."""
    assert set(command.PRELOAD_FOR["MetricPlotCallback"]) == set(MetricPlotCallback.render_modules)
    quickstart = REPO / "configs" / "quickstart.yaml"
    assert "MetricPlotCallback" in quickstart.read_text()
    assert command.preload_for(["fit", "--config", "quickstart"]) == sorted(MetricPlotCallback.render_modules)
    assert command.preload_for(["fit", f"--config={quickstart}"]) == sorted(MetricPlotCallback.render_modules)
    plain = tmp_path / "plain.yaml"
    plain.write_text("trainer:\n  max_epochs: 1\n")
    assert command.preload_for(["fit", "--config", str(plain)]) == []
    assert command.preload_for(["fit", "--config", "missing.yaml"]) == []
    got = probe("fit", "--config", "quickstart")
    assert got["preloaded"] == sorted(MetricPlotCallback.render_modules)


def test_the_cli_stops_an_early_render_process_when_no_lightning_viz_callback_is_on(tmp_path):
    """``--viz_defaults=false`` with other callbacks configured: no figure will be drawn, so the render
    process that the command may have started is stopped when the trainer is built."""
    code = (
        "import sys; from lightning_viz.core import renderer; renderer.get_renderer().start();"
        "from lightning_viz.cli import build_cli;"
        "build_cli(['--config', 'configs/quickstart.yaml', '--trainer.callbacks=[]', '--viz_defaults=false',"
        f"'--trainer.max_epochs=1', '--trainer.limit_train_batches=1', '--trainer.limit_val_batches=1',"
        f"'--trainer.default_root_dir={tmp_path}', '--trainer.logger=false'], run=False);"
        "print(renderer.get_renderer().pid)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "None"

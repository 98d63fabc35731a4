"""Every YAML under configs/ parses with the lightning-viz command.

The file list is globbed, so a config added later is covered without editing this file. A config is
"complete" when it names a model and a datamodule; a partial one (``ddp.yaml``, a per-callback file) is
checked the way users combine it: ``--config configs/quickstart.yaml --config <partial>``. That every
config RUNS, through the installed command exactly as its header says, is tests/cli/test_config_headers.py.

A config that names a callback which cannot be imported fails here (it does not skip).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lightning_viz.cli import build_cli
from lightning_viz.core.base import VizCallback

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in {".yaml", ".yml"})


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    """The command sees only the arguments a test passes (not pytest's own)."""
    monkeypatch.setattr(sys, "argv", ["lightning-viz"])


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def is_complete(path: Path) -> bool:
    config = load(path)
    return bool(config.get("model")) and bool(config.get("data"))


def config_args(path: Path) -> list[str]:
    """``--config`` arguments that use ``path`` as users do: on its own when complete, else on the quickstart."""
    return (
        ["--config", str(path)] if is_complete(path) else ["--config", str(QUICKSTART), "--config", str(path)]
    )


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "mnist.yaml"} <= names, f"configs/ holds only {sorted(names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_parses(capsys, path):
    args = ["fit", *config_args(path), "--print_config"]
    try:
        build_cli(args)
    except SystemExit as exit_:
        out, err = capsys.readouterr()
        if exit_.code != 0:
            pytest.fail(f"{rel(path)} does not parse (lightning-viz {' '.join(args)}):\n{err[-3000:]}")
    else:
        pytest.fail(f"{rel(path)}: --print_config did not exit")
    assert yaml.safe_load(out)["trainer"] is not None, rel(path)


def test_quickstart_turns_on_the_four_callbacks_the_confusion_matrix_and_the_report():
    import lightning_viz

    paths = [cb["class_path"] for cb in load(QUICKSTART)["trainer"]["callbacks"]]
    assert paths == [
        "lightning_viz.ModelSummaryCallback",
        "lightning_viz.WeightHistogramCallback",
        "lightning_viz.ActivationMapCallback",
        "lightning_viz.CurvePlotCallback",
        "lightning_viz.MetricPlotCallback",
        "lightning_viz.ReportCallback",
    ]
    for path in paths:
        name = path.rsplit(".", 1)[-1]
        assert issubclass(getattr(lightning_viz, name), VizCallback), name
        assert name in lightning_viz.__all__, name

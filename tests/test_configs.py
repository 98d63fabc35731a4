"""Every YAML under configs/ parses with the lightning-viz command, and every complete one runs.

The file lists are globbed, so a config added later is covered without editing this file. A config is
"complete" when it names a model and a datamodule; a partial one (``ddp.yaml``, a per-callback file) is
checked the way users combine it: ``--config configs/quickstart.yaml --config <partial>``.

A config that names a callback which cannot be imported fails here (it does not skip).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from lightning_viz.cli import build_cli
from lightning_viz.core.base import VizCallback

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in {".yaml", ".yml"})

# Complete configs that are parsed but not run here, each with its reason. Nothing else is left out.
NOT_RUN = {
    "mnist.yaml": "downloads MNIST (tests run offline); its offline failure is tested in tests/cli",
    "cifar_resnet.yaml": "downloads CIFAR-10 and trains a ResNet-18; run with its synthetic data in "
    "tests/integrations/test_examples.py",
    "sequence.yaml": "run on a smaller generated dataset, with its attention maps checked, in "
    "tests/integrations/test_examples.py",
}


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


def has_logger_with_args(path: Path) -> bool:
    logger = (load(path).get("trainer") or {}).get("logger")
    return isinstance(logger, dict) and "class_path" in logger


RUNNABLE = [p for p in CONFIGS if is_complete(p) and p.name not in NOT_RUN]


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "mnist.yaml"} <= names, f"configs/ holds only {sorted(names)}"
    assert set(NOT_RUN) <= names, "NOT_RUN names a config that no longer exists"


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


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=rel)
def test_complete_config_runs_and_every_callback_writes(capsys, tmp_path, path):
    args = [
        "fit",
        *config_args(path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    if has_logger_with_args(path):
        args.append(f"--trainer.logger.init_args.save_dir={tmp_path}")
    try:
        cli = build_cli(args)
    except SystemExit as exit_:
        pytest.fail(f"{rel(path)} failed (exit {exit_.code}):\n{capsys.readouterr().err[-3000:]}")

    assert cli.trainer.state.finished, rel(path)
    expected = [p["class_path"] for p in (load(path).get("trainer") or {}).get("callbacks") or []]
    viz = [cb for cb in cli.trainer.callbacks if isinstance(cb, VizCallback)]
    assert len(viz) == sum(p.startswith("lightning_viz.") for p in expected), rel(path)
    for cb in viz:
        where = cb.viz_dir
        assert where is not None and where.is_relative_to(tmp_path), f"{type(cb).__name__} wrote to {where}"
        files = sorted(f for f in where.rglob("*") if f.is_file()) if where.is_dir() else []
        assert files, f"{rel(path)}: {type(cb).__name__} wrote nothing under {where}"
        pngs = [f for f in files if f.suffix == ".png"]
        assert pngs, f"{rel(path)}: {type(cb).__name__} wrote no PNG ({[f.name for f in files]})"
        for png in pngs:
            image = matplotlib.image.imread(png)
            assert image.ndim == 3 and min(image.shape[:2]) > 10, f"{png} is not a picture"
    lines = [
        ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("lightning-viz: pictures are in")
    ]
    if viz:
        assert len(lines) == 1, rel(path)
        for cb in viz:
            assert str(cb.viz_dir.parent) in lines[0] or str(cb.viz_dir) in lines[0], (lines[0], cb.viz_dir)

"""Shared test setup: Agg backend, no figure left open, warnings reset, quiet Lightning."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from lightning_viz.core import renderer, writer
from lightning_viz.core.warn import reset_warnings
from lightning_viz.render import open_figure_count

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


GPU_TESTS = Path(__file__).resolve().parent / "gpu"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without CUDA, tests/gpu runs inside tests/cli/test_gpu_check.py, which runs ``make gpu-check``'s CPU
    parts (tests/gpu among them) and asserts that they pass: a run of the whole suite does not run them a
    second time. They are collected when CUDA is present, under ``make gpu-check`` (``LV_GPU_CHECK``), and
    when the command line names them (``pytest tests/gpu``)."""
    if collection_path.resolve() != GPU_TESTS or os.environ.get("LV_GPU_CHECK"):
        return None
    named = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    if any(p == GPU_TESTS or GPU_TESTS in p.parents for p in named):
        return None
    import torch

    return None if torch.cuda.is_available() else True


@pytest.fixture(autouse=True)
def _no_open_figures():
    """Every test must close every figure it (or lightning-viz) opened."""
    reset_warnings()
    before_pyplot = set(plt.get_fignums())
    before = open_figure_count()
    yield
    writer.flush()
    leaked_pyplot = set(plt.get_fignums()) - before_pyplot
    leaked = open_figure_count() - before
    in_child = renderer.get_renderer().child_stats().get("open_figures", 0)  # the render process's
    plt.close("all")
    assert not leaked_pyplot, f"test left pyplot figures open: {sorted(leaked_pyplot)}"
    assert leaked <= 0, f"test left {leaked} lightning-viz figure(s) open"
    assert in_child == 0, f"the render process holds {in_child} open figure(s)"

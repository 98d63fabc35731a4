"""The CIFAR-10 ResNet and sequence-transformer example projects run from their configs, offline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from example_projects.cifar_resnet import CIFAR10DataModule
from lightning_viz.cli import build_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-viz"])


def fit(config: str, tmp_path: Path, *extra: str):
    cli = build_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / config),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
    )
    assert cli.trainer.state.finished
    return Path(cli.trainer.log_dir) / "viz"


def test_cifar_resnet_runs_on_its_synthetic_data(tmp_path):
    viz = fit(
        "cifar_resnet.yaml",
        tmp_path,
        "--data.init_args.synthetic=true",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
    )
    maps = np.load(viz / "activation_map" / "maps_step000002.npz")
    assert list(maps["layer_names"]) == ["net.conv1", "net.layer1", "net.layer2", "net.layer3", "net.layer4"]
    assert maps["maps_4"].shape[-2:] == (4, 4)  # layer4 of the CIFAR stem: 32 / 8
    assert np.load(viz / "metric_plot" / "val_confmat_epoch000.npz")["value"].shape == (10, 10)
    page = (viz / "report.html").read_text()
    assert 'id="metric_plot"' in page and "val_confmat" in page


def test_cifar_offline_falls_back_to_flagged_synthetic_data(tmp_path):
    data = CIFAR10DataModule(data_dir=str(tmp_path), synthetic=None)  # nothing downloaded there
    with pytest.warns(UserWarning, match="SYNTHETIC stand-in.*NOT CIFAR-10"):
        data.setup("fit")
    assert data.is_synthetic and len(data.train_set) == 5000
    x, y = data.train_set[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    with pytest.raises(RuntimeError, match="CIFAR-10 is not available"):
        CIFAR10DataModule(data_dir=str(tmp_path), synthetic=False).setup("fit")


def test_sequence_shows_attention_maps_and_token_heatmaps(tmp_path):
    viz = fit("sequence.yaml", tmp_path, "--data.init_args.n_train=256", "--data.init_args.n_val=64")
    maps = np.load(viz / "activation_map" / "maps_step000002.npz")
    assert list(maps["layer_names"]) == ["blocks.0.attn_probs", "blocks.1.attn_probs"]
    assert maps["maps_0"].shape == (4, 17, 17)  # one query x key map per head, [CLS] + 16 tokens
    assert (viz / "activation_map" / "heatmaps_step000002.png").exists()  # blocks' (tokens, features)
    assert np.load(viz / "metric_plot" / "val_confmat_epoch000.npz")["value"].shape == (8, 8)
    assert (viz / "report.html").exists()

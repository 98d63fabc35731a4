"""The planted pathologies of configs/pathologies/ are diagnosed by name and first layer; a healthy run is clean.

Each run trains the digits example in-process on the model arguments of the pathology's YAML (composed over
the quickstart's, as ``lightning-viz fit --config configs/quickstart.yaml --config <pathology>`` does), with
only the health callback, a few batches and an examined step every 2 optimizer steps, so it stays fast.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback, Trainer, seed_everything

from example_projects.digits import DigitsClassifier, DigitsDataModule
from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.training_health import TrainingHealthCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import read_events

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PREFIX = "TrainingHealthCallback: "

# pathology config -> (pathology named in the warning, first affected layer): an activation finding names the
# weight layer, with the tensor measured (the activation module's output) in parentheses
PLANTED = {
    "dead_relu": ("dead units", "features.conv1 (output of features.act1, ReLU)"),
    "vanishing": ("vanishing gradients", "features.conv1.weight"),
    "exploding": ("exploding gradients", "classifier.fc1.weight"),
    "saturation": ("saturated units", "features.conv1 (output of features.act1, Tanh)"),
    "tiny_lr": ("negligible updates", "features.conv1.weight"),
}


def model_args(pathology: str | None) -> dict:
    args = dict(yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())["model"]["init_args"])
    if pathology is not None:
        args.update(
            yaml.safe_load((CONFIGS / "pathologies" / f"{pathology}.yaml").read_text())["model"]["init_args"]
        )
    return args


def fit(tmp_path, pathology, callbacks=None, *, epochs=1, batches=6, model=None, **kwargs):
    seed_everything(0)
    health = TrainingHealthCallback(every_n_steps=2, **kwargs)
    trainer = Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        callbacks=[*(callbacks or []), health],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DigitsClassifier(**{**model_args(pathology), **(model or {})}), DigitsDataModule())
    messages = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    return health, [m for m in messages if m.startswith(PREFIX)]


def test_every_pathology_config_is_planted_here():
    assert {p.stem for p in (CONFIGS / "pathologies").glob("*.yaml")} == set(PLANTED)


@pytest.mark.parametrize("pathology", sorted(PLANTED))
def test_planted_pathology_is_named_with_its_first_layer(tmp_path, pathology):
    name, layer = PLANTED[pathology]
    # each is diagnosed at step 0, except the explosion, which shows from the second examined step (2)
    health, messages = fit(tmp_path, pathology, batches=3 if pathology == "exploding" else 1)
    hits = [m for m in messages if m.startswith(f"{PREFIX}{name}: ")]
    assert hits, f"{pathology}: no '{name}' warning among {messages}"
    assert hits[0].startswith(f"{PREFIX}{name}: {layer} at step "), hits
    assert len(hits) == len({m.split(" at step")[0] for m in hits}), "a (check, layer) warned twice"
    # the summary files list the same findings
    viz = health.viz_dir
    summary = json.loads((viz / "health_summary.json").read_text())
    assert [f["message"] for f in summary["findings"]] == messages
    assert hits[0] in (viz / "health_summary.txt").read_text()
    assert sorted(viz.glob("health_step*.png")), "no health figure"
    # the scalars reach the logger (TensorBoard, read back)
    events = read_events(viz.parents[1])
    assert f"health/update_ratio/{PLANTED['tiny_lr'][1]}" in events.Tags()["scalars"]
    if pathology == "dead_relu":  # every ReLU output is exactly zero
        assert events.Scalars("health/dead_fraction/features.conv1")[0].value == 1.0
    if pathology == "saturation":
        assert events.Scalars("health/saturated_fraction/features.conv1")[0].value >= 0.5


def test_healthy_run_has_no_finding(tmp_path):
    # 4 short epochs: the start of training (largest updates), and one plateau check (patience 3)
    health, messages = fit(tmp_path, None, epochs=4, batches=2)
    assert messages == []
    assert health.findings == []
    assert "no problem found" in (health.viz_dir / "health_summary.txt").read_text()
    assert health.figure_data()["not_run"] == [] and health.notes == {}  # every layer ran and was seen
    assert health.figure_data()["frozen"]["tensors"] == 0


def test_reuses_published_records_instead_of_capturing_again(tmp_path):
    """With the histogram and activation callbacks present, their records drive the checks: no own
    histograms, and with the hooks off the dead layer is found from the activation records."""
    hist = WeightHistogramCallback(every_n_steps=2)
    acts = ActivationMapCallback(every_n_epochs=1, layers=["features.act*"])  # records at the epoch end
    health, messages = fit(tmp_path, "dead_relu", [hist, acts], batches=1, activation_hooks=False)
    assert health._own_histograms is False and health._sums._tracker is None and not health._hooked
    assert any(m.startswith(f"{PREFIX}negligible updates: features.conv1.weight") for m in messages), messages
    # without the own hooks, nothing maps the activation module to its weight layer: it is named itself
    assert any(m.startswith(f"{PREFIX}dead units: features.act1 (ReLU) at step") for m in messages), messages


def test_cli_composes_the_pathology_over_the_quickstart(tmp_path, monkeypatch):
    from lightning_viz.cli import build_cli

    monkeypatch.setattr(sys, "argv", ["lightning-viz"])
    args = [
        "fit",
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--config",
        str(CONFIGS / "pathologies" / "dead_relu.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(args)
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert "WeightHistogramCallback" in names and "TrainingHealthCallback" in names  # appended, not replaced
    messages = [str(w.message) for w in caught if str(w.message).startswith(PREFIX)]
    dead = f"{PREFIX}dead units: features.conv1 (output of features.act1, ReLU) at step 0"
    assert any(m.startswith(dead) for m in messages), messages


class GradProbe(Callback):
    """Independently computes lr * ||g|| / ||W|| at step 0: SGD's first update (the momentum buffer starts
    as the gradient) changes each weight by exactly lr * g."""

    def __init__(self) -> None:
        self.expected: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            lr = optimizer.param_groups[0]["lr"]
            for n, p in pl_module.named_parameters():
                if p.ndim >= 2:
                    self.expected[n] = lr * float(p.grad.double().norm()) / float(p.detach().double().norm())


def test_update_ratio_matches_an_independent_computation(tmp_path):
    probe = GradProbe()
    health, _ = fit(
        tmp_path, None, [probe], batches=1, model={"optimizer": "sgd", "lr": 0.1}, checks=["update_ratio"]
    )
    got = health.figure_data()["update_ratios"]
    assert (
        set(got)
        == set(probe.expected)
        == {
            "features.conv1.weight",
            "features.conv2.weight",
            "classifier.fc1.weight",
            "classifier.fc2.weight",
        }
    )
    for name, want in probe.expected.items():
        assert got[name] == pytest.approx(want, rel=1e-4), name


def test_unavailable_checks_are_said_once(tmp_path):
    from tests.helpers import RandomImages, TinyCNN, make_trainer

    health = TrainingHealthCallback(every_n_steps=1, activation_hooks=False, monitor="not_logged")
    trainer = make_trainer(tmp_path, [health], max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages())
    messages = [str(w.message) for w in caught if str(w.message).startswith(PREFIX)]
    assert len(messages) == 2, messages
    assert "checks unavailable: ['dead_units', 'saturation']: `activation_hooks` is off" in messages[0]
    assert (
        "checks unavailable: loss spikes, plateaus and non-finite loss: `monitor` 'not_logged'" in messages[1]
    )
    assert set(health.unavailable) == {"dead_units", "saturation", "loss"}
    assert "unavailable: loss" in (health.viz_dir / "health_summary.txt").read_text()

"""Bad configuration: YAML values rejected at parse time naming the argument, unmatched panel patterns
reported against the logged names, contradictory schedules explained.

Also covered elsewhere (not repeated here): mistyped keys and abbreviations (tests/cli/test_cli.py), layer
patterns that match nothing listing the closest names (tests/core/test_hooks.py and the callback tests).
"""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.cli import build_cli
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer


@pytest.mark.parametrize(
    ("callback", "init_args", "named"),
    [
        ("WeightHistogramCallback", "log: everything", "log"),
        ("WeightHistogramCallback", "every_n_steps: ten", "every_n_steps"),
        ("ActivationMapCallback", "channel_order: random", "channel_order"),
        ("CurvePlotCallback", "x_axis: time", "x_axis"),
        ("CurvePlotCallback", "panels: {loss: 3}", "panels"),
        ("ModelSummaryCallback", "col_names: [outputsize]", "col_names"),
    ],
)
def test_invalid_yaml_values_are_rejected_at_parse_time_naming_the_argument(
    tmp_path, capsys, monkeypatch, callback, init_args, named
):
    monkeypatch.setattr(sys, "argv", ["lightning-viz"])
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model:
              class_path: example_projects.digits.DigitsClassifier
            data:
              class_path: example_projects.digits.DigitsDataModule
            trainer:
              logger: false
              callbacks:
                - class_path: lightning_viz.{callback}
                  init_args: {{{init_args}}}
            """
        )
    )
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(config)], run=True)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert named in err and callback in err
    assert not (tmp_path / "lightning_logs").exists()  # nothing ran


def test_unlogged_panel_patterns_are_reported_once_against_the_logged_names(tmp_path):
    curves = CurvePlotCallback(panels={"loss": ["*loss*"], "accuracy": ["val_accuracy"], "f1": ["*f1*"]})
    trainer = make_trainer(tmp_path, [curves], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages(n=32))
    ours = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert len(ours) == 1, ours
    msg = ours[0]
    assert "after the first epoch" in msg
    assert (
        "accuracy: 'val_accuracy'" in msg and "f1: '*f1*'" in msg and "*loss*" not in msg.split("Logged")[0]
    )
    assert "'val_acc'" in msg and "'train_loss_step'" in msg  # the names that were logged
    assert "closest: ['val_acc'" in msg


def test_matching_panels_and_default_panels_do_not_warn(tmp_path):
    curves = CurvePlotCallback(panels={"loss": ["*loss*"], "training": ["train_*"]})
    default = CurvePlotCallback(output_dir=str(tmp_path / "default"))  # its "accuracy" panel may stay empty
    trainer = make_trainer(tmp_path, [curves, default], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages(n=32, with_val=False))
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def test_contradictory_schedules_are_explained():
    # Weight histograms with no schedule would never capture: an error naming both arguments.
    with pytest.raises(ValueError, match=r"`every_n_steps` and `every_n_epochs`.*every_n_steps=None"):
        WeightHistogramCallback(every_n_steps=None, every_n_epochs=None)
    # Activation maps with no schedule capture once, at the end of training (documented on the argument).
    assert "When both schedules are off, one capture runs at the end of training" in " ".join(
        ActivationMapCallback.__doc__.split()
    )


def test_activation_maps_without_schedule_capture_once_at_the_end(tmp_path):
    acts = ActivationMapCallback(every_n_epochs=None, every_n_steps=None, sample_size=4)
    trainer = make_trainer(tmp_path, [acts], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages(n=32))
    assert acts.history["conv1"]["step"] == [trainer.global_step] == [4]

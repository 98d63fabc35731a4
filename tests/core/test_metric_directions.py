"""core/metric_directions.py: which value of a metric is best, each source ahead of the ones after it, and
the directions read from torchmetrics attributes and monitoring callbacks. Expected values by hand."""

from __future__ import annotations

from typing import Any

import pytest
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.regression import R2Score

from lightning_viz.core.metric_directions import (
    Mismatch,
    best_direction,
    direction_of,
    metric_attributes,
    monitor_modes,
)


def test_direction_of_higher_is_better():
    assert (direction_of(True), direction_of(False), direction_of(None)) == ("max", "min", None)


def _best(name: str, **given: Any) -> tuple[str | None, str]:
    sources: dict[str, Any] = {"mode": {}, "lr_names": [], "base": {}, "better": {}, "monitors": {}}
    return best_direction(name, **{**sources, **given})


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        # the user's mode: an exact name ahead of a pattern listed before it; patterns ignore case
        ("val_mae", {"mode": {"val_*": "min", "val_mae": "max"}}, ("max", "mode")),
        ("val_mae", {"mode": {"VAL_*": "max"}, "better": {"val_mae": False}}, ("max", "mode")),
        ("lr-Adam", {"mode": {"lr-*": "min"}}, ("min", "mode")),
        # a learning rate has no best, whatever else is known of its name
        ("lr-Adam", {"better": {"lr-Adam": True}}, (None, "learning rate")),
        (
            "custom_rate",
            {"lr_names": ["custom_rate"], "monitors": {"custom_rate": ("min", "EarlyStopping")}},
            (None, "learning rate"),
        ),
        # torchmetrics ahead of a monitor and of the loss name, by the logged name or its base
        (
            "val_loss",
            {"better": {"val_loss": True}, "monitors": {"val_loss": ("min", "ModelCheckpoint")}},
            ("max", "torchmetrics"),
        ),
        (
            "train_mae_epoch",
            {"base": {"train_mae_epoch": "train_mae"}, "better": {"train_mae": False}},
            ("min", "torchmetrics"),
        ),
        (
            "a_epoch",
            {
                "base": {"a_epoch": "a"},
                "better": {"a": True},
                "monitors": {"a_epoch": ("min", "ModelCheckpoint")},
            },
            ("max", "torchmetrics"),
        ),
        # a Metric that says nothing (higher_is_better None) leaves it to the monitor
        (
            "val_x",
            {"better": {"val_x": None}, "monitors": {"val_x": ("max", "EarlyStopping")}},
            ("max", "EarlyStopping"),
        ),
        (
            "val_x_epoch",
            {"base": {"val_x_epoch": "val_x"}, "monitors": {"val_x": ("max", "ModelCheckpoint")}},
            ("max", "ModelCheckpoint"),
        ),
        ("val_loss", {"monitors": {"val_loss": ("max", "ModelCheckpoint")}}, ("max", "ModelCheckpoint")),
        # then the loss name; nothing else is guessed
        ("Train_LOSS_step", {}, ("min", "loss")),
        ("val_ratio", {}, (None, "unknown")),
        ("val_acc", {"better": {"val_accuracy": True}}, (None, "unknown")),
    ],
)
def test_each_source_of_the_best_direction_is_ahead_of_the_next(name, given, expected):
    assert _best(name, **given) == expected


class _Metrics(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.val_mae = MeanAbsoluteError()
        self.layer = nn.Linear(2, 2)
        self.heads = nn.ModuleDict({"acc": BinaryAccuracy(), "score": MeanSquaredError()})
        self.other = nn.ModuleDict({"score": R2Score()})  # a second "score": the first one named so wins


def test_metric_attributes_by_path_and_by_last_part():
    assert metric_attributes(_Metrics()) == {
        "val_mae": False,
        "heads.acc": True,
        "acc": True,
        "heads.score": False,
        "score": False,
        "other.score": True,
    }
    assert metric_attributes(None) == {}


class _LooksLikeACheckpoint:
    monitor, mode = "val_acc", "min"


def test_monitor_modes_and_the_monitors_keeping_the_worse_end():
    callbacks = [
        ModelCheckpoint(monitor="val_mae", mode="max"),  # the MAE's worse end
        EarlyStopping(monitor="val_mae", mode="min"),  # agrees, but the first one monitoring a name wins
        ModelCheckpoint(),  # monitors nothing
        EarlyStopping(monitor="val_acc", mode="max"),
        _LooksLikeACheckpoint(),  # neither ModelCheckpoint nor EarlyStopping
        EarlyStopping(monitor="val_r2", mode="min"),  # no torchmetrics direction known
    ]
    monitors, mismatches = monitor_modes(callbacks, {"val_mae": False, "val_acc": True, "val_r2": None})
    assert monitors == {
        "val_mae": ("max", "ModelCheckpoint"),
        "val_acc": ("max", "EarlyStopping"),
        "val_r2": ("min", "EarlyStopping"),
    }
    assert mismatches == [Mismatch("val_mae", "max", "ModelCheckpoint", False)]
    assert monitor_modes([], {}) == ({}, [])

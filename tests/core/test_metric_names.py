"""core/metric_names.py: glob matching over metric names, the quantity a metric measures, the panels the
curves draw, the patterns that match nothing, and the learning-rate series names. Expected values are
written out by hand."""

from __future__ import annotations

import pytest
import torch

from lightning_viz.core.metric_names import assemble_panels, lr_names, matches, quantity, unmatched_patterns


def test_matches_is_a_case_insensitive_glob_over_any_pattern():
    assert matches("Val_LOSS", ["*loss*"])
    assert matches("val_acc", ["*loss*", "VAL_?CC"])
    assert not matches("val_acc", ["*loss*"])
    assert not matches("val_acc", [])
    assert not matches("val_acc", ["acc"])  # a glob over the whole name, not a substring


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("val_mae", "mae"),
        ("train_mae_step", "mae"),
        ("train_mae_epoch", "mae"),
        ("test_mae/dataloader_idx_1", "mae"),
        ("Validation-f1", "f1"),
        ("training/acc", "acc"),
        ("valid.auroc", "auroc"),
        ("mae", "mae"),
        ("lr-SGD", "lr-SGD"),
        ("val_", "val_"),  # nothing left after the prefix: the name itself
        ("validity_score", "validity_score"),  # a stage prefix needs its separator
    ],
)
def test_quantity_drops_the_stage_the_step_or_epoch_and_the_dataloader(name, expected):
    assert quantity(name) == expected


NAMES = ["lr-SGD", "train_loss_epoch", "train_loss_step", "train_mae_epoch", "val_acc", "val_loss", "val_mae"]


def test_panels_by_pattern_then_one_per_quantity_of_the_rest():
    panels = {"loss": ["*loss*"], "accuracy": ["*acc*"], "nothing": ["zzz*"]}
    assert assemble_panels(NAMES, panels, include_other=True) == [
        {"title": "loss", "series": ["train_loss_epoch", "train_loss_step", "val_loss"]},
        {"title": "accuracy", "series": ["val_acc"]},
        {"title": "lr-SGD", "series": ["lr-SGD"]},
        {"title": "mae", "series": ["train_mae_epoch", "val_mae"]},
    ]
    assert assemble_panels(NAMES, panels, include_other=False) == [
        {"title": "loss", "series": ["train_loss_epoch", "train_loss_step", "val_loss"]},
        {"title": "accuracy", "series": ["val_acc"]},
    ]


def test_a_name_goes_into_every_panel_it_matches_and_a_clashing_quantity_is_marked_other():
    panels = {"mae": ["train_mae*"], "validation": ["val_*"]}
    assert assemble_panels(NAMES, panels, include_other=True) == [
        {"title": "mae", "series": ["train_mae_epoch"]},
        {"title": "validation", "series": ["val_acc", "val_loss", "val_mae"]},
        {"title": "lr-SGD", "series": ["lr-SGD"]},
        {"title": "loss", "series": ["train_loss_epoch", "train_loss_step"]},
    ]
    clash = {"mae": ["train_mae*"], "loss": ["val_loss"]}
    assert assemble_panels(["train_loss_step", "train_mae_epoch", "val_loss"], clash, True) == [
        {"title": "mae", "series": ["train_mae_epoch"]},
        {"title": "loss", "series": ["val_loss"]},
        {"title": "loss (other)", "series": ["train_loss_step"]},
    ]


def test_unmatched_patterns_and_the_closest_names():
    panels = {"loss": ["*loss*"], "acc": ["*accuracy*"], "lr": ["lr-*"]}
    names = ["train_loss", "val_acc"]
    # "accuracy" ~ "val_acc": 3 shared characters of 15, ratio 0.4 >= 0.3; "train_loss" shares "ra": 0.11
    assert unmatched_patterns(names, panels, log_lr=True) == (
        ["acc: '*accuracy*'", "lr: 'lr-*'"],
        ["val_acc"],
    )
    # learning rates not recorded: a pattern for them is not blamed
    assert unmatched_patterns(names, panels, log_lr=False) == (["acc: '*accuracy*'"], ["val_acc"])
    assert unmatched_patterns(names, {"loss": ["*LOSS"]}, log_lr=True) == ([], [])
    assert unmatched_patterns([], {"loss": ["*loss*"]}, log_lr=True) == (["loss: '*loss*'"], [])


def _params(n: int) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(1)) for _ in range(n)]


def _groups(*names: str | None) -> list[dict]:
    return [{"params": _params(1), **({"name": n} if n else {})} for n in names]


@pytest.mark.parametrize(
    ("optimizers", "expected"),
    [
        (lambda: [torch.optim.Adam(_params(2))], ["lr-Adam"]),
        (lambda: [torch.optim.SGD(_groups(None, None), lr=0.1)], ["lr-SGD/pg1", "lr-SGD/pg2"]),
        (
            lambda: [torch.optim.SGD(_groups("enc", None, "head"), lr=0.1)],
            ["lr-SGD/enc", "lr-SGD/pg2", "lr-SGD/head"],
        ),
        (
            lambda: [torch.optim.SGD(_params(1), lr=0.1), torch.optim.Adam(_groups(None, None))],
            ["lr-SGD", "lr-Adam/pg1", "lr-Adam/pg2"],
        ),
        (lambda: [], []),
    ],
)
def test_learning_rate_names_as_the_learning_rate_monitor_logs_them(optimizers, expected):
    assert lr_names(optimizers()) == expected


def test_several_optimizers_of_one_class_are_numbered_from_zero():
    opts = [torch.optim.Adam(_params(1)), torch.optim.SGD(_params(1), lr=0.1), torch.optim.Adam(_params(1))]
    assert lr_names(opts) == ["lr-Adam-0", "lr-SGD", "lr-Adam-1"]  # LearningRateMonitor: lr-Adam, lr-Adam-1
    assert lr_names([torch.optim.Adam(_groups("enc"))]) == ["lr-Adam"]  # LearningRateMonitor: lr-Adam/enc

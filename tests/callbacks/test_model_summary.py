"""ModelSummaryCallback in a real Trainer: files, exact totals with frozen and tied weights, cleanup."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lightning_viz.callbacks.model_summary import ModelSummaryCallback, count_parameters
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events


class TiedFrozen(TinyCNN):
    """TinyCNN with a frozen conv1, a BatchNorm kept in eval mode, and a Linear sharing another's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(24, 24), nn.ReLU())
        self.tied = nn.Linear(24, 24)
        self.tied.weight = self.head[0].weight  # one Parameter object in two modules
        self.norm = nn.BatchNorm1d(24)
        self.conv1.requires_grad_(False)
        self.example_input_array = None  # the summary must use the first training batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        h = self.norm(self.pool(x).flatten(1))
        return self.fc(self.tied(self.head(h)))


class ModeProbe(Callback):
    """Sets ``norm`` to eval (as a user freezing a BatchNorm would) and records every module's flag."""

    def __init__(self, freeze_norm: bool) -> None:
        self.freeze_norm = freeze_norm
        self.flags: dict[str, bool] | None = None
        self.hooks: int | None = None

    def _probe(self, pl_module) -> None:
        if self.flags is not None:
            return
        if self.freeze_norm:
            pl_module.norm.eval()
        self.flags = {n: m.training for n, m in pl_module.named_modules()}
        self.hooks = hook_count(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._probe(pl_module)


def _fit(tmp_path, model, callbacks, data=None, **kwargs):
    trainer = make_trainer(
        tmp_path, callbacks, max_epochs=1, limit_train_batches=2, limit_val_batches=1, **kwargs
    )
    trainer.fit(model, data or RandomImages())
    return trainer


def test_count_parameters_dedupes_tied_and_splits_frozen():
    model = TiedFrozen()
    counts = count_parameters(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.frozen == 40  # conv1: 4*1*3*3 + 4
    # The naive sum over modules counts the tied weight twice; ours must not.
    naive = sum(p.numel() for m in model.children() for p in m.parameters())
    assert naive - counts.total == 24 * 24
    assert counts.blocks["conv1"] == [0, 40]
    assert counts.blocks["tied"] == [24, 0]  # only its bias: the weight belongs to `head`, seen first
    assert sum(t + f for t, f in counts.blocks.values()) == counts.total


def test_summary_files_totals_scalars_and_cleanup(tmp_path):
    model = TiedFrozen()
    cb = ModelSummaryCallback(depth=2)
    before, after = ModeProbe(freeze_norm=True), ModeProbe(freeze_norm=False)
    trainer = _fit(tmp_path, model, [before, cb, after])

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert cb.summary is not None
    assert cb.summary["totals"]["total_params"] == total
    assert cb.summary["totals"]["trainable_params"] == trainable
    assert cb.summary["totals"]["frozen_params"] == total - trainable == 40
    # First training batch (16 examples) cut to two, as the input of the forward pass.
    assert cb.summary["input_shape"] == [2, 1, 8, 8]

    # Flags and hooks are exactly as before the summary (torchinfo alone would put `norm` back in train mode).
    assert after.flags == before.flags
    assert before.flags["norm"] is False and before.flags["conv2"] is True
    assert after.hooks == before.hooks == 0
    assert hook_count(model) == 0

    out = Path(trainer.log_dir) / "viz" / "model_summary"
    text = (out / "summary.txt").read_text()
    for name in ("conv1", "conv2", "head", "tied", "norm", "fc"):
        assert f"({name})" in text
    assert f"total params:     {total:,}" in text
    assert f"trainable params: {trainable:,}" in text
    assert "torchinfo's totals above" in text  # torchinfo counts the tied weight twice; we say so

    data = json.loads((out / "summary.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert {"conv1", "head", "head.0", "tied", "fc"} <= set(rows)
    assert rows["conv1"]["trainable"] == "False" and rows["conv1"]["params"] == 40
    assert rows["conv2"]["trainable"] == "True" and rows["conv2"]["output_shape"] == [2, 6, 8, 8]
    assert rows["fc"]["mult_adds"] == 2 * 100  # torchinfo's Linear rule: batch x parameters
    assert data["totals"]["total_params"] == total
    assert sum(b["trainable"] + b["frozen"] for b in data["blocks"]) == total

    with Image.open(out / "summary.png") as img:
        assert img.size[0] > 100 and img.size[1] > 100

    events = read_events(trainer.logger.log_dir)
    got = {tag: events.Scalars(tag)[0] for tag in ("model/total_params", "model/trainable_params")}
    assert got["model/total_params"].value == total and got["model/total_params"].step == 0
    assert got["model/trainable_params"].value == trainable
    assert events.Scalars("model/frozen_params")[0].value == 40
    assert events.Scalars("model/mult_adds")[0].value == cb.summary["totals"]["mult_adds"] > 0

    import torchinfo.torchinfo as ti

    assert "TiedFrozen" not in ti._cached_forward_pass  # torchinfo's cache must not keep the model alive


def test_uses_example_input_array(tmp_path):
    model = TinyCNN()
    model.example_input_array = torch.zeros(3, 1, 8, 8)
    cb = ModelSummaryCallback(col_names=["output_size", "num_params", "kernel_size"])
    _fit(tmp_path, model, [cb])
    assert cb.summary["input_shape"] == [3, 1, 8, 8]
    rows = {r["name"]: r for r in cb.summary["rows"]}
    assert rows["fc"]["output_shape"] == [3, 4]
    assert rows["fc"]["mult_adds"] == 3 * 100
    assert cb.summary["totals"]["mult_adds"] == sum(r["mult_adds"] for r in cb.summary["rows"])
    assert "Kernel Shape" in cb.summary["text"] and "Mult-Adds" not in cb.summary["text"]
    assert not cb.summary["notes"]  # torchinfo and our totals agree on a plain model
    assert hook_count(model) == 0


class DictBatches(RandomImages):
    """Batches that are dicts: no tensor for the summary to find."""

    def train_dataloader(self):
        data = [{"x": x, "y": y} for x, y in zip(self.x, self.y)]
        return DataLoader(data, batch_size=self.batch_size)

    def val_dataloader(self):
        return []


class DictModel(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = None

    def training_step(self, batch, batch_idx):
        return super().training_step((batch["x"], batch["y"]), batch_idx)


def test_without_input_counts_parameters_only_and_says_so_once(tmp_path):
    model = DictModel()
    cb = ModelSummaryCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, model, [cb], data=DictBatches())
    said = [
        w
        for w in caught
        if issubclass(w.category, VizWarning) and "no `example_input_array`" in str(w.message)
    ]
    assert len(said) == 1
    assert cb.summary["input_shape"] is None
    assert cb.summary["totals"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert cb.summary["totals"]["mult_adds"] is None
    assert "no example input" in cb.summary["text"] and "Output Shape" not in cb.summary["text"]
    events = read_events(trainer.logger.log_dir)
    assert "model/total_params" in events.Tags()["scalars"]
    assert "model/mult_adds" not in events.Tags()["scalars"]


class BrokenForward(TinyCNN):
    def forward(self, x):
        raise RuntimeError("boom in forward")

    def training_step(self, batch, batch_idx):
        return self.fc.weight.sum() * 0.0


def test_failing_forward_falls_back_to_counts_and_training_goes_on(tmp_path):
    model = BrokenForward()
    cb = ModelSummaryCallback()
    with pytest.warns(VizWarning, match="forward pass failed"):
        trainer = _fit(tmp_path, model, [cb], data=RandomImages(with_val=False))
    assert trainer.global_step == 2
    assert cb.summary["totals"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert hook_count(model) == 0
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"depth": 0}, "depth"),
        ({"col_names": ["output_size", "bogus"]}, "col_names"),
        ({"col_names": "num_params"}, "col_names"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        ModelSummaryCallback(**kwargs)

"""ModelSummaryCallback in a real Trainer: files, exact totals with frozen and tied weights, cleanup."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lightning_viz.callbacks.model_summary import ModelSummaryCallback
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


def test_summary_files_totals_scalars_and_cleanup(tmp_path):
    model = TiedFrozen()
    cb = ModelSummaryCallback(depth=2)
    before, after = ModeProbe(freeze_norm=True), ModeProbe(freeze_norm=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, model, [before, cb, after])
    assert not _viz_warnings(caught)  # a normal run: nothing to act on

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
    # The parameters that do not train, by full name, with their sizes.
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert [f["name"] for f in data["frozen"]] == list(frozen) == ["conv1.weight", "conv1.bias"]
    assert [f["shape"] for f in data["frozen"]] == [list(p.shape) for p in frozen.values()]
    assert sum(f["numel"] for f in data["frozen"]) == sum(p.numel() for p in frozen.values()) == 40
    assert "Not trained (requires_grad=False): 40 parameters in 2 tensors: conv1.weight, conv1.bias\n" in text

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
    """Batches that are dicts ``{"x": images, "y": labels}``."""

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


def _viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def test_dict_batch_feeds_its_x(tmp_path):
    model = DictModel()
    cb = ModelSummaryCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, model, [cb], data=DictBatches())
    assert not _viz_warnings(caught)
    # forward(x) has a parameter named like the key: fed as forward(x=batch["x"][:2])
    assert (
        cb.summary["input_shape"] == {"x": [2, 1, 8, 8]} and cb.summary["input_source"] == "batch keys ['x']"
    )
    assert {r["name"]: r["output_shape"] for r in cb.summary["rows"]}["fc"] == [2, 4]


VOCAB, SEQ = 20, 12


class TokenModel(LightningModule):
    """``forward(input_ids, attention_mask)``: a masked mean of token embeddings, then a linear head."""

    def __init__(self, example: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 3)
        ids, mask = torch.zeros(3, SEQ, dtype=torch.long), torch.ones(3, SEQ)
        if example == "dict":
            self.example_input_array = {"input_ids": ids, "attention_mask": mask}
        elif example == "tuple":
            self.example_input_array = (ids, mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))

    def training_step(self, batch, batch_idx):
        logits = self(batch["input_ids"], batch["attention_mask"])
        return nn.functional.cross_entropy(logits, batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Tokens(LightningDataModule):
    """Dict batches ``{"input_ids", "attention_mask", "labels"}`` of 16 sequences."""

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, VOCAB, (32, SEQ), generator=g)
        mask = (torch.rand(32, SEQ, generator=g) > 0.2).float()
        labels = torch.randint(0, 3, (32,), generator=g)
        data = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
        return DataLoader(data, batch_size=16)


@pytest.mark.parametrize(
    ("example", "shape", "source"),
    [
        (
            None,
            {"input_ids": [2, SEQ], "attention_mask": [2, SEQ]},
            "batch keys ['input_ids', 'attention_mask']",
        ),
        ("dict", {"input_ids": [3, SEQ], "attention_mask": [3, SEQ]}, "example_input_array"),
        ("tuple", [[3, SEQ], [3, SEQ]], "example_input_array"),
    ],
)
def test_keyword_forward_fed_by_dict_batch_or_example(tmp_path, example, shape, source):
    model = TokenModel(example)
    cb = ModelSummaryCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, model, [cb], data=Tokens())
    assert not _viz_warnings(caught)
    assert cb.summary["input_shape"] == shape and cb.summary["input_source"] == source
    rows = {r["name"]: r for r in cb.summary["rows"]}
    n = shape["input_ids"][0] if isinstance(shape, dict) else shape[0][0]
    assert rows["embed"]["output_shape"] == [n, SEQ, 8] and rows["head"]["output_shape"] == [n, 3]
    assert rows["head"]["mult_adds"] == n * (8 * 3 + 3)  # torchinfo's Linear rule: batch x parameters
    assert cb.summary["totals"]["mult_adds"] == rows["head"]["mult_adds"] + rows["embed"]["mult_adds"]
    assert f"({source})" in cb.summary["text"]


class UnfeedableModel(TinyCNN):
    """``forward(image, mask)`` with dict batches ``{"x", "y"}``: no rule can tell what to pass."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().forward(image * mask)

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        return nn.functional.cross_entropy(self(x, torch.ones_like(x)), batch["y"])


def _check_counts_only(cb, model, caught, match: str) -> None:
    said = _viz_warnings(caught)
    assert len(said) == 1 and match in said[0], said
    assert cb.summary["input_shape"] is None and cb.summary["totals"]["mult_adds"] is None
    assert cb.summary["totals"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert "Output Shape" not in cb.summary["text"]


def test_unfeedable_forward_warns_once_how_to_set_example_input_array(tmp_path):
    model = UnfeedableModel()
    cb = ModelSummaryCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, model, [cb], data=DictBatches())
    _check_counts_only(cb, model, caught, "`self.example_input_array`")
    assert "UnfeedableModel.forward(image: " in _viz_warnings(caught)[0]
    assert "no example input" in cb.summary["text"]
    events = read_events(trainer.logger.log_dir)
    assert "model/total_params" in events.Tags()["scalars"]
    assert "model/mult_adds" not in events.Tags()["scalars"]


def test_failing_table_without_input_still_gives_counts(tmp_path, monkeypatch):
    import lightning_viz.core.model_stats as ms

    real = ms._torchinfo_summary

    def no_table_without_input(model, input_data, *args, **kwargs):
        if input_data is None:
            raise TypeError("torchinfo could not walk this model")
        return real(model, input_data, *args, **kwargs)

    monkeypatch.setattr(ms, "_torchinfo_summary", no_table_without_input)
    model = UnfeedableModel()
    cb = ModelSummaryCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, model, [cb], data=DictBatches())
    _check_counts_only(cb, model, caught, "`self.example_input_array`")  # one warning says both
    assert "torchinfo could not list the model" in _viz_warnings(caught)[0]
    assert cb.summary["torchinfo_totals"] is None and "(no torchinfo table)" in cb.summary["text"]
    rows = {r["name"]: r for r in cb.summary["rows"]}
    assert rows["conv2"]["params"] == 222 and rows["conv2"]["output_shape"] is None
    assert (Path(trainer.log_dir) / "viz" / "model_summary" / "summary.png").exists()


class Block(nn.Module):
    """A custom block (no ``__len__``: torchinfo's truth test of its compiled wrapper raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


class CompiledChild(TinyCNN):
    """TinyCNN whose ``conv1`` is a ``torch.compile``d custom block and ``head`` a compiled Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.compile(Block(), backend="eager")
        self.fc = torch.compile(nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 4)), backend="eager")
        self.example_input_array = None


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported")
@pytest.mark.parametrize("form", ["fit_compiled_module", "compiled_submodules"])
def test_compiled_model_summary_has_shapes(tmp_path, form):
    torch._dynamo.reset()
    model = CompiledChild() if form == "compiled_submodules" else TinyCNN()
    model.example_input_array = None  # the first training batch, through the compiled code
    fitted = torch.compile(model, backend="eager") if form == "fit_compiled_module" else model
    cb = ModelSummaryCallback()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = _fit(tmp_path, fitted, [cb])  # with a validation loop
    finally:
        torch._dynamo.reset()
    assert not _viz_warnings(caught)
    assert trainer.global_step == 2 and trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed
    assert cb.summary["input_shape"] == [2, 1, 8, 8] and cb.summary["model"] == type(model).__name__
    rows = {r["name"]: r for r in cb.summary["rows"]}
    assert not [n for n in rows if "_orig_mod" in n] and "_orig_mod" not in cb.summary["text"]
    if form == "compiled_submodules":
        assert rows["conv1"]["type"] == "Block" and rows["conv1.conv"]["output_shape"] == [2, 4, 8, 8]
        assert rows["fc.2"]["output_shape"] == [2, 4] and rows["fc.0"]["mult_adds"] == 2 * (24 * 8 + 8)
        assert type(model.conv1).__name__ == type(model.fc).__name__ == "OptimizedModule"  # put back
    else:
        assert rows["conv2"]["output_shape"] == [2, 6, 8, 8] and rows["fc"]["output_shape"] == [2, 4]
    assert cb.summary["totals"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert cb.summary["totals"]["mult_adds"] > 0 and not cb.summary["notes"]
    assert hook_count(model) == 0


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

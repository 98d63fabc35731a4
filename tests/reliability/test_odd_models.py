"""Odd models and data: structured outputs, unusual ranks and dtypes, no or frozen parameters, mixed
precision and torch.compile. Each is handled, or skipped with a one-line reason; training always finishes."""

from __future__ import annotations

import dataclasses
import shutil
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lightning_viz import (
    ActivationMapCallback,
    CurvePlotCallback,
    ModelSummaryCallback,
    WeightHistogramCallback,
)
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events


@dataclasses.dataclass
class Output:
    hidden: torch.Tensor
    note: str = "dataclass output"


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Zoo(LightningModule):
    """Layers whose outputs are every odd thing a capture meets; the loss only uses the plain path."""

    def __init__(self) -> None:
        super().__init__()
        self.tuple_out = Lambda(lambda x: (x * 2, "meta"))
        self.list_out = Lambda(lambda x: [None, x + 1])
        self.dict_out = Lambda(lambda x: {"n": 3, "hidden": x - 1})
        self.dataclass_out = Lambda(lambda x: Output(x * 3))
        self.none_out = Lambda(lambda x: None)
        self.vector = Lambda(lambda x: x.mean(dim=(1, 2, 3)))  # 1-d: [N]
        self.scalar = Lambda(lambda x: x.sum())  # 0-d
        self.ints = Lambda(lambda x: (x > 0).long() * 3)
        self.bools = Lambda(lambda x: x > 0)
        self.gru = nn.GRU(8, 5, batch_first=True)  # 3-d sequence: tuple (output, h)
        self.packed = nn.GRU(8, 3, batch_first=True)  # PackedSequence output
        self.video = nn.Conv3d(1, 2, 1)  # 5-d
        self.wide = nn.Conv2d(1, 3000, 1)  # thousands of channels
        self.fc = nn.Linear(64, 4)
        self.frozen = nn.Linear(64, 4).requires_grad_(False)
        self.unused = nn.Linear(3, 3)  # never called: parameters without gradients

    def forward(self, x):
        for m in (self.tuple_out, self.list_out, self.dict_out, self.dataclass_out, self.none_out):
            m(x)
        self.vector(x), self.scalar(x), self.ints(x), self.bools(x)
        seq = x.view(-1, 8, 8)
        self.gru(seq)
        lengths = torch.full((seq.shape[0],), 8, dtype=torch.long)
        self.packed(pack_padded_sequence(seq, lengths, batch_first=True))
        self.video(x.view(-1, 1, 2, 4, 8))
        self.wide(x[:, :, :4, :4])
        return self.fc(x.flatten(1)) + self.frozen(x.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zoo")
    model, data = Zoo(), RandomImages(n=16, batch_size=8, with_val=False)
    acts = ActivationMapCallback(layers=["*"], sample_size=4, max_channels=16)
    hist = WeightHistogramCallback(every_n_steps=1, bins=8)
    cbs = [ModelSummaryCallback(), hist, acts, CurvePlotCallback()]
    trainer = make_trainer(tmp, cbs, max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    ours = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    yield trainer, model, data, acts, hist, ours
    shutil.rmtree(tmp, ignore_errors=True)


def test_structured_outputs_are_captured_from_their_first_tensor(zoo):
    trainer, model, data, acts, _, ours = zoo
    assert trainer.state.finished
    x = data.x[:4].double()
    expected = {
        "tuple_out": x * 2,
        "list_out": x + 1,
        "dict_out": x - 1,
        "dataclass_out": x * 3,
        "vector": x.mean(dim=(1, 2, 3)),
        "scalar": x.sum(),
        "ints": (x > 0).double() * 3,
        "bools": (x > 0).double(),
    }
    for name, a in expected.items():
        hist = acts.history[name]
        assert hist["step"] == [2], name
        np.testing.assert_allclose(hist["mean"], [a.mean().item()], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(hist["std"], [a.std(correction=0).item()], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        seq = data.x[:4].view(-1, 8, 8)
        packed_data = model.packed(seq)[0]  # same weights (one step, capture after it)
    np.testing.assert_allclose(
        acts.history["packed"]["mean"], [packed_data.double().mean().item()], rtol=1e-4
    )
    skipped = [m for m in ours if "is skipped" in m]
    assert len(skipped) == 1 and "'none_out'" in skipped[0] and "NoneType" in skipped[0]
    assert np.isnan(acts.history["none_out"]["mean"]).all()


def test_ranks_and_channel_cap_in_the_figures(zoo):
    _, _, _, acts, *_ = zoo
    with np.load(acts.viz_dir / "maps_step000002.npz") as z:
        names = z["layer_names"].tolist()
        wide, video = names.index("wide"), names.index("video")
        assert z[f"maps_{wide}"].shape == (16, 4, 4) and int(z["layer_total_channels"][wide]) == 3000
        assert z[f"maps_{video}"].shape == (2, 4, 8) and "middle depth slice of 2" in z["layer_note"][video]
    import json

    heat = json.loads((acts.viz_dir / "heatmaps_step000002.json").read_text())
    shapes = {la["name"]: np.asarray(la["values"]).shape for la in heat["layers"]}
    assert shapes["gru"] == (8, 5)  # example's time steps x features
    assert "vector" not in shapes and "scalar" not in shapes  # 1-d, 0-d: statistics only


def test_frozen_and_unused_parameters_have_weights_but_no_gradients(zoo):
    trainer, *_, hist, _ = zoo
    grads = {p["name"] for p in hist.evolution_data("gradients")["params"]}
    weights = {p["name"] for p in hist.evolution_data("weights")["params"]}
    assert {"frozen.weight", "unused.weight", "wide.weight"} <= weights
    assert "fc.weight" in grads and not grads & {
        "frozen.weight",
        "frozen.bias",
        "unused.weight",
        "unused.bias",
    }
    tags = read_events(trainer.logger.log_dir).Tags()["histograms"]
    assert "weights/unused.weight" in tags and "gradients/unused.weight" not in tags


class NoTrainable(TinyCNN):
    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        self.log("train_loss", torch.tensor(1.0))
        return None  # nothing to optimise: Lightning skips the optimizer step

    def configure_optimizers(self):
        return None


def test_model_without_trainable_parameters(tmp_path):
    hist = WeightHistogramCallback(every_n_steps=None, every_n_epochs=1, bins=8)
    cbs = [ModelSummaryCallback(), hist, ActivationMapCallback(sample_size=4), CurvePlotCallback()]
    trainer = make_trainer(tmp_path, cbs, max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(NoTrainable(), RandomImages(n=16))
    assert trainer.state.finished
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert cbs[0].summary["totals"]["trainable_params"] == 0
    assert hist.evolution_data("gradients")["params"] == []
    assert len(hist.evolution_data("weights")["params"]) == 6  # the epoch-end capture, weights only
    assert cbs[2].history["conv1"]["step"] == [trainer.global_step]


def test_bf16_mixed_precision_on_cpu(tmp_path):
    acts = ActivationMapCallback(sample_size=4)
    hist = WeightHistogramCallback(every_n_steps=1, bins=8)
    cbs = [ModelSummaryCallback(), hist, acts]
    trainer = make_trainer(tmp_path, cbs, max_epochs=1, precision="bf16-mixed", logger=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages(n=16, with_val=False))
    assert trainer.state.finished
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert acts.history["conv1"]["step"] == [1] and np.isfinite(acts.history["conv1"]["mean"]).all()
    assert cbs[0].summary["input_shape"] is not None  # the summary's forward ran under autocast
    assert len(hist.evolution_data("gradients")["params"]) == 6


def test_half_precision_model(tmp_path):
    """A model whose parameters and activations are bf16 (precision="bf16-true")."""
    acts = ActivationMapCallback(sample_size=4)
    hist = WeightHistogramCallback(every_n_steps=1, bins=8)
    trainer = make_trainer(tmp_path, [hist, acts], max_epochs=1, precision="bf16-true", logger=False)
    trainer.fit(TinyCNN(), RandomImages(n=16, with_val=False))
    model = trainer.lightning_module
    assert model.conv1.weight.dtype == torch.bfloat16
    (w,) = [p for p in hist.evolution_data("weights")["params"] if p["name"] == "conv1.weight"]
    assert int(w["counts"][-1].sum()) == model.conv1.weight.numel()
    assert np.isfinite(acts.history["conv1"]["mean"]).all()


class Attention(LightningModule):
    """nn.MultiheadAttention uses its out_proj's weights without calling it: out_proj never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x.view(-1, 8, 8))
        return self.head(self.attn(h, h, h)[0].mean(1))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_layer_that_does_not_run_is_not_run_never_nan(tmp_path):
    import json

    class Listener(Callback):
        payloads: list = []

        def on_viz_record(self, trainer, source, kind, step, payload):
            self.payloads.append(payload)

    acts, listener = ActivationMapCallback(layers=["attn.out_proj", "head"], sample_size=4), Listener()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [acts, listener], max_epochs=2)
        trainer.fit(Attention(), RandomImages(n=16, batch_size=8, with_val=False))
    assert trainer.state.finished
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]  # no NaN/Inf warning
    hist = acts.history["attn.out_proj"]
    assert hist["ran"] == [False, False] and hist["nonfinite"] == [0, 0]
    assert acts.history["head"]["ran"] == [True, True]
    record = listener.payloads[-1]["attn.out_proj"]
    assert record["ran"] is False and record["values"] == 0 and record["nonfinite"] == 0
    assert record["of"] is None and listener.payloads[-1]["_types"]["attn.out_proj"] == (
        "NonDynamicallyQuantizableLinear"
    )
    tags = read_events(trainer.logger.log_dir).Tags()["scalars"]
    assert not any(t.startswith("activation/attn.out_proj/") for t in tags)  # no NaN scalars
    saved = json.loads((acts.viz_dir / "stats.json").read_text())
    assert saved["layers"]["attn.out_proj"]["ran"] == [False, False]
    # the default choice leaves out_proj out: it would never run
    default = ActivationMapCallback(sample_size=4, output_dir=str(tmp_path / "default"))
    with warnings.catch_warnings(record=True) as caught:  # the Linear fallback is an info line now
        warnings.simplefilter("always")
        make_trainer(tmp_path / "d", [default], max_epochs=1, logger=False).fit(
            Attention(), RandomImages(n=16, batch_size=8, with_val=False)
        )
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert default.layer_names == ["embed", "head"]

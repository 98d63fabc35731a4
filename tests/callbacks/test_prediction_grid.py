"""PredictionGridCallback (#18 item 2) in real Trainers: the fixed sample's predictions and the epoch's worst
examples equal the test's own computation on the same model, for classification (image and dict batches, a
validation_step that does not call self), regression on a model without convolutions, and per-token
sequence outputs; bad arguments are one-line errors; an output it cannot read is one warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_viz.callbacks.prediction_grid import PredictionGridCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import make_trainer, read_events

N_VAL = 40


def viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


class Images(Dataset):
    """Random 1x8x8 images with 4 classes, as tuples or as dicts."""

    def __init__(self, n: int, seed: int, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


class Classifier(LightningModule):
    """A small CNN; ``through_net``: its steps call ``self.net(x)``, never ``self(x)``."""

    def __init__(self, as_dict: bool = False, through_net: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
        self.as_dict, self.through_net = as_dict, through_net

    def forward(self, x):
        return self.net(x)

    def _xy(self, batch):
        return (batch["image"], batch["label"]) if self.as_dict else batch

    def training_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        return F.cross_entropy(self.net(x) if self.through_net else self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self.net(x) if self.through_net else self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(Images(32, 0, self.as_dict), batch_size=8)

    def val_dataloader(self):
        return DataLoader(Images(N_VAL, 1, self.as_dict), batch_size=8)


class Reference(Callback):
    """The test's own computation, before PredictionGridCallback's at each epoch end (listed before it):
    per-example cross-entropy of every validation example and the fixed sample's softmax, in eval mode."""

    def __init__(self, loss_fn) -> None:
        self.loss_fn = loss_fn
        self.val_losses: list[np.ndarray] = []
        self.sample: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module):
        ds = trainer.val_dataloaders.dataset
        batch = [ds[i] for i in range(len(ds))]
        if isinstance(batch[0], dict):
            x = torch.stack([b["image"] for b in batch])
            y = torch.stack([b["label"] for b in batch])
        else:
            x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            out = pl_module(x)
        pl_module.train(was)
        self.val_losses.append(self.loss_fn(out, y).numpy())
        self.sample.append(out)


def data_files(trainer) -> list[dict]:
    folder = Path(trainer.log_dir) / "viz" / "prediction_grid"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("predictions_step*.json"))]


@pytest.mark.parametrize(
    "as_dict,through_net", [(False, False), (True, False), (False, True)], ids=["tuple", "dict", "not-self"]
)
def test_classification_sample_and_worst_examples_equal_an_independent_computation(
    tmp_path, as_dict, through_net
):
    torch.manual_seed(0)
    ref = Reference(lambda out, y: F.cross_entropy(out, y, reduction="none"))
    cb = PredictionGridCallback(sample_size=6, worst_k=5, class_names=["a", "b", "c", "d"])
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(as_dict, through_net))
    assert viz_warnings(caught) == []
    files = data_files(trainer)
    assert [d["step"] for d in files] == [4, 8] and all(d["task"] == "classification" for d in files)
    y_val = Images(N_VAL, 1).y
    for epoch, d in enumerate(files):
        probs = ref.sample[epoch][:6].softmax(-1)
        s = d["sample"]
        assert s["true"] == y_val[:6].tolist()
        assert s["pred"] == probs.argmax(-1).tolist()
        np.testing.assert_allclose(s["conf"], probs.max(-1).values.numpy(), rtol=1e-5)
        assert np.asarray(s["images"]).shape == (6, 1, 8, 8)
        np.testing.assert_allclose(np.asarray(s["images"]), Images(N_VAL, 1).x[:6].numpy(), rtol=1e-6)
        # the epoch's 5 highest losses over all 40 validation examples, highest first
        losses = ref.val_losses[epoch]
        top = np.argsort(-losses)[:5]
        w = d["worst"]
        np.testing.assert_allclose(w["loss"], losses[top], rtol=1e-5)
        assert w["true"] == y_val[top].tolist()
        np.testing.assert_allclose(np.asarray(w["images"]), Images(N_VAL, 1).x[top].numpy(), rtol=1e-6)
        assert d["class_names"] == ["a", "b", "c", "d"]
    png = Path(trainer.log_dir) / "viz" / "prediction_grid" / "predictions_step000008.png"
    with Image.open(png) as im:
        assert im.size[0] > 600
    assert len(read_events(trainer.logger.log_dir).Images("viz/prediction_grid/predictions")) == 2


class Regressor(LightningModule):
    """An MLP on tabular inputs with float targets: no convolution, no images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(64, 5, generator=g)
        self.y = self.x[:, :1] * 2.0 + 0.1 * torch.randn(64, 1, generator=g)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:40], self.y[:40]), batch_size=16)


def test_regression_on_a_model_without_convolutions(tmp_path):
    torch.manual_seed(0)
    model = Regressor()
    ref = Reference(lambda out, y: (out - y).square().mean(1))
    ref.on_train_epoch_end = lambda trainer, pl: _regression_reference(ref, model)
    cb = PredictionGridCallback(sample_size=10, worst_k=4)
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    assert d["task"] == "regression" and d["sample"]["images"] is None
    # no probability for a regression: null in strict JSON, in the sample as in the worst examples
    assert d["sample"]["conf"] == [None] * 10 and d["worst"]["conf"] == [None] * 4
    path = sorted((Path(trainer.log_dir) / "viz" / "prediction_grid").glob("predictions_step*.json"))[0]
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    np.testing.assert_allclose(d["sample"]["pred"], ref.sample[0][:10, 0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(d["sample"]["true"], model.y[:10, 0].numpy(), rtol=1e-6)
    losses = ref.val_losses[0]
    np.testing.assert_allclose(d["worst"]["loss"], np.sort(losses)[::-1][:4], rtol=1e-5)


def _regression_reference(ref: Reference, model: Regressor) -> None:
    model.eval()
    with torch.no_grad():
        out = model(model.x[:40])
    model.train()
    ref.sample.append(out)
    ref.val_losses.append((out - model.y[:40]).square().mean(1).numpy())


class Tagger(LightningModule):
    """Per-token classes: embeddings and a GRU, padding targets -100."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.gru, self.head = nn.Embedding(10, 8), nn.GRU(8, 8, batch_first=True), nn.Linear(8, 3)
        g = torch.Generator().manual_seed(5)
        self.tokens = torch.randint(0, 10, (24, 7), generator=g)
        self.tags = self.tokens % 3
        self.tags[:, 5:] = -100

    def forward(self, tokens):
        return self.head(self.gru(self.emb(tokens))[0])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).transpose(1, 2), y, ignore_index=-100)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.tokens, self.tags), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.tokens[:8], self.tags[:8]), batch_size=8)


def test_sequence_outputs_show_each_tokens_right_and_wrong(tmp_path):
    torch.manual_seed(0)
    model = Tagger()
    cb = PredictionGridCallback(sample_size=4)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(model)
    (d,) = data_files(trainer)
    assert d["task"] == "sequence"
    model.eval()
    with torch.no_grad():
        pred = model(model.tokens[:4]).argmax(-1)
    seq = d["sequence"]
    assert seq["true"] == model.tags[:4].tolist() and seq["pred"] == pred.tolist()
    valid = model.tags[:4] != -100
    acc = ((pred == model.tags[:4]) & valid).sum(1) / valid.sum(1)
    np.testing.assert_allclose(seq["accuracy"], acc.numpy(), rtol=1e-6)
    assert d["worst"] is None and "classification and regression outputs only" in d["notes"][0]


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"task": "segmentation"}, "task"),
        ({"worst_k": -1}, "worst_k"),
        ({"sample_size": 0}, "sample_size"),
        ({"sample_from": "test"}, "sample_from"),
        ({"class_names": "cat"}, "class_names"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        PredictionGridCallback(**kwargs)
    assert "\n" not in str(err.value)


class Unreadable(Classifier):
    """Outputs a feature map that is neither classes nor the target's shape."""

    def forward(self, x):
        return self.net[0](x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self(x).mean() * 0 + F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self(batch[0])


def test_an_output_it_cannot_read_is_one_warning_and_training_goes_on(tmp_path):
    cb = PredictionGridCallback()
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Unreadable())
    assert trainer.state.finished
    msgs = viz_warnings(caught)
    assert len(msgs) == 1 and "cannot tell the task" in msgs[0] and "`task`" in msgs[0], msgs
    assert data_files(trainer) == []


class Tabular(Classifier):
    """Classification of tabular rows (no images): the sample and the worst examples are drawn as bars."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        g = torch.Generator().manual_seed(7)
        self.x, self.y = torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:24], self.y[:24]), batch_size=8)


def test_classification_without_images_draws_bars(tmp_path):
    torch.manual_seed(0)
    model = Tabular()
    cb = PredictionGridCallback(sample_size=5, worst_k=3)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(model)
    (d,) = data_files(trainer)
    assert d["task"] == "classification" and d["sample"]["images"] is None and d["worst"]["images"] is None
    model.eval()
    with torch.no_grad():
        probs = model(model.x[:5]).softmax(-1)
    np.testing.assert_allclose(d["sample"]["conf"], probs.max(-1).values.numpy(), rtol=1e-5)
    from lightning_viz.render import close_figure
    from lightning_viz.render.predictions import render_predictions

    fig = render_predictions(d)
    try:
        bars = [ax for ax in fig.axes if ax.patches]
        assert [len(ax.patches) for ax in bars] == [5, 3]
        assert [p.get_width() for p in bars[0].patches] == pytest.approx(d["sample"]["conf"])
    finally:
        close_figure(fig)

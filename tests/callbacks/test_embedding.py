"""EmbeddingCallback (#18 item 5) in real Trainers: the features equal those the test's own hook captures on
the same model, their 2-D PCA equals one computed with ``numpy.linalg.svd``, for tuple and dict batches, a
model without convolutions (float targets, token features), a named convolution inside a compiled submodule
(averaged over positions); TensorBoard's own projector plugin serves the features, labels and sprite back;
a resumed run keeps the projector's earlier steps; bad arguments are one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_viz.callbacks.embedding import EmbeddingCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import make_trainer

N_VAL, N = 40, 24
NAMES = ["a", "b", "c", "d"]


def viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


class Images(Dataset):
    """1x8x8 images of 4 classes (a bright row band per class), as tuples or as dicts."""

    def __init__(self, n: int, seed: int, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
        for k in range(4):
            self.x[self.y == k, :, 2 * k : 2 * k + 2] += 1.0
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


class Classifier(LightningModule):
    def __init__(self, as_dict: bool = False, compiled: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        if compiled:
            self.features = torch.compile(self.features, backend="eager")
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 4))
        self.as_dict = as_dict

    def forward(self, x):
        return self.head(F.relu(self.features(x)))

    def _xy(self, batch):
        return (batch["image"], batch["label"]) if self.as_dict else batch

    def training_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(Images(32, 0, self.as_dict), batch_size=8)

    def val_dataloader(self):
        return DataLoader(Images(N_VAL, 1, self.as_dict), batch_size=8)


class Reference(Callback):
    """The test's own capture, before EmbeddingCallback's at each epoch end (listed before it): the
    ``module``'s input or output on the first N validation examples, in eval mode, and the model's output."""

    def __init__(self, module: str, source: str, x_of) -> None:
        self.module, self.source, self.x_of = module, source, x_of
        self.features: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module):
        x = self.x_of(trainer.val_dataloaders.dataset)
        module = dict(pl_module.named_modules())[self.module]
        got = []
        if self.source == "input":
            h = module.register_forward_pre_hook(lambda m, a: got.append(a[0]))
        else:
            h = module.register_forward_hook(lambda m, a, o: got.append(o))
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            out = pl_module(x)
        pl_module.train(was)
        h.remove()
        self.features.append(got[0])
        self.outputs.append(out)


def numpy_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA by numpy.linalg.svd, each component's largest-magnitude entry made positive."""
    c = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    top = vt[:2]
    top = top * np.sign(top[np.arange(2), np.abs(top).argmax(1)])[:, None]
    return c @ top.T, (s[:2] ** 2) / (s**2).sum()


def data_files(trainer, folder: str = "embedding") -> list[dict]:
    root = Path(trainer.log_dir) / "viz" / folder
    return [json.loads(p.read_text()) for p in sorted(root.glob("embedding_step*.json"))]


def images_x(ds) -> torch.Tensor:
    return ds.x[:N]


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_penultimate_features_and_pca_equal_an_independent_computation(tmp_path, as_dict):
    torch.manual_seed(0)
    ref = Reference("head.3", "input", images_x)
    cb = EmbeddingCallback(sample_size=N, class_names=NAMES)
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(as_dict))
    assert viz_warnings(caught) == []
    files = data_files(trainer)
    assert [d["step"] for d in files] == [4, 8]
    y = Images(N_VAL, 1).y[:N]
    viz = Path(trainer.log_dir) / "viz" / "embedding"
    for epoch, d in enumerate(files):
        feats = ref.features[epoch].numpy()
        assert (d["layer"], d["source"], d["dims"], d["pooled"]) == ("head.3", "input", 16, False)
        with np.load(viz / f"embedding_features_step{d['step']:06d}.npz") as z:
            np.testing.assert_allclose(z["features"], feats, rtol=1e-5, atol=1e-6)
        coords, explained = numpy_pca(feats)
        np.testing.assert_allclose(np.asarray(d["coords"]), coords, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(d["explained"], explained, rtol=1e-5)
        assert d["labels"] == y.tolist() and d["label_kind"] == "class" and d["class_names"] == NAMES
        assert d["predicted"] == ref.outputs[epoch][:N].argmax(-1).tolist()
    with Image.open(viz / "embedding_step000008.png") as im:
        assert im.size[0] > 600


class TokenModel(LightningModule):
    """No convolutions: token embeddings, a per-token Linear ``proj`` ([N, T, 12]), mean over tokens, a
    head; float targets (regression)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 12)
        self.head = nn.Linear(12, 1)

    def forward(self, tokens):
        return self.head(torch.tanh(self.proj(self.embed(tokens))).mean(1)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self(batch["tokens"]), batch["target"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.mse_loss(self(batch["tokens"]), batch["target"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    @staticmethod
    def data(n: int, seed: int) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, 20, (n, 5), generator=g)
        target = tokens.float().mean(1) / 20
        return [{"tokens": tokens[i], "target": target[i]} for i in range(n)]

    def train_dataloader(self):
        return DataLoader(self.data(32, 0), batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.data(N_VAL, 1), batch_size=8)


def tokens_x(ds) -> torch.Tensor:
    return torch.stack([ds[i]["tokens"] for i in range(N)])


@pytest.mark.parametrize("layer", [None, "proj"], ids=["default", "per-token-linear"])
def test_a_model_without_convolutions_with_float_targets(tmp_path, layer):
    torch.manual_seed(0)
    ref = Reference(layer or "head", "output" if layer else "input", tokens_x)
    cb = EmbeddingCallback(sample_size=N, layer=layer)
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TokenModel())
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    feats = ref.features[0]
    if layer:  # a Linear's [N, T, D] output: one row per example, the mean over its tokens
        assert feats.shape == (N, 5, 12)
        feats = feats.mean(1)
    assert d["dims"] == 12 and d["pooled"] is bool(layer)
    np.testing.assert_allclose(np.asarray(d["coords"]), numpy_pca(feats.numpy())[0], rtol=1e-4, atol=1e-5)
    target = torch.stack([b["target"] for b in TokenModel.data(N_VAL, 1)[:N]])
    assert d["label_kind"] == "value" and d["predicted"] is None
    np.testing.assert_allclose(d["labels"], target.numpy(), rtol=1e-6)


class Transformer(LightningModule):
    """A batch-first TransformerEncoder over padded token sequences (dict batches: tokens, mask, label),
    classified from the mean over the valid tokens. In eval mode without gradients PyTorch runs the encoder
    through its fast path: its layers then output nested tensors (each example its own length)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens, mask):
        h = self.encoder(self.embed(tokens), src_key_padding_mask=~mask)
        return self.head((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch["tokens"], batch["mask"]), batch["label"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)

    @staticmethod
    def data(n: int, seed: int) -> list[dict]:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, 20, (n, 6), generator=g)
        lengths = torch.randint(3, 7, (n,), generator=g)
        mask = torch.arange(6)[None, :] < lengths[:, None]
        return [{"tokens": tokens[i], "mask": mask[i], "label": int(tokens[i, 0]) % 4} for i in range(n)]

    def train_dataloader(self):
        return DataLoader(self.data(32, 0), batch_size=8)

    def val_dataloader(self):
        return DataLoader(self.data(N_VAL, 1), batch_size=8)


class PaddedReference(Callback):
    """The test's own features at each epoch end, before EmbeddingCallback's: ``module``'s output on the first
    N validation examples in eval mode WITH gradients (so PyTorch takes its plain path: padded [N, T, D]
    outputs, no nested tensors), averaged over each example's valid tokens (its mask)."""

    def __init__(self, module: str) -> None:
        self.module, self.features = module, []

    def on_train_epoch_end(self, trainer, pl_module):
        rows = Transformer.data(N_VAL, 1)[:N]
        tokens = torch.stack([r["tokens"] for r in rows])
        mask = torch.stack([r["mask"] for r in rows])
        got = []
        h = dict(pl_module.named_modules())[self.module].register_forward_hook(lambda m, a, o: got.append(o))
        was = pl_module.training
        pl_module.eval()
        pl_module(tokens, mask)
        pl_module.train(was)
        h.remove()
        out = got[0].detach()
        assert not out.is_nested and out.shape == (N, 6, 16)
        self.features.append((out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


@pytest.mark.parametrize("layer", ["encoder", "encoder.layers.1"], ids=["encoder", "nested-layer"])
def test_a_transformer_layers_features_are_its_tokens_mean_not_a_mean_over_features(tmp_path, layer):
    """A [N, T, D] output of a module that is not a Linear (here a transformer's) has its features last: one
    D-vector per example, not T values averaged over D. A layer inside the encoder outputs a nested tensor
    on PyTorch's fast path: each example is averaged over its own tokens (was one warning with PyTorch's
    whole list of backends, and no embedding)."""
    torch.manual_seed(0)
    ref = PaddedReference(layer)
    trainer = make_trainer(tmp_path, [ref, EmbeddingCallback(sample_size=N, layer=layer)], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Transformer())
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    assert d["dims"] == 16 and d["pooled"] is True and d["n"] == N
    feats = ref.features[0]
    if layer == "encoder":  # the encoder pads its output back: zeros at the padded positions, averaged too
        rows = Transformer.data(N_VAL, 1)[:N]
        mask = torch.stack([r["mask"] for r in rows])
        feats = feats * mask.sum(1, keepdim=True) / mask.shape[1]
    coords, _ = numpy_pca(feats.numpy())
    np.testing.assert_allclose(np.asarray(d["coords"]), coords, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported")
def test_a_named_convolution_inside_a_compiled_submodule_is_averaged_over_positions(tmp_path):
    torch.manual_seed(0)
    ref = Reference("features._orig_mod.2", "output", images_x)
    cb = EmbeddingCallback(sample_size=N, layer="features.2")
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(compiled=True))
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    feats = ref.features[0]
    assert feats.shape == (N, 8, 8, 8)
    assert (d["layer"], d["source"], d["dims"], d["pooled"]) == ("features.2", "output", 8, True)
    coords, explained = numpy_pca(feats.mean((2, 3)).numpy())
    np.testing.assert_allclose(np.asarray(d["coords"]), coords, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d["explained"], explained, rtol=1e-5)


# ---------------------------------------------------------------------------- TensorBoard's projector
def projector_app(logdir: Path):
    """TensorBoard's own projector plugin over ``logdir``, as `tensorboard --logdir` serves it."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    plugin = ProjectorPlugin(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=mux)
    )
    apps = plugin.get_plugin_apps()

    def get(route: str, **args):
        return Client(apps[route], Response).get(route, query_string=args)

    return get


def test_tensorboards_projector_serves_the_features_labels_and_sprite_and_a_resume_keeps_them(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    ref = Reference("head.3", "input", images_x)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    cb = EmbeddingCallback(sample_size=N, class_names=NAMES, max_image_px=4)
    first = make_trainer(tmp_path, [ref, cb, ckpt], max_epochs=1, logger=logger, enable_checkpointing=True)
    first.fit(Classifier())
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    second = make_trainer(
        tmp_path,
        [ref, EmbeddingCallback(sample_size=N, class_names=NAMES, max_image_px=4)],
        max_epochs=2,
        logger=logger,
    )
    second.fit(Classifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    get = projector_app(tmp_path / "tb")
    runs = json.loads(get("/runs").data)
    assert runs == ["version_0"]
    config = json.loads(get("/info", run="version_0").data)
    names = [e["tensorName"] for e in config["embeddings"]]
    assert names == ["viz/embedding/head.3:4", "viz/embedding/head.3:8"]  # the first run's step kept
    y = Images(N_VAL, 1).y[:N]
    for epoch, name in enumerate(names):
        raw = get("/tensor", run="version_0", name=name).data
        served = np.frombuffer(raw, dtype=np.float32).reshape(N, 16)
        np.testing.assert_array_equal(served, ref.features[epoch].numpy())  # every bit of the float32
        lines = get("/metadata", run="version_0", name=name).data.decode().splitlines()
        pred = ref.outputs[epoch][:N].argmax(-1)
        assert lines[0] == "label\tpredicted"
        assert lines[1:] == [
            f"{NAMES[a]}\t{NAMES[b]}" for a, b in zip(y.tolist(), pred.tolist(), strict=True)
        ]
        sprite = get("/sprite_image", run="version_0", name=name)
        assert sprite.status_code == 200
        with Image.open(__import__("io").BytesIO(sprite.data)) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float64)
        assert arr.shape == (20, 20)  # 24 examples: 5 x 5 tiles of 4 x 4 pixels
        x = F.adaptive_avg_pool2d(Images(N_VAL, 1).x[:N], 4)[:, 0].double()
        lo, hi = x.flatten(1).min(1).values, x.flatten(1).max(1).values
        tile = (x[7] - lo[7]) / (hi[7] - lo[7])  # example 7: row 1, column 2
        np.testing.assert_allclose(arr[4:8, 8:12], np.round(tile.numpy() * 255), atol=1)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"pool": "max"}, "pool"),
        ({"sample_size": 1}, "sample_size"),
        ({"sample_size": 500.0}, "sample_size"),
        ({"sample_from": "test"}, "sample_from"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"class_names": "cat"}, "class_names"),
        ({"layer": ""}, "layer"),
        ({"projector": "yes"}, "projector"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        EmbeddingCallback(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "layer,message",
    [("head.9", r"`layer` pattern 'head.9' matched no module; closest"), ("head.*", r"matches 4 modules")],
)
def test_a_layer_that_is_not_one_module_is_a_one_line_error_before_training(tmp_path, layer, message):
    trainer = make_trainer(tmp_path, [EmbeddingCallback(layer=layer)], max_epochs=1)
    with pytest.raises(ValueError, match=message) as err:
        trainer.fit(Classifier())
    assert str(err.value).startswith("EmbeddingCallback") and "\n" not in str(err.value)
    assert trainer.global_step == 0


def test_the_default_sample_takes_a_small_validation_set_whole(tmp_path):
    trainer = make_trainer(tmp_path, [EmbeddingCallback()], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier())
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    assert d["n"] == N_VAL == len(d["coords"]) and d["labels"] == Images(N_VAL, 1).y.tolist()

"""ActivationMapCallback in real CPU trainers: files, TensorBoard, hooks, modes, numbers, rules, errors, state."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import nn
from torch.nn import functional as F

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.core.activation_stats import STATS
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, TinyMLP, make_trainer, read_events

LAYERS = ["conv1", "act1", "conv2"]


class Probe(Callback):
    """Records what a training step sees: hooks on the model and each module's train flag."""

    def __init__(self, freeze: str | None = None) -> None:
        self.freeze = freeze
        self.seen: list[tuple[int, dict[str, bool]]] = []

    def on_train_start(self, trainer, pl_module):
        if self.freeze:  # a submodule kept in eval mode inside a training model (a frozen layer)
            pl_module.get_submodule(self.freeze).eval()

    def _look(self, pl_module):
        self.seen.append((hook_count(pl_module), {n: m.training for n, m in pl_module.named_modules()}))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._look(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._look(pl_module)  # runs after the activation callback's own on_train_batch_end


def viz_files(cb: ActivationMapCallback) -> list[str]:
    return sorted(p.name for p in cb.viz_dir.iterdir() if not p.name.startswith("."))


def eval_outputs(model: TinyCNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the hooked layers pass on, computed independently (no hooks) in eval mode: each convolution's
    ReLU output (the activation module after it), and act1's own output."""
    model.eval()
    with torch.no_grad():
        a1 = torch.relu(model.conv1(x))
        a2 = torch.relu(model.conv2(a1))
    return {"conv1": a1, "act1": a1, "conv2": a2}


OF = {
    "conv1": "output of act1 (ReLU) after conv1",
    "act1": "output of act1 (ReLU)",
    "conv2": "output of act2 (ReLU) after conv2",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("activation_map")
    data = RandomImages(n=64, batch_size=16)
    model = TinyCNN()
    cb = ActivationMapCallback(layers=LAYERS, sample_size=6, sample_index=2, max_channels=4)
    probe = Probe(freeze="act1")
    trainer = make_trainer(tmp, [cb, probe], max_epochs=2)
    trainer.fit(model, data)
    return trainer, cb, probe, model, data


def test_pngs_and_data_per_capture(run):
    trainer, cb, *_ = run
    assert trainer.global_step == 8  # 4 steps per epoch, captures at epoch ends: steps 4 and 8
    assert str(cb.viz_dir).startswith(trainer.log_dir)
    files = viz_files(cb)
    assert files == [
        "maps_step000004.npz",
        "maps_step000004.png",
        "maps_step000008.npz",
        "maps_step000008.png",
        "stats.json",
        "stats.png",
    ]
    for name in ("maps_step000004.png", "maps_step000008.png", "stats.png"):
        with Image.open(cb.viz_dir / name) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 200
    saved = json.loads((cb.viz_dir / "stats.json").read_text())
    assert saved["layers"]["conv1"]["step"] == [4, 8]


def test_tensorboard_images_and_scalars_at_capture_steps(run):
    trainer, cb, *_ = run
    acc = read_events(trainer.logger.log_dir)
    images = acc.Tags()["images"]
    assert "viz/activation_map/maps" in images and "viz/activation_map/stats" in images
    assert [e.step for e in acc.Images("viz/activation_map/maps")] == [4, 8]
    assert [e.step for e in acc.Images("viz/activation_map/stats")] == [4, 8]
    for layer in LAYERS:
        for stat in ("mean", "std", "dead_fraction"):
            events = acc.Scalars(f"activation/{layer}/{stat}")
            assert [e.step for e in events] == [4, 8]
            np.testing.assert_allclose([e.value for e in events], cb.history[layer][stat], rtol=1e-6)
    # saturation is defined for bounded activations only: none of these layers is one
    assert not any(t.endswith("saturated_fraction") for t in acc.Tags()["scalars"])


def test_no_hook_outside_captures_and_modes_unchanged(run):
    _, _, probe, model, _ = run
    assert len(probe.seen) == 16  # 8 batches, seen at start and end
    assert all(count == 0 for count, _ in probe.seen)
    for _, flags in probe.seen:
        assert flags.pop("act1") is False  # the frozen module stayed frozen through the captures
        assert all(flags.values()), flags  # every other module trained in train mode
    assert hook_count(model) == 0


def test_recorded_stats_equal_an_independent_computation(run):
    _, cb, _, model, data = run
    assert cb.sample_indices == list(range(6))
    x = data.x[:6]  # the first examples of the validation dataset
    outs = eval_outputs(model, x)  # the final weights are the ones the last capture (step 8) saw
    for name, out in outs.items():
        a = out.double()
        hist = cb.history[name]
        assert hist["step"] == [4, 8]
        np.testing.assert_allclose(hist["mean"][-1], a.mean().item(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(hist["std"][-1], a.std(correction=0).item(), rtol=1e-6)
        np.testing.assert_allclose(hist["dead_fraction"][-1], (a == 0).double().mean().item(), rtol=1e-9)
        assert np.isnan(hist["saturated_fraction"][-1])
        assert hist["ran"] == [True, True]
        assert cb.layer_of[name] == OF[name]
    for name in ("conv1", "conv2"):  # ReLU outputs: the checks above are not vacuous
        assert cb.history[name]["dead_fraction"][-1] > 0.1
    saved = json.loads((cb.viz_dir / "stats.json").read_text())
    assert saved["of"] == OF


def test_channels_follow_the_mean_activation_rule(run):
    _, cb, _, model, data = run
    saved = np.load(cb.viz_dir / "maps_step000008.npz")
    assert list(saved["layer_names"]) == LAYERS
    assert int(saved["sample_index"]) == 2
    np.testing.assert_array_equal(saved["input"], data.x[2].numpy())
    assert saved["layer_shows"].tolist() == [OF[n] for n in LAYERS]  # the maps are what each passes on
    assert str(saved["color_scale"]) == "absolute"
    outs = eval_outputs(model, data.x[:6])
    for j, name in enumerate(LAYERS):
        example = outs[name][2]  # [C, H, W] of the shown example
        means = example.flatten(1).mean(1)
        expected = torch.sort(means, descending=True, stable=True).indices[:4]
        np.testing.assert_array_equal(saved[f"channels_{j}"], expected.numpy())
        assert np.all(np.diff(saved[f"scores_{j}"]) <= 0)  # highest mean first
        np.testing.assert_allclose(saved[f"maps_{j}"], example[expected].numpy(), rtol=1e-5, atol=1e-6)
    assert saved["maps_2"].shape == (4, 8, 8)  # conv2 has 6 channels: capped at max_channels=4


def test_every_n_steps_schedule(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_VIZ_REDRAW_S", "0")  # every capture's picture drawn, not one per 6 s
    cb = ActivationMapCallback(every_n_epochs=None, every_n_steps=3, sample_size=4)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages(n=64, batch_size=16))
    # 8 optimizer steps: steps 0, 3 and 6 are due (the model before any update, after 3 and after 6)
    assert [f for f in viz_files(cb) if f.endswith(".png")] == [
        "maps_step000000.png",
        "maps_step000003.png",
        "maps_step000006.png",
        "stats.png",
    ]
    assert list(cb.history) == ["conv1", "conv2"]  # default: the convolution layers
    acc = read_events(trainer.logger.log_dir)
    assert [e.step for e in acc.Images("viz/activation_map/maps")] == [0, 3, 6]


def test_model_without_convolutions_uses_linear_layers_and_says_so(tmp_path, caplog):
    data = RandomImages(n=32, batch_size=16)
    log = logging.getLogger("lightning.pytorch")  # Lightning's console logger (does not propagate)
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    fallback = ActivationMapCallback()
    tanh = ActivationMapCallback(
        layers=["net.2"], saturation_threshold=0.5, output_dir=str(tmp_path / "tanh")
    )
    model = TinyMLP()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(tmp_path, [fallback, tanh], max_epochs=1).fit(model, data)
    finally:
        log.removeHandler(caplog.handler)
    assert not [w for w in caught if issubclass(w.category, VizWarning)]  # an information line, no warning
    said = [r.getMessage() for r in caplog.records if "no Conv1d/Conv2d/Conv3d layer" in r.getMessage()]
    assert len(said) == 1 and "Linear layers ['net.1', 'net.3']" in said[0]
    assert list(fallback.history) == ["net.1", "net.3"]
    assert viz_files(fallback) == [
        "heatmaps_step000002.json",
        "heatmaps_step000002.png",
        "stats.json",
        "stats.png",
    ]
    saved = json.loads((fallback.viz_dir / "heatmaps_step000002.json").read_text())
    assert [la["name"] for la in saved["layers"]] == ["net.1", "net.3"]
    assert np.asarray(saved["layers"][0]["values"]).shape == (8, 16)  # examples x features
    # saturation of the Tanh layer, against an independent computation on the same sample
    model.eval()
    with torch.no_grad():
        out = model.net[:3](data.x[:8])
    expected = (out.abs() >= 0.5).double().mean().item()
    assert 0 < expected < 1
    assert tanh.history["net.2"]["saturated_fraction"] == pytest.approx([expected])
    assert viz_files(tanh) == [
        "heatmaps_step000002.json",
        "heatmaps_step000002.png",
        "stats.json",
        "stats.png",
    ]


def test_sample_size_larger_than_dataset_is_rejected_at_setup(tmp_path):
    cb = ActivationMapCallback(sample_size=40)
    trainer = make_trainer(tmp_path, [cb])
    with pytest.raises(ValueError, match=r"`sample_size` is 40 but the val dataset has only 32 examples"):
        trainer.fit(TinyCNN(), RandomImages(n=64))
    assert trainer.global_step == 0


def test_bad_layer_pattern_lists_closest_names(tmp_path):
    cb = ActivationMapCallback(layers=["conv1", "conv3"])
    trainer = make_trainer(tmp_path, [cb])
    with pytest.raises(ValueError, match=r"`layers` pattern 'conv3' matched no module; closest: ") as info:
        trainer.fit(TinyCNN(), RandomImages(n=32))
    closest = str(info.value).split("closest: ")[1]
    assert "'conv1'" in closest and "'conv2'" in closest
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_epochs": -1}, "every_n_epochs"),
        ({"sample_size": 0}, "sample_size"),
        ({"max_channels": 0}, "max_channels"),
        ({"channel_order": "max"}, "channel_order"),
        ({"sample_from": "test"}, "sample_from"),
        ({"sample_index": 8}, "sample_index"),
        ({"saturation_threshold": 0.0}, "saturation_threshold"),
        ({"layers": []}, "layers"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        ActivationMapCallback(**kwargs)


class EvalBrokenCNN(TinyCNN):
    """Trains normally; its eval-mode forward (the capture) raises after conv1 and act1."""

    hooks_seen: list[int]

    def forward(self, x):
        if not self.training:
            self.hooks_seen.append(hook_count(self))
            self.act1(self.conv1(x))
            raise RuntimeError("eval forward is broken")
        return super().forward(x)


def test_failing_capture_warns_once_and_training_continues(tmp_path):
    model = EvalBrokenCNN()
    model.hooks_seen = []
    cb = ActivationMapCallback()  # conv1 and conv2; no val data: the sample comes from train
    probe = Probe()
    trainer = make_trainer(tmp_path, [cb, probe], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, RandomImages(n=64, batch_size=16, with_val=False))
    assert trainer.global_step == 8 and trainer.state.finished
    ours = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert len(ours) == 1, ours
    assert "failed at step 4" in ours[0] and "['conv1']" in ours[0] and "eval forward is broken" in ours[0]
    # hooks (a pre-hook and a hook on each of the 6 leaf modules) existed during both captures, each of
    # which tried the batch and then the model's example_input_array...
    assert model.hooks_seen == [12, 12, 12, 12]
    assert hook_count(model) == 0  # ...and not after
    assert all(count == 0 and all(flags.values()) for count, flags in probe.seen)
    assert cb.history == {}
    assert not cb.viz_dir.exists() or not list(cb.viz_dir.iterdir())  # nothing was emitted


def test_state_round_trip_and_resume_keep_sample_and_history(tmp_path):
    data = RandomImages(n=64, batch_size=16)
    first = ActivationMapCallback(sample_size=4, sample_index=1)
    first.load_state_dict({"sample_indices": [10, 11, 12, 13], "history": {}, "last_step": -1})
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    make_trainer(tmp_path / "a", [first, ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyCNN(), data)
    state = first.state_dict()
    assert state["sample_indices"] == [10, 11, 12, 13]
    assert state["history"]["conv1"]["step"] == [4] and state["last_step"] == 4

    copied = ActivationMapCallback(sample_size=4, sample_index=1)
    copied.load_state_dict(copy.deepcopy(state))
    np.testing.assert_equal(copied.state_dict(), state)

    resumed = ActivationMapCallback(sample_size=4, sample_index=1)
    trainer = make_trainer(tmp_path / "b", [resumed], max_epochs=2)
    trainer.fit(TinyCNN(), data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.sample_indices == [10, 11, 12, 13]
    assert resumed.history["conv1"]["step"] == [4, 8]
    np.testing.assert_equal(resumed.history["conv2"]["mean"][0], state["history"]["conv2"]["mean"][0])
    saved = np.load(resumed.viz_dir / "maps_step000008.npz")
    np.testing.assert_array_equal(saved["input"], data.x[11].numpy())  # example 1 of the saved sample


def test_load_state_dict_tolerates_missing_keys():
    cb = ActivationMapCallback()
    with pytest.warns(VizWarning, match=r"lacks \['sample_indices', 'history', 'last_step'\]"):
        cb.load_state_dict({})
    assert cb.history == {} and cb.sample_indices is None and cb.last_step == -1
    with pytest.warns(VizWarning, match=r"sample has 3 examples but `sample_size` is 8"):
        cb.load_state_dict({"sample_indices": [5, 6, 7], "history": {}, "last_step": 3})
    assert cb.sample_indices is None and cb.last_step == 3


# ---------------------------------------------------------------------- what a layer passes on
class Listener(Callback):
    """Keeps every record published to other callbacks (as TrainingHealthCallback receives them)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, dict]] = []

    def on_viz_record(self, trainer, source, kind, step, payload):
        self.records.append((kind, step, payload))


class Planted(LightningModule):
    """``dead`` has bias -100 before its non-linearity (every value after it is 0); ``live`` is healthy.
    ``style``: ``"module"`` (nn.ReLU modules), ``"functional"`` (F.relu in forward) or ``"bn"``
    (conv -> BatchNorm -> ReLU module, the BN shifted far negative)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.live = nn.Conv2d(1, 4, 3, padding=1)
        self.dead = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            self.dead.bias.fill_(-100.0)
            self.live.bias.fill_(0.5)  # mostly positive: well under half of its values are dead
        if style == "bn":
            self.bn = nn.BatchNorm2d(4)
            with torch.no_grad():
                self.bn.bias.fill_(-100.0)
        if style != "functional":
            self.act_live, self.act_dead = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(4, 4)

    def passed(self, x):
        """What live and dead pass on, computed independently (no hooks)."""
        live = torch.relu(self.live(x))
        d = self.dead(live)
        return live, torch.relu(self.bn(d) if self.style == "bn" else d)

    def forward(self, x):
        if self.style == "functional":
            h = F.relu(self.dead(F.relu(self.live(x))))
        else:
            h = self.act_live(self.live(x))
            d = self.dead(h)
            h = self.act_dead(self.bn(d) if self.style == "bn" else d)
        return self.fc(h.mean(dim=(2, 3)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # the planted weights stay as planted


EXPECTED_OF = {
    "module": ("output of act_live (ReLU) after live", "output of act_dead (ReLU) after dead"),
    "functional": ("output of F.relu (ReLU) after live", "output of F.relu (ReLU) after dead"),
    "bn": ("output of act_live (ReLU) after live", "output of act_dead (ReLU) after dead"),
}


@pytest.mark.parametrize("style", ["module", "functional", "bn"])
def test_statistics_are_of_what_a_layer_passes_on(tmp_path, style):
    data = RandomImages(n=32, batch_size=16)
    torch.manual_seed(0)
    model = Planted(style)
    cb, listener = ActivationMapCallback(sample_size=8), Listener()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [cb, listener], max_epochs=1).fit(model, data)
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert cb.layer_names == ["live", "dead"]  # the default: the convolutions
    model.eval()
    with torch.no_grad():
        live, dead = (t.double() for t in model.passed(data.x[:8]))
    assert (dead == 0).all() and 0 < (live == 0).double().mean() < 0.5
    hist = cb.history
    assert hist["dead"]["dead_fraction"] == [1.0]
    np.testing.assert_allclose(hist["live"]["dead_fraction"], [(live == 0).double().mean().item()], rtol=1e-9)
    assert hist["live"]["dead_fraction"][0] < 0.5
    np.testing.assert_allclose(hist["live"]["mean"], [live.mean().item()], rtol=1e-6)
    np.testing.assert_allclose(hist["live"]["std"], [live.std(correction=0).item()], rtol=1e-6)
    (kind, step, payload), *_ = listener.records
    assert kind == "activation_stats" and step == 2
    of_live, of_dead = EXPECTED_OF[style]
    assert payload["live"]["of"] == of_live and payload["dead"]["of"] == of_dead
    assert payload["live"]["source"] == payload["dead"]["source"] == "activation"
    assert payload["_activation"] == {"live": "ReLU", "dead": "ReLU"}
    assert payload["_types"] == {"live": "Conv2d", "dead": "Conv2d"}
    # F.relu in forward is recognised as the non-linearity: the same tensor as after an nn.ReLU
    for name, t in (("live", live), ("dead", dead)):
        rec = payload[name]
        assert rec["ran"] is True and rec["nonfinite"] == 0 and rec["values"] == t.numel()
        assert set(rec) == {*STATS, "values", "nonfinite", "ran", "of", "source"}
    # the maps show the same tensor, on an absolute scale: the dead layer's maps are all zero
    with np.load(cb.viz_dir / "maps_step000002.npz") as z:
        assert z["layer_shows"].tolist() == [of_live, of_dead]
        assert not z["maps_1"].any()


class Wide(LightningModule):
    """Trains on any batch; subclasses define forward and the batch."""

    def training_step(self, batch, batch_idx):
        return self(**batch).sum() if isinstance(batch, dict) and "mask" in batch else self._loss(batch)

    def _loss(self, batch):
        x = batch["x"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, keys: tuple[str, str] = ("x", "y")) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.keys = torch.randn(n, 1, 8, 8, generator=g), keys

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        first, second = self.keys
        return {first: self.x[i], second: (self.x[i] > 0).float()}


class KeywordNet(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, pixels, mask):
        return F.relu(self.conv(pixels * mask))

    def training_step(self, batch, batch_idx):
        return self(batch["pixels"], batch["mask"]).sum()


class DictCNN(TinyCNN):
    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["x"]), batch["y"].flatten(1)[:, :4].argmax(1))


def loader(dataset, batch_size=8):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def test_dict_batches_and_keyword_forwards_are_fed_by_the_shared_rule(tmp_path):
    ds = DictDataset()
    cb = ActivationMapCallback(sample_size=4, sample_from="train")
    make_trainer(tmp_path / "dict", [cb], max_epochs=1, logger=False).fit(DictCNN(), loader(ds))
    assert cb._sample.source == "batch keys ['x']"  # forward(x): by keyword
    torch.testing.assert_close(cb._sample.primary(), ds.x[:4])
    assert cb.history["conv1"]["ran"] == [True]

    kw = ActivationMapCallback(sample_size=4, sample_from="train", output_dir=str(tmp_path / "kw"))
    model = KeywordNet()
    make_trainer(tmp_path / "kw", [kw], max_epochs=1).fit(model, loader(DictDataset(keys=("pixels", "mask"))))
    assert kw._sample.source == "batch keys ['pixels', 'mask']"
    x = DictDataset().x[:4]
    model.eval()
    with torch.no_grad():
        # F.relu is forward's last step: recognised as conv's non-linearity, and the label says so
        expected = torch.relu(model.conv(x * (x > 0).float())).double()
    np.testing.assert_allclose(kw.history["conv"]["mean"], [expected.mean().item()], rtol=1e-6)
    assert kw.layer_of["conv"] == "output of F.relu (ReLU) after conv"


class ExampleNet(Wide):
    """forward(a, b=None) that the batches (tensor pairs of another layout) do not fit."""

    def __init__(self, example) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.example_input_array = example

    def forward(self, a, b=None):
        if a.ndim != 4:
            raise RuntimeError("expects images")
        return self.conv(a if b is None else a + b)

    def training_step(self, batch, batch_idx):
        return self.conv(batch[0].view(-1, 1, 4, 4)).sum()


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_example_input_array_is_used_when_the_batch_does_not_fit(tmp_path, kind):
    a = torch.randn(3, 1, 4, 4)
    example = {"tensor": a, "tuple": (a, a), "dict": {"a": a, "b": a}}[kind]
    flat = torch.utils.data.TensorDataset(
        torch.randn(8, 16), torch.randn(8)
    )  # (N, 16) inputs: forward raises
    cb = ActivationMapCallback(sample_size=4, sample_from="train")
    model = ExampleNet(example)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [cb], max_epochs=2, logger=False).fit(model, loader(flat, 4))
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert cb._sample.source == "example_input_array"
    model.eval()
    with torch.no_grad():
        out = model.conv(a if kind == "tensor" else a + a).double()
    np.testing.assert_allclose(cb.history["conv"]["mean"][-1], out.mean().item(), rtol=1e-6)
    assert cb.history["conv"]["step"] == [2, 4]


class Unfeedable(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, images, lengths, extra):
        return self.conv(images)

    def training_step(self, batch, batch_idx):
        return self.conv(batch["pics"]).sum()


def test_a_model_the_rule_cannot_feed_gets_one_warning_naming_example_input_array(tmp_path):
    cb = ActivationMapCallback(sample_size=4, sample_from="train")
    ds = DictDataset(keys=("pics", "other"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [cb], max_epochs=3, logger=False)
        trainer.fit(Unfeedable(), loader(ds))
    assert trainer.state.finished
    ours = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert len(ours) == 1, ours
    assert "example_input_array" in ours[0] and "Unfeedable.forward" in ours[0]
    assert cb.history == {}


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for _ in range(12):
            yield {"x": torch.randn(1, 8, 8, generator=g), "y": torch.zeros(4)}


def test_iterable_dataset_concatenates_the_model_inputs(tmp_path):
    cb = ActivationMapCallback(sample_size=5, sample_from="train")
    make_trainer(tmp_path, [cb], max_epochs=1, logger=False).fit(DictCNN(), loader(Stream(), 2))
    x = torch.cat([b["x"] for b in loader(Stream(), 2)])[:5]
    torch.testing.assert_close(cb._sample.primary(), x)
    assert cb.history["conv1"]["ran"] == [True]


class Signal(LightningModule):
    """A 1-d convolution net on N, C, L signals with F.relu in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(-1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_conv1d_heatmaps_are_channels_by_positions_beside_the_input_signal(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 20, generator=g)
    ds = torch.utils.data.TensorDataset(x, torch.randint(0, 2, (8,), generator=g))
    cb = ActivationMapCallback(sample_size=4, sample_from="train", max_channels=4, sample_index=1)
    model = Signal()
    make_trainer(tmp_path, [cb], max_epochs=1).fit(model, loader(ds, 4))
    saved = json.loads((cb.viz_dir / "heatmaps_step000002.json").read_text())
    (layer,) = saved["layers"]
    assert layer["rows"] == "channel (example 1)" and layer["cols"] == "position"
    assert layer["shows"] == "output of F.relu (ReLU) after conv"  # what conv passes on
    model.eval()
    with torch.no_grad():
        out = torch.relu(model.conv(x[:4]))[1]
    chans = torch.sort(out.mean(1), descending=True, stable=True).indices[:4].tolist()
    assert layer["row_ticks"] == chans  # the real channel numbers
    np.testing.assert_allclose(np.asarray(layer["values"]), out[chans].numpy(), rtol=1e-5, atol=1e-6)
    assert layer["note"] == "4 of 6 channels, highest mean"
    np.testing.assert_allclose(np.asarray(saved["input"]["values"]), x[1].numpy(), rtol=1e-6)
    assert saved["input"]["example"] == 1


def test_an_older_state_without_ran_lists_loads_as_ran():
    cb = ActivationMapCallback()
    old = {
        "step": [4],
        "mean": [0.1],
        "std": [1.0],
        "dead_fraction": [0.2],
        "saturated_fraction": [float("nan")],
    }
    cb.load_state_dict({"sample_indices": None, "history": {"conv1": old}, "last_step": 4})
    assert cb.history["conv1"]["ran"] == [True] and cb.history["conv1"]["nonfinite"] == [0]
    assert cb.state_dict()["history"]["conv1"]["ran"] == [True]

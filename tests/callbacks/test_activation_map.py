"""ActivationMapCallback in real CPU trainers: files, TensorBoard, hooks, modes, numbers, rules, errors, state."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import nn

from lightning_viz.callbacks.activation_map import ActivationMapCallback, feature_record, heatmap_record
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
    """The hooked layers' outputs, computed independently (no hooks) in eval mode."""
    model.eval()
    with torch.no_grad():
        c1 = model.conv1(x)
        a1 = model.act1(c1)
        c2 = model.conv2(a1)
    return {"conv1": c1, "act1": a1, "conv2": c2}


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
    assert cb.history["act1"]["dead_fraction"][-1] > 0.1  # ReLU outputs: the check above is not vacuous


def test_channels_follow_the_mean_activation_rule(run):
    _, cb, _, model, data = run
    saved = np.load(cb.viz_dir / "maps_step000008.npz")
    assert list(saved["layer_names"]) == LAYERS
    assert int(saved["sample_index"]) == 2
    np.testing.assert_array_equal(saved["input"], data.x[2].numpy())
    outs = eval_outputs(model, data.x[:6])
    for j, name in enumerate(LAYERS):
        example = outs[name][2]  # [C, H, W] of the shown example
        means = example.flatten(1).mean(1)
        expected = torch.sort(means, descending=True, stable=True).indices[:4]
        np.testing.assert_array_equal(saved[f"channels_{j}"], expected.numpy())
        assert np.all(np.diff(saved[f"scores_{j}"]) <= 0)  # highest mean first
        np.testing.assert_allclose(saved[f"maps_{j}"], example[expected].numpy(), rtol=1e-5, atol=1e-6)
    assert saved["maps_2"].shape == (4, 8, 8)  # conv2 has 6 channels: capped at max_channels=4


@pytest.mark.parametrize("order", ["mean_activation", "variance", "first"])
def test_channel_rules(order):
    a = torch.zeros(2, 5, 3, 3)
    a[1, 0] = 0.5  # mean 0.5, variance 0
    a[1, 1, 0, 0] = 9.0  # mean 1.0, largest variance
    a[1, 3] = 2.0  # mean 2.0, variance 0
    a[1, 4] = torch.arange(9.0).reshape(3, 3)  # mean 4.0, variance 6.67
    rec = feature_record("c", nn.Conv2d(1, 5, 1), a, 1, 3, order)
    expected = {"mean_activation": [4, 3, 1], "variance": [1, 4, 0], "first": [0, 1, 2]}[order]
    assert rec["channels"].tolist() == expected
    np.testing.assert_array_equal(rec["maps"], a[1, expected].numpy())
    assert rec["total_channels"] == 5 and rec["kind"] == "Conv2d"


def test_heatmap_records_are_capped():
    a = torch.randn(80, 300)
    rec = heatmap_record("fc", nn.Linear(3, 300), a, 0, 4, "first")
    assert rec["values"].shape == (64, 128)
    assert rec["note"] == "64 of 80 rows, first 128 of 300 columns"
    seq = torch.randn(4, 7, 5)
    rec = heatmap_record("rnn", nn.Identity(), seq, 2, 4, "first")
    np.testing.assert_array_equal(rec["values"], seq[2].numpy())
    conv1d = torch.randn(4, 6, 10)
    conv1d[1, 5] += 10
    rec = heatmap_record("c1", nn.Conv1d(1, 6, 1), conv1d, 1, 2, "mean_activation")
    assert rec["values"].shape == (2, 10) and rec["rows"].startswith("channels [5,")


def test_every_n_steps_schedule(tmp_path):
    cb = ActivationMapCallback(every_n_epochs=None, every_n_steps=3, sample_size=4)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages(n=64, batch_size=16))
    assert [f for f in viz_files(cb) if f.endswith(".png")] == [
        "maps_step000003.png",
        "maps_step000006.png",
        "stats.png",
    ]
    assert list(cb.history) == ["conv1", "conv2"]  # default: the convolution layers
    acc = read_events(trainer.logger.log_dir)
    assert [e.step for e in acc.Images("viz/activation_map/maps")] == [3, 6]


def test_model_without_convolutions_uses_linear_layers_and_says_so(tmp_path):
    data = RandomImages(n=32, batch_size=16)
    fallback = ActivationMapCallback()
    tanh = ActivationMapCallback(
        layers=["net.2"], saturation_threshold=0.5, output_dir=str(tmp_path / "tanh")
    )
    model = TinyMLP()
    with pytest.warns(VizWarning, match=r"no Conv1d/Conv2d/Conv3d layer.*Linear layers \['net.1', 'net.3'\]"):
        make_trainer(tmp_path, [fallback, tanh], max_epochs=1).fit(model, data)
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
    assert model.hooks_seen == [2, 2]  # hooks existed during both captures...
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

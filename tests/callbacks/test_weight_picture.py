"""WeightPictureCallback (#18 item 4): the filter grid holds the first convolution's own weights (grey,
RGB, or the mean over input channels), a Linear matrix larger than the cap is shown as exact block means,
and the pictures are a series over training; checked against the model's weights read by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from torch import nn

from lightning_viz import WeightPictureCallback
from tests.helpers import RandomImages, TinyCNN, TinyMLP, make_trainer


class KeepWeights(Callback):
    """The test's own copy of every weight at each epoch end (nothing changes them between the hooks)."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, np.ndarray]] = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.at[trainer.global_step] = {
            n: p.detach().clone().numpy() for n, p in pl_module.named_parameters()
        }


class WideInput(TinyCNN):
    """First convolution with 5 input channels (the input repeated), a Linear of 300 x 24 after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Sequential(nn.Linear(24, 300), nn.ReLU(), nn.Linear(300, 4))

    def forward(self, x):
        return super().forward(x.repeat(1, 5, 1, 1))


def _pictures(tmp_path):
    viz = tmp_path / "tb" / "version_0" / "viz" / "weight_picture"
    return {int(p.stem[-6:]): json.loads(p.read_text()) for p in sorted(viz.glob("weights_step*.json"))}, viz


@pytest.mark.parametrize(
    ("model", "channels"), [(TinyCNN, "one input channel"), (WideInput, "mean over 5 input channels")]
)
def test_filters_and_matrices_are_the_weights(tmp_path, model, channels):
    keep = KeepWeights()
    trainer = make_trainer(tmp_path, [keep, WeightPictureCallback(max_size=60, max_filters=3)], max_epochs=2)
    trainer.fit(model(), datamodule=RandomImages())
    pictures, viz = _pictures(tmp_path)
    assert sorted(pictures) == sorted(keep.at) == [4, 8]  # one per epoch: a series over training
    for step, data in pictures.items():
        w = keep.at[step]["conv1.weight"]
        f = data["filters"]
        assert f["name"] == "conv1" and f["shape"] == list(w.shape) and f["channels"] == channels
        want = w[:3, 0] if w.shape[1] == 1 else w[:3].mean(1)
        np.testing.assert_allclose(np.asarray(f["tiles"]), want, rtol=1e-6, atol=1e-7)
        mats = {m["name"]: m for m in data["matrices"]}
        if model is WideInput:
            big = keep.at[step]["fc.0.weight"]  # 300 x 24 -> 60 x 24 means over 5 x 1 blocks
            assert mats["fc.0"]["block"] == [5, 1] and mats["fc.0"]["shape"] == [300, 24]
            np.testing.assert_allclose(
                np.asarray(mats["fc.0"]["values"]), big.reshape(60, 5, 24).mean(1), rtol=1e-5
            )
            small = keep.at[step]["fc.2.weight"]  # 4 x 300 -> 4 x 60
            np.testing.assert_allclose(
                np.asarray(mats["fc.2"]["values"]), small.reshape(4, 60, 5).mean(2), rtol=1e-5
            )
        else:
            assert mats["fc"]["block"] == [1, 1]
            np.testing.assert_allclose(
                np.asarray(mats["fc"]["values"]), keep.at[step]["fc.weight"], rtol=1e-6
            )
        assert (viz / f"weights_step{step:06d}.png").is_file()


def test_rgb_filters_are_drawn_in_colour(tmp_path):
    class RGB(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return super().forward(x.repeat(1, 3, 1, 1))

    keep = KeepWeights()
    trainer = make_trainer(tmp_path, [keep, WeightPictureCallback(linear_layers=[])], max_epochs=1)
    trainer.fit(RGB(), datamodule=RandomImages())
    pictures, _ = _pictures(tmp_path)
    (data,) = pictures.values()
    assert data["filters"]["channels"] == "RGB" and data["matrices"] == []
    tiles = np.asarray(data["filters"]["tiles"])
    np.testing.assert_allclose(tiles, keep.at[4]["conv1.weight"].transpose(0, 2, 3, 1), rtol=1e-6)
    from lightning_viz.render.weights import filter_grid

    grid = filter_grid(tiles)
    assert grid.shape == (2 * 3 + 3, 2 * 3 + 3, 3) and grid.min() == 0.0 and grid.max() == 1.0


def test_a_model_without_convolutions_gets_its_matrices(tmp_path):
    trainer = make_trainer(tmp_path, [WeightPictureCallback()], max_epochs=1)
    trainer.fit(TinyMLP(), datamodule=RandomImages())
    pictures, _ = _pictures(tmp_path)
    (data,) = pictures.values()
    assert data["filters"] is None and [m["name"] for m in data["matrices"]] == ["net.1", "net.3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_epochs": None}, "at least one of `every_n_steps` and `every_n_epochs`"),
        ({"max_size": 1}, "`max_size`"),
        ({"filters": ""}, "`filters` must be a module name"),
        ({"linear_layers": "fc"}, "`linear_layers` must be null"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_callback(kwargs, message):
    with pytest.raises(ValueError, match="WeightPictureCallback") as err:
        WeightPictureCallback(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_filters_name_that_is_no_convolution_names_the_closest(tmp_path):
    trainer = make_trainer(tmp_path, [WeightPictureCallback(filters="conv3")], max_epochs=1)
    with pytest.raises(ValueError, match=r"`filters` pattern 'conv3' matched no module; closest: .*'conv1'"):
        trainer.fit(TinyCNN(), datamodule=RandomImages())


def test_nothing_is_captured_between_due_epochs(tmp_path):
    trainer = make_trainer(tmp_path, [WeightPictureCallback(every_n_epochs=2)], max_epochs=3)
    trainer.fit(TinyCNN(), datamodule=RandomImages())
    pictures, _ = _pictures(tmp_path)
    assert sorted(pictures) == [8]
    assert torch.is_grad_enabled()

"""NaN/Inf in activations and gradients: counted per layer, reported once (first layer and step), shown on
the figures, and the statistics and histograms of the finite values still computed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch
from torch import nn

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.warn import VizWarning
from lightning_viz.render import close_figure
from lightning_viz.render.activation_stats import render_activation_stats
from lightning_viz.render.activations import render_feature_maps
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events


class Poison(nn.Module):
    """Identity in training; from step ``start`` on, in eval mode, NaN and Inf at fixed places."""

    def __init__(self, owner: list, start: int) -> None:
        super().__init__()
        self.owner, self.start = owner, start

    def forward(self, x):
        if self.training or self.owner[0].global_step < self.start:
            return x
        x = x.clone()
        x[:, 0, 0, :3] = float("nan")  # 3 per example in channel 0
        x[:, 1, 2, 2] = float("inf")
        return x


class PoisonedCNN(TinyCNN):
    def __init__(self, start: int) -> None:
        super().__init__()
        self.act2 = nn.Sequential(nn.ReLU(), Poison([self], start))

    def on_after_backward(self):
        if self.global_step == 3:  # an infinite gradient at step 3, seen before the optimizer step
            self.fc.bias.grad[0] = float("inf")


def viz_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def test_nonfinite_activations_and_gradients_are_counted_reported_once_and_drawn(tmp_path):
    acts = ActivationMapCallback(
        layers=["conv1", "act2", "fc"], every_n_steps=2, every_n_epochs=1, sample_size=4
    )
    hist = WeightHistogramCallback(every_n_steps=1, bins=8, log="gradients")
    model = PoisonedCNN(start=4)
    trainer = make_trainer(tmp_path, [acts, hist], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, RandomImages(n=96, batch_size=16, with_val=False))  # 6 steps
    assert trainer.state.finished and trainer.global_step == 6
    ours = viz_warnings(caught)
    act_msgs = [m for m in ours if m.startswith("ActivationMapCallback") and "NaN/Inf" in m]
    grad_msgs = [m for m in ours if m.startswith("WeightHistogramCallback") and "NaN/Inf" in m]
    assert len(act_msgs) == 1 and "step 4" in act_msgs[0] and "'act2'" in act_msgs[0]
    assert "['act2', 'fc']" in act_msgs[0]  # the NaN spread to fc
    assert len(grad_msgs) == 1 and "step 3 in gradients/fc.bias" in grad_msgs[0]

    per_layer = acts.history
    # steps 0, 2 and 4 (before their batches), and the epoch end (the final model, after 6 updates)
    assert per_layer["act2"]["step"] == [0, 2, 4, 6]
    assert per_layer["act2"]["nonfinite"] == [0, 0, 4 * 4, 4 * 4]  # 4 examples x (3 NaN + 1 Inf)
    assert per_layer["conv1"]["nonfinite"] == [0, 0, 0, 0]
    # the statistics of the finite values, against an independent computation
    model.eval()
    with torch.no_grad():
        a = model.act2[0](model.conv2(model.act1(model.conv1(RandomImages(n=96).x[:4])))).double()
    keep = np.ones(a.shape, dtype=bool)
    keep[:, 0, 0, :3] = False
    keep[:, 1, 2, 2] = False
    finite = a.numpy()[keep]
    np.testing.assert_allclose(per_layer["act2"]["mean"][-1], finite.mean(), rtol=1e-6)
    np.testing.assert_allclose(per_layer["act2"]["std"][-1], finite.std(), rtol=1e-6)
    np.testing.assert_allclose(per_layer["act2"]["dead_fraction"][-1], (finite == 0).mean(), rtol=1e-9)

    events = read_events(trainer.logger.log_dir)
    assert [(e.step, e.value) for e in events.Scalars("activation/act2/nonfinite")] == [(4, 16.0), (6, 16.0)]
    assert next((e.step, e.value) for e in events.Scalars("nonfinite/gradients/fc.bias")) == (3, 1.0)

    saved = json.loads((acts.viz_dir / "stats.json").read_text())
    assert saved["layers"]["act2"]["nonfinite"] == [0, 0, 16, 16]
    with np.load(acts.viz_dir / "maps_step000004.npz") as z:
        names = z["layer_names"].tolist()
        assert int(z["layer_nonfinite"][names.index("act2")]) > 0
        assert int(z["layer_nonfinite"][names.index("conv1")]) == 0


def test_figures_mark_nonfinite_values_and_draw_the_finite_ones():
    maps = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    maps[0, 0, 0] = np.nan
    maps[1, 1, 1] = np.inf
    layer = {
        "name": "c",
        "kind": "Conv2d",
        "maps": maps,
        "channels": np.array([0, 1]),
        "total_channels": 2,
        "order": "first",
        "nonfinite": 2,
    }
    fig = render_feature_maps({"step": 3, "layers": [layer]})
    try:
        ax = fig.axes[0]
        assert "2 NaN/Inf values" in ax.get_title()
        grid = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        finite = grid[np.isfinite(grid) & (grid <= 1)]
        assert finite.min() == 0.0 and finite.max() == 1.0  # each tile scaled on its finite values
        assert np.isnan(grid).sum() == 2
    finally:
        close_figure(fig)
    hist = {
        "step": [1, 2, 3],
        "mean": [0.1, 0.2, 0.3],
        "std": [1.0, 1.0, 1.0],
        "dead_fraction": [0.0, 0.1, 0.2],
        "saturated_fraction": [np.nan] * 3,
        "nonfinite": [0, 5, 0],
    }
    fig = render_activation_stats({"layers": {"conv1": hist, "fc": {**hist, "nonfinite": [0, 0, 0]}}})
    try:
        note = [t.get_text() for t in fig.axes[0].texts]
        assert any("first in conv1 at step 2" in t for t in note)
        assert len(fig.axes[0].lines) == 2  # the finite statistics are still drawn
        assert all(len(ax.patches) == 1 for ax in fig.axes)  # one shaded step per panel
    finally:
        close_figure(fig)

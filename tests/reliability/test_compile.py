"""torch.compile: a compiled model with a validation loop gets activation maps and statistics, in both forms
(``trainer.fit(torch.compile(model))`` and a model that compiles a submodule). The capture pass runs eagerly
(hooks added after Lightning's loops compiled the graphs would otherwise never fire). Uses dynamo's ``eager``
backend, so no C++ toolchain is needed; skipped where dynamo is unsupported.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer

dynamo = pytest.importorskip("torch._dynamo")
pytestmark = [
    pytest.mark.skipif(not dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported here"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class CompiledInside(TinyCNN):
    """Compiles its feature extractor in __init__: its modules are named ``net._orig_mod.*``."""

    def __init__(self) -> None:
        super().__init__()
        del self.conv1, self.act1, self.conv2, self.act2
        self.net = torch.compile(
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
            backend="eager",
        )

    def forward(self, x):
        return self.fc(self.pool(self.net(x)).flatten(1))


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def fit(tmp_path, model, cb):
    """Fit with a validation loop; the capture passes must compile nothing (they run eagerly)."""
    compiled_in_captures: list[int] = []
    capture = cb.capture

    def counted(trainer, pl_module):
        before = graphs()
        record = capture(trainer, pl_module)
        compiled_in_captures.append(graphs() - before)
        return record  # the base class reduces and draws it

    cb.capture = counted
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, RandomImages(n=32, batch_size=16))  # with a validation loop
    assert trainer.state.finished
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert compiled_in_captures == [0, 0]  # no graph compiled for the hooks, no recompilation
    assert graphs() > 0  # the training and validation steps did run compiled
    return trainer


def test_fit_of_a_compiled_module_gets_maps_and_statistics(tmp_path):
    dynamo.reset()
    torch.manual_seed(0)
    model = TinyCNN()
    cb = ActivationMapCallback(sample_size=4)
    trainer = fit(tmp_path, torch.compile(model, backend="eager"), cb)
    assert trainer.lightning_module is model and model._compiler_ctx is not None
    assert cb.layer_names == ["conv1", "conv2"]
    assert cb.history["conv1"]["step"] == [2, 4] and cb.history["conv1"]["ran"] == [True, True]
    assert sorted(p.name for p in cb.viz_dir.glob("maps_step*.png")) == [
        "maps_step000002.png",
        "maps_step000004.png",
    ]
    model.eval()
    with torch.no_grad():
        a = torch.relu(model.conv1(RandomImages(n=32).x[:4])).double()
    np.testing.assert_allclose(cb.history["conv1"]["mean"][-1], a.mean().item(), rtol=1e-6)
    assert cb.layer_of["conv1"] == "output of act1 (ReLU) after conv1"
    assert hook_count(model) == 0
    dynamo.reset()


def test_a_compiled_submodule_keeps_the_names_users_expect(tmp_path):
    dynamo.reset()
    torch.manual_seed(0)
    model = CompiledInside()
    assert "net._orig_mod.0" in dict(model.named_modules())
    default = ActivationMapCallback(sample_size=4)
    fit(tmp_path / "default", model, default)
    assert default.layer_names == ["net.0", "net.2"]
    assert default.history["net.0"]["ran"] == [True, True]
    assert default.layer_of["net.0"] == "output of net.1 (ReLU) after net.0"
    with np.load(default.viz_dir / "maps_step000004.npz") as z:
        assert z["layer_names"].tolist() == ["net.0", "net.2"]
    model.eval()
    with torch.no_grad():
        a = torch.relu(model.net._orig_mod[0](RandomImages(n=32).x[:4])).double()
    np.testing.assert_allclose(default.history["net.0"]["dead_fraction"][-1], (a == 0).double().mean().item())

    patterns = ActivationMapCallback(sample_size=4, layers=["net.2"], output_dir=str(tmp_path / "p"))
    fit(tmp_path / "patterns", CompiledInside(), patterns)
    assert patterns.layer_names == ["net.2"] and patterns.history["net.2"]["step"] == [2, 4]
    dynamo.reset()

"""``trainer.fit(torch.compile(model))`` with a validation loop and the core callbacks on, on the CPU
(dynamo's ``eager`` backend: no C++ toolchain needed) and on CUDA (inductor, the default backend: Triton
kernels). The activation statistics equal an eager recomputation on the sample batch, the weight histograms
equal ``numpy.histogram`` of the weights at the logged steps, no capture compiles a graph and no hook is
left behind. (``tests/reliability/test_compile.py`` covers a compiled submodule and layer names, on the CPU.)
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

import lightning_viz as lv
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.warn import VizWarning
from tests.callbacks.test_weight_histogram_optimizers import check_histograms
from tests.gpu.devices import DEVICES, device_trainer, trained_on
from tests.helpers import RandomImages, TinyCNN, read_events

dynamo = pytest.importorskip("torch._dynamo")
pytestmark = [
    pytest.mark.skipif(not dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported here"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
BACKEND = {"cpu": "eager", "cuda": "inductor"}


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class WeightCopies(Callback):
    """Host copies of every parameter at each optimizer step, keyed by global step."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, np.ndarray]] = {}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.weights[trainer.global_step] = {
            n: p.detach().double().cpu().numpy() for n, p in pl_module.named_parameters()
        }


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_with_validation_and_the_core_callbacks(tmp_path, device):
    dynamo.reset()
    torch.manual_seed(0)
    model = TinyCNN()
    am = lv.ActivationMapCallback(sample_size=4)
    wh = lv.WeightHistogramCallback(every_n_steps=2, bins=16)
    # the nonfinite check alone: findings about this tiny random model would be warnings, not failures
    health = lv.TrainingHealthCallback(every_n_steps=2, checks=["nonfinite"])
    copies = WeightCopies()
    callbacks = [copies, lv.ModelSummaryCallback(), wh, am, lv.CurvePlotCallback(every_n_steps=2), health]
    compiled_in_captures: list[int] = []
    capture = am.capture

    def counted(trainer: Any, pl_module: Any) -> Any:
        before = graphs()
        record = capture(trainer, pl_module)
        compiled_in_captures.append(graphs() - before)
        return record

    am.capture = counted
    trainer = device_trainer(tmp_path, device, callbacks, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(torch.compile(model, backend=BACKEND[device]), RandomImages(n=32, batch_size=16))
    assert trainer.state.finished and trainer.global_step == 4
    assert trained_on(trainer) == {device}
    viz = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert not viz, viz
    assert graphs() > 0, "the training and validation steps did not run compiled"
    assert compiled_in_captures == [0, 0], (
        f"graphs compiled by the activation captures: {compiled_in_captures}"
    )
    assert hook_count(model) == 0
    # activations: the epoch-end captures, against an eager forward on the same 4 validation images
    assert am.layer_names == ["conv1", "conv2"] and am.history["conv1"]["step"] == [2, 4]
    model.to(device).eval()  # Lightning moved it back to the CPU at the end of fit
    with torch.no_grad():
        x = RandomImages(n=32).x[:4].to(device)
        a = torch.relu(model.conv1(x)).double().cpu()
    # (cuDNN may pick another convolution algorithm for the recomputation: a few units' last bits may differ)
    exact = device == "cpu"
    np.testing.assert_allclose(am.history["conv1"]["mean"][-1], a.mean().item(), rtol=1e-5 if exact else 1e-4)
    dead = (a == 0).double().mean().item()
    np.testing.assert_allclose(
        am.history["conv1"]["dead_fraction"][-1], dead, atol=0 if exact else 4 / a.numel()
    )
    # weights: the histograms TensorBoard received at steps 0 and 2, against numpy on the same edges
    acc = read_events(trainer.logger.log_dir)
    for name in ("conv1.weight", "fc.bias"):
        check_histograms(acc, f"weights/{name}", {s: copies.weights[s][name] for s in (0, 2)})
    dynamo.reset()

"""torch.compile: the capture hooks cost one extra compilation (the first capture), never one per logging
step. Uses dynamo's ``eager`` backend, so no C++ toolchain is needed; skipped where dynamo is unsupported.

The hooks and the capture run exactly as ``ActivationMapCallback.capture`` runs them (its own hook function,
eval mode, ``no_grad``), alternating with training steps; a whole ``Trainer`` run on a compiled module
costs ~15 s of dynamo tracing on CPU, so it is left to the README's documented behaviour.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.core.hooks import capture_outputs, hook_count
from tests.helpers import TinyCNN

dynamo = pytest.importorskip("torch._dynamo")
pytestmark = [
    pytest.mark.skipif(not dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported here"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_capture_on_a_compiled_model_compiles_once_not_every_logging_step():
    dynamo.reset()
    torch.manual_seed(0)
    model = TinyCNN()
    compiled = torch.compile(model, backend="eager")
    cb = ActivationMapCallback(sample_size=4)
    layers = {n: m for n, m in model.named_modules() if n in ("conv1", "conv2")}
    x = torch.randn(4, 1, 8, 8)
    seen = []
    for _ in range(4):  # a training step, then a logging step's capture (eval, no_grad, hooks)
        compiled(x).sum().backward()
        cb._acc, cb._pictures = {}, None
        with torch.no_grad(), capture_outputs(model, layers, cb._on_output):
            compiled(x)
        assert hook_count(model) == 0 and model.training
        seen.append(graphs())
    assert seen[0] > 0 and seen[1:] == [seen[0]] * 3, seen  # no recompilation after the first capture
    # the captured sums equal those of the uncompiled model
    with torch.no_grad():
        model.eval()
        a = model.conv1(x).double()
        model.train()
    np.testing.assert_allclose(cb._acc["conv1"][1].item(), a.sum().item(), rtol=1e-5)
    dynamo.reset()

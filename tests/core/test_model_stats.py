"""Parameter counts of core/model_stats.py: each Parameter object once, frozen ones listed by name."""

from __future__ import annotations

from torch import nn

from lightning_viz.core.model_stats import FROZEN_LISTED, count_parameters, frozen_section
from tests.callbacks.test_model_summary import TiedFrozen


def test_count_parameters_dedupes_tied_and_splits_frozen():
    model = TiedFrozen()
    counts = count_parameters(model)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.frozen == 40  # conv1: 4*1*3*3 + 4
    # The naive sum over modules counts the tied weight twice; ours must not.
    naive = sum(p.numel() for m in model.children() for p in m.parameters())
    assert naive - counts.total == 24 * 24
    assert counts.blocks["conv1"] == [0, 40]
    assert counts.blocks["tied"] == [24, 0]  # only its bias: the weight belongs to `head`, seen first
    assert sum(t + f for t, f in counts.blocks.values()) == counts.total


def test_frozen_parameters_listed_with_a_cap():
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(7)], nn.Linear(3, 1))
    for layer in model[:6]:
        layer.requires_grad_(False)
    counts = count_parameters(model)
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert [f["name"] for f in counts.frozen_params] == [n for n, _ in frozen]
    assert counts.frozen == sum(f["numel"] for f in counts.frozen_params) == sum(p.numel() for _, p in frozen)
    (line,) = frozen_section(counts)
    names = ", ".join(n for n, _ in frozen[:FROZEN_LISTED])
    assert line == f"Not trained (requires_grad=False): 72 parameters in 12 tensors: {names}, ... and 2 more"
    assert frozen_section(count_parameters(nn.Linear(2, 2))) == []

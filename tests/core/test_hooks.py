"""core.hooks: hooks exist only inside the capture, train/eval flags come back per module, errors name names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_viz.core.hooks import capture_outputs, hook_count, match_modules


class Net(nn.Module):
    def __init__(self, fail_after_first: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(2, 3)
        self.fail_after_first = fail_after_first

    def forward(self, x):
        x = self.features(x)
        if self.fail_after_first:
            raise RuntimeError("boom")
        return self.head(self.drop(x.mean((2, 3))))


def modes(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


def mixed_mode_net(**kw) -> Net:
    net = Net(**kw).train()
    net.features[1].eval()  # a frozen BatchNorm inside a training model
    return net


def test_capture_removes_hooks_and_restores_each_module_mode():
    net = mixed_mode_net()
    before = modes(net)
    seen: list[tuple[str, tuple[int, ...], bool]] = []
    targets = match_modules(net, ["features.*", "head"], argument="layers")
    with capture_outputs(
        net, targets, lambda n, m, out: seen.append((n, tuple(out.shape), m.training))
    ) as ran:
        assert hook_count(net) == len(targets) == 4
        assert all(not flag for flag in modes(net).values())  # eval mode during the capture
        net(torch.randn(2, 1, 5, 5))
    assert hook_count(net) == 0
    assert modes(net) == before
    assert not before["features.1"] and before["features.0"]
    assert ran == ["features.0", "features.1", "features.2", "head"]
    assert [s[:2] for s in seen] == [
        ("features.0", (2, 2, 3, 3)),
        ("features.1", (2, 2, 3, 3)),
        ("features.2", (2, 2, 3, 3)),
        ("head", (2, 3)),
    ]
    assert not any(s[2] for s in seen)


def test_capture_keeps_train_mode_when_asked():
    net = mixed_mode_net()
    with capture_outputs(net, {"head": net.head}, lambda *a: None, eval_mode=False):
        assert net.training and net.drop.training and not net.features[1].training
    assert hook_count(net) == 0


def test_capture_cleans_up_when_the_forward_raises():
    net = mixed_mode_net(fail_after_first=True)
    before = modes(net)
    targets = match_modules(net, ["features.0", "features.2", "head"], argument="layers")
    executed: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), capture_outputs(net, targets, lambda *a: None) as ran:
        executed = ran
        net(torch.randn(2, 1, 5, 5))
    assert hook_count(net) == 0
    assert modes(net) == before
    assert executed == ["features.0", "features.2"]  # what ran before the error, in order


def test_capture_cleans_up_when_the_callback_raises():
    net = mixed_mode_net()
    before = modes(net)

    def explode(name, module, out):
        raise ValueError(f"bad {name}")

    targets = {"features.0": net.features[0], "head": net.head}
    with pytest.raises(ValueError, match=r"bad features\.0"), capture_outputs(net, targets, explode):
        net(torch.randn(2, 1, 5, 5))
    assert hook_count(net) == 0
    assert modes(net) == before


def test_match_modules_follows_model_order_without_duplicates():
    net = Net()
    got = match_modules(net, ["head", "features.*", "features.0"], argument="layers")
    assert list(got) == ["features.0", "features.1", "features.2", "head"]
    assert got["head"] is net.head


def test_match_modules_predicate_filters():
    net = Net()
    got = match_modules(net, ["*"], argument="layers", predicate=lambda n, m: isinstance(m, nn.Conv2d))
    assert list(got) == ["features.0"]


def test_match_modules_error_names_argument_pattern_and_closest_names():
    net = Net()
    with pytest.raises(ValueError) as info:
        match_modules(net, ["features.*", "haed"], argument="my_layers")
    msg = str(info.value)
    assert "`my_layers`" in msg
    assert "'haed'" in msg
    assert "closest" in msg and "'head'" in msg


def test_match_modules_error_when_nothing_qualifies():
    net = Net()
    with pytest.raises(ValueError, match="no module qualifies"):
        match_modules(net, ["*"], argument="layers", predicate=lambda n, m: isinstance(m, nn.LSTM))

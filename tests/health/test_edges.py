"""TrainingHealthCallback at the edges a review and a new user found: no host copy of progress-bar values on
steps it does not examine, an optimizer that never steps, zero-initialised weights, passes that are not the
training forward, compiled submodules, and the NaN locator's pass on every rank alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_viz.callbacks.training_health import TrainingHealthCallback
from lightning_viz.core.model_input import ModelInput
from lightning_viz.core.passed import PassedTracker
from lightning_viz.core.tensor_origin import locate_nonfinite
from tests.health.test_models import Base, FunctionalMLP, fit, loader


class ProgBar(FunctionalMLP):
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss


def count_item_calls(monkeypatch) -> list[int]:
    calls = [0]
    real = torch.Tensor.item

    def item(self):
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "item", item)
    return calls


def test_reading_the_loss_copies_no_progress_bar_value_to_the_host(tmp_path, monkeypatch):
    """Lightning's ``metrics(True)`` turns every prog_bar value into a number (a host sync per step); the
    health callback reads the one monitored tensor instead, so it adds no ``.item()`` per step."""
    calls = count_item_calls(monkeypatch)
    fit(ProgBar(), [], batches=12, data=loader(n=192), root=tmp_path / "a")
    without = calls[0]
    calls[0] = 0
    cb = TrainingHealthCallback(every_n_steps=100, activation_hooks=False, nonfinite_every_step=False)
    fit(ProgBar(), [cb], batches=12, data=loader(n=192), root=tmp_path / "b")
    # step 0 is examined (its losses are copied in one go at the examination); no other step adds a call
    assert calls[0] - without <= 2, (without, calls[0])


class LateDiscriminator(Base):
    """Manual optimization with two optimizers, of which only the first ever steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.g, self.d = nn.Linear(8, 4), nn.Linear(4, 1)

    def forward(self, x):
        return F.relu(self.g(x))

    def training_step(self, batch, batch_idx):
        opt_g, _ = self.optimizers()
        loss = self(batch[0]).square().mean()
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_g.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.g.parameters(), lr=0.01), torch.optim.SGD(self.d.parameters(), lr=0.01)


def test_an_optimizer_that_never_steps_does_not_make_every_batch_examined(tmp_path, monkeypatch):
    attached = []
    real = PassedTracker.attach
    monkeypatch.setattr(PassedTracker, "attach", lambda self: (attached.append(1), real(self)))
    cb = TrainingHealthCallback(every_n_steps=5)
    fit(LateDiscriminator(), [cb], batches=12, data=loader(n=192), root=tmp_path)
    assert len(attached) == 3  # the generator's steps 0, 5, 10


class ZeroToken(Base):
    """A zero-initialised (1, 8) token added to every input, as a ViT's CLS token or positional embedding."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        self.token = nn.Parameter(torch.zeros(1, 8))
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x + self.token)))


def test_a_zero_initialised_weight_is_not_an_update_too_large(tmp_path):
    cb = TrainingHealthCallback()
    _, warned = fit(ZeroToken(), [cb], batches=8, root=tmp_path)
    assert not [f for f in cb.findings if f["check"] == "large_updates"], cb.findings
    assert warned == []


def test_the_own_hooks_ignore_passes_without_gradients():
    """Another callback's capture or the NaN locator (``no_grad``) between the training forward and the
    optimizer step never enters the health callback's training statistics."""
    model = FunctionalMLP()
    seen: list[str] = []
    tracker = PassedTracker(model, {"fc1": model.fc1}, lambda n, m, o, p: seen.append(n), grad_only=True)
    tracker.attach()
    try:
        with torch.no_grad():
            model(torch.randn(4, 8))
        tracker.finish()
        assert seen == []
        model(torch.randn(4, 8))
        tracker.finish()
        assert seen == ["fc1"]
    finally:
        tracker.detach()


class CompiledPart(Base):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(
            nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), backend="eager"
        )
        with torch.no_grad():
            self.net._orig_mod[0].bias.fill_(-100.0)  # dead after the ReLU

    def forward(self, x):
        return self.net(x)


def test_findings_on_a_compiled_submodule_name_the_layers_as_written(tmp_path):
    cb = TrainingHealthCallback()
    fit(CompiledPart(), [cb], batches=2, root=tmp_path)
    layers = {f["layer"] for f in cb.findings}
    assert any(name.startswith("net.0") for name in layers), layers
    assert not any("_orig_mod" in name for name in layers), layers


class NaNs(nn.Module):
    def forward(self, x):
        return x * float("nan")


class Poisoned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), NaNs(), nn.Linear(4, 4)
        self.calls: list[str] = []
        for name in ("a", "b", "c"):
            getattr(self, name).register_forward_hook(lambda m, i, o, name=name: self.calls.append(name))

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_the_locator_runs_the_whole_forward_when_every_rank_must():
    model = Poisoned()
    inp = ModelInput((torch.randn(2, 4),), {}, "batch")
    found = locate_nonfinite(model, inp)
    assert found.name == "b" and model.calls == ["a", "b"]  # one process: it stops at the find
    model.calls.clear()
    found = locate_nonfinite(model, inp, complete=True)  # several: the same forward as every other rank
    assert found.name == "b" and model.calls == ["a", "b", "c"]
    model.calls.clear()
    bad = ModelInput((torch.full((2, 4), float("nan")),), {}, "batch")
    assert locate_nonfinite(model, bad).kind == "batch" and model.calls == []
    found = locate_nonfinite(model, bad, complete=True)
    assert found.kind == "batch" and model.calls == ["a", "b", "c"]

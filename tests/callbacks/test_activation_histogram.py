"""ActivationHistogramCallback (#18 item 3) on models we did not design: dict batches, an output changed in
place by a later ReLU(inplace=True), one activation module called twice, manual optimization with two
optimizers, a layer that never runs, a compiled submodule. Counts are checked against numpy on outputs that
the test's own hooks copy; gradient norms against torch.autograd.grad on a forward pass of the test's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn

from lightning_viz import ActivationHistogramCallback
from tests.helpers import make_trainer, read_events
from tests.users.models import GAN, loader


class Dicts(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(1, 8, 8, generator=g), "label": torch.tensor(i % 3)}


class InplaceNet(LightningModule):
    """conv -> bn -> ReLU(inplace=True) (bn's output is changed in place), one Tanh called twice, a branch
    that never runs; dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.act = nn.Tanh()
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = self.act(self.fc1(x.flatten(1)))
        return self.fc2(self.act(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(Dicts(), batch_size=16)


class CopyOutputs(Callback):
    """The test's own record: every leaf module's outputs, copied at once, on the steps given."""

    def __init__(self, every: int) -> None:
        self.every, self.kept, self.handles = every, {}, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.every:
            return
        step = trainer.global_step

        def make(name):
            def hook(module, args, output):
                self.kept.setdefault((step, name), []).append(output.detach().clone().reshape(-1).numpy())

            return hook

        for name, m in pl_module.named_modules():
            if name and not list(m.children()):
                self.handles.append(m.register_forward_hook(make(name)))

    def on_train_batch_end(self, *args):
        for h in self.handles:
            h.remove()
        self.handles = []


def _check_against(viz, kept) -> int:
    (latest,) = sorted(viz.glob("activations_evolution_step*.npz"))[-1:]
    z = np.load(latest)
    checked = 0
    for name in z["parameters"]:
        for step, edges, counts in zip(z[f"{name}/steps"], z[f"{name}/edges"], z[f"{name}/counts"]):
            values = np.concatenate(kept[(int(step), str(name))])
            np.testing.assert_array_equal(
                counts, np.histogram(values, bins=edges)[0], err_msg=f"{name}@{step}"
            )
            checked += 1
    return checked


def test_counts_equal_numpy_on_the_outputs_also_changed_in_place_and_called_twice(tmp_path):
    copy = CopyOutputs(every=2)
    cb = ActivationHistogramCallback(every_n_steps=2, bins=32)
    trainer = make_trainer(tmp_path, [copy, cb], max_epochs=2)
    trainer.fit(InplaceNet())
    viz = tmp_path / "tb" / "version_0" / "viz" / "activation_histogram"
    z = np.load(sorted(viz.glob("activations_evolution_step*.npz"))[-1])
    assert list(z["parameters"]) == ["conv", "bn", "relu", "act", "fc1", "fc2"]  # not `unused`
    assert list(z["bn/steps"]) == [0, 2, 4, 6]
    # bn's output as bn made it (negative values), not as the in-place ReLU left it
    assert z["bn/edges"][0][0] < 0 and z["relu/edges"][0][0] >= 0
    assert z["act/counts"][0].sum() == 16 * 16 * 2  # both calls of the shared Tanh
    assert _check_against(viz, copy.kept) == 6 * 4
    assert "not run at the latest logging step: unused" in cb.evolution_data()["title"]
    # TensorBoard's own histograms: the same counts
    acc = read_events(tmp_path / "tb" / "version_0")
    events = {e.step: e for e in acc.Histograms("activations/bn")}
    assert sorted(events) == [0, 2, 4, 6]
    np.testing.assert_array_equal(events[6].histogram_value.bucket, z["bn/counts"][-1])
    assert "activations/unused" not in acc.Tags()["histograms"]
    assert (viz / f"{sorted(viz.glob('activations_evolution_step*.npz'))[-1].stem}.png").exists()


def test_gradient_norms_equal_autograd_with_respect_to_each_output(tmp_path):
    torch.manual_seed(0)
    model = InplaceNet()
    first = next(iter(model.train_dataloader()))
    # the independent computation: the same forward pass written out, without in-place ops, at step 0
    ref = InplaceNet()
    ref.load_state_dict(model.state_dict())
    ref.train()
    x = first["image"]
    c = ref.conv(x)
    b = ref.bn(c)
    r = torch.relu(b)
    f1 = ref.fc1(r.flatten(1))
    a1 = torch.tanh(f1)
    a2 = torch.tanh(a1)
    f2 = ref.fc2(a2)
    loss = nn.functional.cross_entropy(f2, first["label"])
    g = dict(
        zip(
            ["conv", "bn", "relu", "fc1", "a1", "a2", "fc2"],
            torch.autograd.grad(loss, [c, b, r, f1, a1, a2, f2]),
        )
    )
    want = {
        "conv": g["conv"].norm(),
        "bn": g["bn"].norm(),
        "relu": g["relu"].norm(),
        "act": (g["a1"].pow(2).sum() + g["a2"].pow(2).sum()).sqrt(),  # both calls
        "fc1": g["fc1"].norm(),
        "fc2": g["fc2"].norm(),
    }
    cb = ActivationHistogramCallback(every_n_steps=4, gradients=True)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(model)
    data = cb.grad_norm_data()
    assert data["steps"] == [0] and data["layers"] == list(want)
    np.testing.assert_allclose(data["values"][0], [float(v) for v in want.values()], rtol=1e-5)
    acc = read_events(tmp_path / "tb" / "version_0")
    (event,) = acc.Scalars("activation_grad_norm/act")
    assert event.step == 0 and event.value == pytest.approx(float(want["act"]), rel=1e-5)
    assert (
        tmp_path / "tb" / "version_0" / "viz" / "activation_histogram" / "activation_grad_norms.png"
    ).exists()


def test_two_optimizers_under_manual_optimization_every_forward_pass_of_the_step(tmp_path):
    copy = CopyOutputs(every=3)
    cb = ActivationHistogramCallback(every_n_steps=3, layers=["generator.*", "discriminator.1"])
    x = torch.randn(48, 1, 8, 8)
    trainer = make_trainer(tmp_path, [copy, cb], max_epochs=1)
    trainer.fit(GAN(), loader(x))
    viz = tmp_path / "tb" / "version_0" / "viz" / "activation_histogram"
    z = np.load(sorted(viz.glob("activations_evolution_step*.npz"))[-1])
    names = list(z["parameters"])
    assert names == [
        "generator.0",
        "generator.1",
        "generator.2",
        "generator.3",
        "generator.4",
        "discriminator.1",
    ]
    # the discriminator's LeakyReLU runs three times a step (fake for G, then real and fake for D)
    assert z["discriminator.1/counts"][0].sum() == 3 * 16 * 4 * 4 * 4
    assert _check_against(viz, copy.kept) > 0


def test_a_compiled_submodule_is_counted_under_the_name_the_user_wrote(tmp_path):
    model = InplaceNet()
    model.fc1 = torch.compile(model.fc1, backend="eager")
    copy = CopyOutputs(every=4)
    cb = ActivationHistogramCallback(every_n_steps=4)
    trainer = make_trainer(tmp_path, [copy, cb], max_epochs=1)
    trainer.fit(model)
    viz = tmp_path / "tb" / "version_0" / "viz" / "activation_histogram"
    z = np.load(sorted(viz.glob("activations_evolution_step*.npz"))[-1])
    assert list(z["parameters"]) == ["conv", "bn", "relu", "act", "fc1", "fc2"]
    copy.kept = {(s, n.replace("._orig_mod", "")): v for (s, n), v in copy.kept.items()}
    assert _check_against(viz, copy.kept) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bins": 1}, "`bins` must be an integer >= 2"),
        ({"layers": "conv"}, "`layers` must be null"),
        ({"every_n_steps": None}, "`every_n_steps` must be"),
        ({"max_history": 1}, "`max_history`"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_callback(kwargs, message):
    with pytest.raises(ValueError, match="ActivationHistogramCallback") as err:
        ActivationHistogramCallback(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_layer_pattern_that_matches_nothing_names_the_closest(tmp_path):
    trainer = make_trainer(tmp_path, [ActivationHistogramCallback(layers=["fc3"])], max_epochs=1)
    with pytest.raises(ValueError, match=r"`layers` pattern 'fc3' matched no module; closest: .*'fc1'"):
        trainer.fit(InplaceNet())


def test_resumed_run_continues_the_history(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(
        tmp_path / "a",
        [ActivationHistogramCallback(every_n_steps=2), ckpt],
        max_epochs=1,
        enable_checkpointing=True,
    )
    first.fit(InplaceNet())
    cb = ActivationHistogramCallback(every_n_steps=2)
    second = make_trainer(tmp_path / "b", [cb], max_epochs=2, enable_checkpointing=True)
    second.fit(InplaceNet(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    steps = next(p["steps"].tolist() for p in cb.evolution_data()["params"] if p["name"] == "conv")
    assert steps == [0, 2, 4, 6]

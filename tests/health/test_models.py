"""TrainingHealthCallback on models and Trainer setups the planted pathologies do not cover: functional
activations, a layer that starts returning NaN, a GAN under manual optimization, BackboneFinetuning, a
transformer, frozen parameters, 16-mixed with a GradScaler."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BackboneFinetuning, Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.training_health import ACTIVATION_NAMES, TrainingHealthCallback
from lightning_viz.core.health_checks import record_entries
from lightning_viz.core.warn import VizWarning

PREFIX = "TrainingHealthCallback: "


def loader(n: int = 64, batch: int = 16, dim: int = 8, classes: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)), batch
    )


class Base(LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


class FunctionalMLP(Base):
    """Linear layers with ``F.relu`` in ``forward``: no activation module to hook."""

    def __init__(self, bias: float = 0.0, lr: float = 0.05) -> None:
        super().__init__(lr)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        nn.init.constant_(self.fc2.bias, bias)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def fit(model, callbacks, *, epochs=1, batches=4, data=None, **kwargs):
    seed_everything(0)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=kwargs.pop("root"),
        **kwargs,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data or loader())
    ours = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    return trainer, [m for m in ours if m.startswith(PREFIX)]


@pytest.mark.parametrize(("with_map", "hooks"), [(False, True), (True, True), (True, False)])
def test_dead_units_behind_a_functional_relu_are_found(tmp_path, with_map, hooks):
    health = TrainingHealthCallback(every_n_steps=2, activation_hooks=hooks, output_dir=str(tmp_path / "h"))
    records: list[dict] = []

    class Records(Callback):
        def on_viz_record(self, trainer, source, kind, step, payload):
            if kind == "activation_stats":
                records.append(payload)

    extra = [
        ActivationMapCallback(every_n_steps=2, every_n_epochs=None, output_dir=str(tmp_path / "a")),
        Records(),
    ]
    _, messages = fit(FunctionalMLP(bias=-100.0), [*extra, health] if with_map else [health], root=tmp_path)
    if not hooks and "source" not in records[0].get("fc2", {}):
        pytest.skip("ActivationMapCallback does not publish the passed-on tensor's source yet")
    dead = [f for f in health.findings if f["check"] == "dead_units"]
    assert [f["layer"] for f in dead] == ["fc2"], health.findings
    assert dead[0]["value"] == 1.0
    tensor = "after F.relu"  # the same from the own hooks and from ActivationMapCallback's records
    assert dead[0]["tensor"] == tensor
    assert next(m for m in messages if m.startswith(f"{PREFIX}dead units: ")).startswith(
        f"{PREFIX}dead units: fc2 ({tensor}) at step "
    ), messages
    assert not [m for m in messages if "unavailable" in m]


def test_records_of_the_passed_on_tensor_are_checked_and_not_run_is_no_finding():
    """ActivationMapCallback's record: stats of the tensor after the non-linearity, with its source."""
    health = TrainingHealthCallback()

    def st(dead, sat=float("nan"), source="activation", ran=True, values=100, nonfinite=0):
        return {
            "mean": float("nan") if not values else 0.1,
            "std": 0.1,
            "dead_fraction": dead,
            "saturated_fraction": sat,
            "values": values,
            "nonfinite": nonfinite,
            "ran": ran,
            "of": "x",
            "source": source,
        }

    payload = {
        "conv1": st(0.95),  # after a ReLU module: dead
        "conv2": st(0.97, source="next_input"),  # after functional code: dead too
        "fc": st(0.99, source="output"),  # the logits, no non-linearity: not judged
        "tanh_layer": st(0.0, 0.8),  # after a Tanh module, bounds known: saturated
        "disc.0": st(float("nan"), ran=False, values=0),  # did not run: no finding, listed
        "_types": {
            "conv1": "Conv2d",
            "conv2": "Conv2d",
            "fc": "Linear",
            "tanh_layer": "Linear",
            "disc.0": "Linear",
        },
        "_activation": {"conv1": "ReLU", "conv2": None, "fc": None, "tanh_layer": "Tanh", "disc.0": "ReLU"},
    }

    def entries_of(payload, step):  # what the callback does with an ActivationMapCallback record
        found, not_run, _ = record_entries(payload, ACTIVATION_NAMES, health._sums.act_of, health._sums.fn_of)
        health.ledger.activations(step, found, not_run, own=False)
        return found

    entries = entries_of(payload, step=3)
    flags = [(e["layer"], e["dead"] is not None, e["saturated"]) for e in entries]
    assert flags == [
        ("conv1", True, None),
        ("conv2", True, None),
        ("fc", False, None),
        ("tanh_layer", True, 0.8),
    ]
    assert health.ledger.not_run == {"disc.0": 3}
    payload["fc"] = st(float("nan"), source="output", values=0, nonfinite=64)  # ran: every output NaN
    assert [e["layer"] for e in entries_of(payload, 4) if e["nonfinite"]] == ["fc"]


def test_healthy_functional_relu_model_gives_no_finding_and_no_warning(tmp_path):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path / "h"))
    acts = ActivationMapCallback(every_n_steps=2, every_n_epochs=None, output_dir=str(tmp_path / "a"))
    _, messages = fit(FunctionalMLP(), [acts, health], epochs=2, root=tmp_path)
    assert health.findings == [] and messages == []
    dead = health.figure_data()["activations"]
    assert set(dead) == {"fc1", "fc2"} and all(0.1 < v < 0.9 for _, v in dead.values())  # fc3: the logits


class Poison(nn.Module):
    """Identity until the owner's global step reaches ``start``; from then on NaN."""

    def __init__(self, owner: list, start: int) -> None:
        super().__init__()
        self.owner, self.start = owner, start

    def forward(self, x):
        return x * float("nan") if self.owner[0].trainer.global_step >= self.start else x


class PoisonedMLP(Base):
    def __init__(self, start: int) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(8, 16), nn.ReLU()
        self.fc2, self.poison, self.fc3 = nn.Linear(16, 16), Poison([self], start), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(self.poison(F.relu(self.fc2(self.act1(self.fc1(x))))))


@pytest.mark.parametrize("start", [2, 3])  # 2: an examined step; 3: between examined steps (every 2)
def test_first_nonfinite_finding_names_the_layer_in_forward_order(tmp_path, start):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path))
    _, messages = fit(PoisonedMLP(start), [health], batches=6, root=tmp_path)
    nonfinite = [f for f in health.findings if f["check"] == "nonfinite"]
    assert nonfinite[0]["layer"] == "poison" and nonfinite[0]["step"] == start, nonfinite
    assert "first non-finite output in the forward pass: poison (Poison)" in nonfinite[0]["message"]
    assert "already hold NaN/Inf" not in nonfinite[0]["message"]  # found while the weights are finite
    later = nonfinite[1:]
    assert later and all(
        "follows from the first non-finite output in the forward pass: poison" in f["message"] for f in later
    )
    first_warning = next(m for m in messages if "non-finite" in m)
    assert first_warning == nonfinite[0]["message"]


def test_between_examined_steps_without_the_per_step_check_says_so(tmp_path):
    health = TrainingHealthCallback(every_n_steps=3, nonfinite_every_step=False, output_dir=str(tmp_path))
    fit(PoisonedMLP(1), [health], batches=4, root=tmp_path)
    first = next(f for f in health.findings if f["check"] == "nonfinite")
    assert first["step"] == 3  # the next examined step
    assert "already hold NaN/Inf" in first["message"] and "the loss first at step 1" in first["message"]
    assert "`nonfinite_every_step: true`" in first["message"]


class GAN(LightningModule):
    """Manual optimization, two optimizers stepped every batch: generator, then discriminator."""

    def __init__(self, blow_up: float = 1.0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.discriminator[0].weight.register_hook(lambda g: g * blow_up)

    def training_step(self, batch, batch_idx):
        x, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(x.shape[0], 4)
        g_loss = F.softplus(-self.discriminator(self.generator(z))).mean()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        d_loss = (
            F.softplus(-self.discriminator(x)).mean()
            + F.softplus(self.discriminator(self.generator(z).detach())).mean()
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log("train_loss", d_loss)

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.generator.parameters(), lr=0.01),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
        )


def test_gan_discriminator_gradients_are_checked_on_its_own_steps(tmp_path):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path))
    fit(GAN(blow_up=1e6), [health], batches=4, root=tmp_path)
    exploding = [f for f in health.findings if f["check"] == "exploding_gradients"]
    assert exploding[0]["layer"] == "discriminator.0.weight", health.findings
    assert exploding[0]["step"] % 2 == 1  # global steps 1, 5: the discriminator's own examined steps
    data = health.figure_data()
    assert {"generator.0.weight", "discriminator.2.weight"} <= set(data["grad_norms"])
    assert {"generator.0.weight", "discriminator.0.weight"} <= set(data["update_ratios"])


class Finetune(Base):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_backbone_finetuning_is_examined_after_the_unfreeze(tmp_path):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path))
    seen: list[tuple[int, set]] = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append((trainer.global_step, set(health.figure_data()["update_ratios"])))

    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1)
    fit(Finetune(), [finetune, health, Probe()], epochs=2, batches=4, root=tmp_path)
    assert "backbone.0.weight" not in seen[0][1] and "head.weight" in seen[0][1]
    assert "backbone.0.weight" in seen[-1][1]
    assert health.started_later() == {"backbone.0.weight": 4, "backbone.0.bias": 4}
    assert health.ledger.frozen == {}  # everything trains at the end
    text = health.summary_text()
    assert "started training later: at step 4: 2 tensors: backbone.0.weight, backbone.0.bias" in text
    assert health.findings == []


class FrozenByMistake(FunctionalMLP):
    def __init__(self) -> None:
        super().__init__()
        self.fc1.requires_grad_(False)


def test_frozen_parameters_are_listed(tmp_path):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path))
    fit(FrozenByMistake(), [health], root=tmp_path)
    assert health.ledger.frozen == {"fc1.weight": 128, "fc1.bias": 16}
    summary = json.loads((health.viz_dir / "health_summary.json").read_text())
    assert summary["frozen"] == {"fc1.weight": 128, "fc1.bias": 16} and summary["started_later"] == {}
    text = (health.viz_dir / "health_summary.txt").read_text()
    assert "parameters that do not train: 2 tensors, 144 values: fc1.weight (128), fc1.bias (16)" in text
    assert "fc1.weight" not in health.figure_data()["grad_norms"]


class Transformer(Base):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x).reshape(x.shape[0], 1, 16).expand(-1, 3, -1)
        h = self.block(h)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


@pytest.mark.parametrize("layers", [None, ["*"]])
def test_transformer_gives_no_false_nonfinite_finding(tmp_path, layers):
    health = TrainingHealthCallback(every_n_steps=2, output_dir=str(tmp_path / "h"))
    acts = ActivationMapCallback(
        every_n_steps=2, every_n_epochs=None, output_dir=str(tmp_path / "a"), layers=layers
    )
    _, messages = fit(Transformer(), [acts, health], root=tmp_path)
    assert health.findings == [] and messages == []
    assert "attn.out_proj" in health.figure_data()["not_run"]  # used through its weight, never called
    assert "not run (no statistics, no finding): " in health.summary_text()


class GradNorms(Callback):
    """The unscaled gradient norms, computed independently: under a GradScaler a fused optimizer still sees
    the gradients times the scale in on_before_optimizer_step, others see them unscaled."""

    def __init__(self) -> None:
        self.norms: dict[int, dict[str, float]] = {}
        self.scales: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        scaler = trainer.precision_plugin.scaler
        scale = float(scaler.get_scale()) if optimizer.defaults.get("fused") else 1.0
        self.scales.append(float(scaler.get_scale()))
        self.norms[trainer.global_step] = {
            n: float(p.grad.double().div(scale).norm()) for n, p in pl_module.named_parameters()
        }


@pytest.mark.parametrize("fused", [False, True])
def test_16_mixed_gradient_norms_are_of_the_unscaled_gradients(tmp_path, fused):
    from lightning.pytorch.plugins.precision import MixedPrecision

    class AdamMLP(FunctionalMLP):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=fused)

    probe = GradNorms()
    health = TrainingHealthCallback(every_n_steps=1, output_dir=str(tmp_path))
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    _, messages = fit(AdamMLP(), [probe, health], batches=2, root=tmp_path, plugins=[plugin])
    assert min(probe.scales) > 1  # a real scale: a scaled norm would be off by it
    got = health.figure_data()["grad_norms"]
    want = probe.norms[max(probe.norms)]
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    assert health.findings == [] and messages == []

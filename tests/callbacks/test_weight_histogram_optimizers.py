"""WeightHistogramCallback on Trainer setups beyond one optimizer in fp32: a GAN under manual optimization,
gradient accumulation with clipping, parameters unfrozen mid-training, and mixed precision with a
GradScaler (fused and unfused optimizers; on CUDA too in ``tests/gpu/test_mixed_precision.py``). Numbers are
checked against independent computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import BackboneFinetuning, ModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core import precision, stats
from lightning_viz.core.warn import VizWarning
from tests.helpers import make_trainer, read_events


def tb_edges(hist) -> np.ndarray:
    limits = np.asarray(hist.bucket_limit)
    return np.concatenate([[limits[0] - (limits[1] - limits[0])], limits])


def check_histograms(acc, tag: str, expected: dict[int, np.ndarray]) -> None:
    """TensorBoard's histograms of ``tag`` are at exactly the steps of ``expected`` and equal
    ``numpy.histogram`` of those arrays on the same edges."""
    events = acc.Histograms(tag)
    assert [e.step for e in events] == sorted(expected), tag
    for e in events:
        h, x = e.histogram_value, expected[e.step].ravel()
        np.testing.assert_array_equal(np.asarray(h.bucket), np.histogram(x, bins=tb_edges(h))[0])
        assert (h.num, h.min, h.max) == (x.size, x.min(), x.max())
        assert h.sum_squares == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-5)


def viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


# ---------------------------------------------------------------------------------------------- a GAN
class TinyGAN(LightningModule):
    """Manual optimization, two optimizers, generator then discriminator in each training_step (the
    pattern of Lightning's GAN example, with toggle_optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4, generator=torch.Generator().manual_seed(batch_idx))
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)

        self.toggle_optimizer(opt_g)
        fake = self.generator(z)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        d_loss = d_loss + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-2),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.1),
        )


def gan_data(n: int = 64, batch_size: int = 8) -> DataLoader:
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0
    return DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=False)


GAN_BATCHES = 8  # gan_data(): 8 batches, 2 optimizer steps (global steps) each


class PerOptimizerRecorder(Callback):
    """Independent copies, at every optimizer step, of the parameters (and gradients) of the optimizer
    about to step, keyed by global step."""

    def __init__(self) -> None:
        self.which: dict[int, int] = {}
        self.weights: dict[int, dict[str, np.ndarray]] = {}
        self.weights_all: dict[int, dict[str, np.ndarray]] = {}
        self.grads: dict[int, dict[str, np.ndarray]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.which[step] = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer)
        mine = [(n, p) for n, p in pl_module.named_parameters() if id(p) in held]
        self.weights[step] = {n: p.detach().double().numpy().copy() for n, p in mine}
        self.grads[step] = {n: p.grad.detach().double().numpy().copy() for n, p in mine if p.grad is not None}
        self.weights_all[step] = {
            n: p.detach().double().numpy().copy() for n, p in pl_module.named_parameters()
        }


G_PARAMS = ["generator.0.weight", "generator.0.bias", "generator.2.weight", "generator.2.bias"]
D_PARAMS = [
    "discriminator.0.weight",
    "discriminator.0.bias",
    "discriminator.2.weight",
    "discriminator.2.bias",
]


def test_gan_each_optimizer_captured_on_its_own_steps(tmp_path):
    rec = PerOptimizerRecorder()
    cb = WeightHistogramCallback(every_n_steps=3, bins=16)
    trainer = make_trainer(tmp_path, [rec, cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyGAN(), gan_data())
    assert viz_warnings(caught) == []
    assert trainer.global_step == 2 * GAN_BATCHES  # every optimizer step counts
    # the generator steps at even global steps, the discriminator at odd ones: own steps 0, 3, 6 of each
    assert [rec.which[s] for s in (0, 1, 6, 7)] == [0, 1, 0, 1]
    g_steps, d_steps = [0, 6, 12], [1, 7, 13]

    acc = read_events(trainer.logger.log_dir)
    assert sorted(acc.Tags()["histograms"]) == sorted(
        f"{sel}/{n}" for sel in ("weights", "gradients") for n in G_PARAMS + D_PARAMS
    )
    for names, steps in ((G_PARAMS, g_steps), (D_PARAMS, d_steps)):
        for name in names:
            check_histograms(acc, f"weights/{name}", {s: rec.weights[s][name] for s in steps})
            check_histograms(acc, f"gradients/{name}", {s: rec.grads[s][name] for s in steps})
            norms = [e.value for e in acc.Scalars(f"grad_norm/{name}")]
            np.testing.assert_allclose(norms, [np.linalg.norm(rec.grads[s][name]) for s in steps], rtol=1e-5)
    assert all(np.abs(rec.grads[s]["discriminator.0.weight"]).max() > 0 for s in d_steps)

    with np.load(cb.viz_dir / f"gradients_evolution_step{2 * GAN_BATCHES:06d}.npz") as z:
        assert list(z["parameters"]) == G_PARAMS + D_PARAMS
        np.testing.assert_array_equal(z["discriminator.2.weight/steps"], d_steps)
        np.testing.assert_array_equal(z["generator.0.weight/steps"], g_steps)
    assert (cb.viz_dir / f"gradients_evolution_step{2 * GAN_BATCHES:06d}.png").exists()


def test_gan_resume_continues_each_optimizers_own_count(tmp_path):
    """The per-optimizer step counts are saved; a checkpoint without them (an older version) is read as
    alternating steps, which a GAN's are."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = WeightHistogramCallback(every_n_steps=3, bins=8, log="gradients", figure_every_n_epochs=9)
    trainer = make_trainer(tmp_path, [first, ckpt], max_epochs=1, enable_checkpointing=True)
    trainer.fit(TinyGAN(), gan_data())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    (key,) = [k for k in saved["callbacks"] if k.startswith("WeightHistogramCallback")]
    assert saved["callbacks"][key]["optimizer_steps"] == {0: GAN_BATCHES, 1: GAN_BATCHES}
    del saved["callbacks"][key]["optimizer_steps"]
    torch.save(saved, tmp_path / "old.ckpt")

    for run, ckpt_path in enumerate(("ckpt/last.ckpt", "old.ckpt")):
        cb = WeightHistogramCallback(every_n_steps=3, bins=8, log="gradients", figure_every_n_epochs=9)
        trainer = make_trainer(tmp_path / f"run{run}", [cb], max_epochs=2)
        trainer.fit(TinyGAN(), gan_data(), ckpt_path=str(tmp_path / ckpt_path))
        steps = {p["name"]: p["steps"].tolist() for p in cb.evolution_data("gradients")["params"]}
        # own steps 0, 3, 6 in the first run; 9, 12, 15 in the resumed one
        assert steps["generator.0.weight"] == [0, 6, 12, 18, 24, 30], ckpt_path
        assert steps["discriminator.0.weight"] == [1, 7, 13, 19, 25, 31], ckpt_path
        acc = read_events(trainer.logger.log_dir)
        assert [e.step for e in acc.Histograms("gradients/discriminator.0.weight")] == [19, 25, 31]


class OneOptimizerManual(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.net(batch[0]).pow(2).mean())
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_manual_optimization_with_one_optimizer_captures_the_global_steps(tmp_path):
    cb = WeightHistogramCallback(every_n_steps=3, every_n_epochs=1, bins=8, log="weights")
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(OneOptimizerManual(), gan_data())
    acc = read_events(trainer.logger.log_dir)
    # by step: 0, 3, ..., 15; by epoch: the last step of each epoch, 7 and 15
    assert [e.step for e in acc.Histograms("weights/net.0.weight")] == [0, 3, 6, 7, 9, 12, 15]


# ------------------------------------------------------------------------- accumulation and clipping
class Regressor(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.net(x) - x.sum(1, keepdim=True)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_accumulated_gradients_are_captured_before_clipping(tmp_path):
    rec = PerOptimizerRecorder()  # for the weights the gradients were computed at
    cb = WeightHistogramCallback(every_n_steps=2, bins=16)
    trainer = make_trainer(
        tmp_path, [rec, cb], max_epochs=1, accumulate_grad_batches=2, gradient_clip_val=1e-3
    )
    data = gan_data()
    trainer.fit(Regressor(), data)
    assert trainer.global_step == GAN_BATCHES // 2
    batches = [b for (b,) in data]
    expected: dict[int, dict[str, np.ndarray]] = {}
    for step in (0, 2):  # the accumulated gradient, recomputed from the weights and the two batches
        model = Regressor()
        model.load_state_dict({n: torch.from_numpy(w).float() for n, w in rec.weights[step].items()})
        for b in batches[2 * step : 2 * step + 2]:
            (model.training_step((b,), 0) / 2).backward()
        expected[step] = {n: p.grad.double().numpy() for n, p in model.named_parameters()}
    acc = read_events(trainer.logger.log_dir)
    for name in expected[0]:
        check_histograms(acc, f"gradients/{name}", {s: expected[s][name] for s in (0, 2)})
        norms = [e.value for e in acc.Scalars(f"grad_norm/{name}")]
        np.testing.assert_allclose(norms, [np.linalg.norm(expected[s][name]) for s in (0, 2)], rtol=1e-5)
    total = math.sqrt(sum(np.sum(g**2) for g in expected[0].values()))
    assert total > 100 * 1e-3  # clipping did change these gradients: the histograms are from before it


# ------------------------------------------------------------------------ parameters unfrozen later
class Transfer(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.head(self.backbone(x)) - x.sum(1, keepdim=True)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.01)  # the backbone joins at the unfreeze epoch


def test_backbone_gradients_appear_from_the_unfreeze_epoch(tmp_path):
    rec = PerOptimizerRecorder()
    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    cb = WeightHistogramCallback(every_n_steps=2, bins=16)
    trainer = make_trainer(tmp_path, [finetune, rec, cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Transfer(), gan_data())
    assert viz_warnings(caught) == []
    assert len(trainer.optimizers[0].param_groups) == 2  # the backbone was added in epoch 1
    acc = read_events(trainer.logger.log_dir)
    captured = [0, 2, 4, 6, 8, 10, 12, 14]
    later = [s for s in captured if s >= GAN_BATCHES]  # epoch 1 starts at step 8
    backbone = ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias"]
    for name in [*backbone, "backbone.3.weight", "backbone.3.bias"]:
        check_histograms(acc, f"weights/{name}", {s: rec.weights_all[s][name] for s in captured})
        # the BatchNorm parameters require a gradient throughout (train_bn), but no optimizer used or
        # zeroed it before epoch 1: not shown until they train
        check_histograms(acc, f"gradients/{name}", {s: rec.grads[s][name] for s in later})
    for name in ("head.weight", "head.bias"):
        check_histograms(acc, f"gradients/{name}", {s: rec.grads[s][name] for s in captured})
    with np.load(cb.viz_dir / f"gradients_evolution_step{2 * GAN_BATCHES:06d}.npz") as z:
        np.testing.assert_array_equal(z["backbone.0.weight/steps"], later)
        np.testing.assert_array_equal(z["head.weight/steps"], captured)


# ---------------------------------------------------------------------------------- mixed precision
class AdamRegressor(Regressor):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, fused=self.fused)


class ScaledGradRecorder(Callback):
    """The raw gradients at the hook, the scaler's scale and whether it already unscaled them, read
    straight from the GradScaler."""

    def __init__(self) -> None:
        self.raw: dict[int, dict[str, np.ndarray]] = {}
        self.scale: dict[int, float] = {}
        self.unscaled: dict[int, bool] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        scaler = trainer.precision_plugin.scaler
        step = trainer.global_step
        self.raw[step] = {n: p.grad.detach().cpu().numpy().copy() for n, p in pl_module.named_parameters()}
        self.scale[step] = scaler.get_scale()
        self.unscaled[step] = scaler._per_optimizer_states[id(optimizer)]["stage"].name == "UNSCALED"


def amp_fit(tmp_path, fused: bool, **scaler_kwargs):
    torch.manual_seed(0)
    model = AdamRegressor(fused)
    rec = ScaledGradRecorder()
    cb = WeightHistogramCallback(every_n_steps=3, bins=32, log="gradients")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", **scaler_kwargs))
    trainer = make_trainer(tmp_path / f"fused{fused}", [rec, cb], max_epochs=1, plugins=[plugin])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, gan_data())
    assert viz_warnings(caught) == []
    return rec, read_events(trainer.logger.log_dir)


def test_mixed_precision_gradients_are_unscaled_also_with_fused_adam(tmp_path):
    # (the default 2**16 overflows this model's fp16 backward at first: see the test below)
    runs = {fused: amp_fit(tmp_path, fused, init_scale=2.0**10) for fused in (False, True)}
    names = list(runs[False][0].raw[0])
    for fused, (rec, acc) in runs.items():
        # Lightning unscales before the hook unless the optimizer unscales in step() (fused)
        assert rec.unscaled[0] is (not fused) and rec.scale[0] == 2.0**10
        for name in names:
            expected = {
                s: rec.raw[s][name] if rec.unscaled[s] else rec.raw[s][name] / np.float32(rec.scale[s])
                for s in (0, 3, 6)
            }
            check_histograms(acc, f"gradients/{name}", expected)
            norms = [e.value for e in acc.Scalars(f"grad_norm/{name}")]
            want = [np.linalg.norm(expected[s].astype(np.float64)) for s in (0, 3, 6)]
            np.testing.assert_allclose(norms, want, rtol=1e-5)
            if fused:  # what the hook saw was 1024 times larger
                assert np.linalg.norm(rec.raw[0][name]) == pytest.approx(2.0**10 * want[0], rel=1e-5)
    # at step 0 both runs have the same weights and batch: the same unscaled gradients, bin for bin
    for name in names:
        a, b = (runs[f][1].Histograms(f"gradients/{name}")[0].histogram_value for f in (False, True))
        assert list(a.bucket_limit) == list(b.bucket_limit) and list(a.bucket) == list(b.bucket)
        assert (a.min, a.max, a.sum_squares) == (b.min, b.max, b.sum_squares)


def test_scale_that_is_not_a_power_of_two_is_divided_exactly(tmp_path):
    rec, acc = amp_fit(tmp_path, True, init_scale=1000.0)
    assert rec.scale[0] == 1000.0 and not rec.unscaled[0]
    for name in rec.raw[0]:
        expected = {s: rec.raw[s][name] / np.float32(rec.scale[s]) for s in (0, 3, 6)}
        check_histograms(acc, f"gradients/{name}", expected)


def test_overflowing_scaled_gradients_are_counted_without_a_warning(tmp_path):
    """A too large loss scale overflows the fp16 backward: the GradScaler skips those steps and halves
    its scale, as designed. The NaN/Inf values are counted, but this is no reason to warn."""
    rec, acc = amp_fit(tmp_path, False, init_scale=2.0**60)
    assert rec.scale[0] == 2.0**60 and rec.scale[6] < rec.scale[0]  # it backed off
    tags = acc.Tags()["scalars"]
    assert "nonfinite/gradients/net.0.weight" in tags
    assert acc.Scalars("nonfinite/gradients/net.0.weight")[0].step == 0


def test_grad_scale_reads_the_scaler_state():
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision

    p = nn.Parameter(torch.randn(5))
    for fused in (False, True):
        opt = torch.optim.Adam([p], fused=fused)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
        trainer = SimpleNamespace(precision_plugin=plugin)
        plugin.scaler.scale(p.sum()).backward()
        assert precision.has_grad_scaler(trainer)
        assert precision.grad_scale(trainer, opt) == 2.0**10  # before any unscale_
        if not fused:
            plugin.scaler.unscale_(opt)
            assert precision.grad_scale(trainer, opt) is None
        plugin.scaler.step(opt)
        plugin.scaler.update()
        p.grad = None
    for plugin in (Precision(), MixedPrecision("bf16-mixed", "cpu")):
        trainer = SimpleNamespace(precision_plugin=plugin)
        assert precision.grad_scale(trainer, opt) is None and not precision.has_grad_scaler(trainer)
    disabled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert precision.grad_scale(SimpleNamespace(precision_plugin=disabled), opt) is None


@pytest.mark.parametrize("scale", [2.0**16, 2.0**-3, 1000.0, 3.0])
def test_unscaled_histogram_set_equals_numpy_of_the_divided_tensor(scale):
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(300, generator=g) * scale, torch.full((7,), 2.5 * scale), None, torch.randn(3, 4)]
    raw[0][5] = math.inf
    names = ["a", "b", "none", "weights"]
    hs, failed = precision.histogram_set(raw, names, 16, [scale, scale, scale, None])
    assert not failed
    divided = [t / scale if t is not None and n != "weights" else t for t, n in zip(raw, names)]
    direct, _ = stats.histogram_set(divided, names, 16)  # what the unscaled tensors give: the same bins
    np.testing.assert_array_equal(hs.edges, direct.edges)
    np.testing.assert_array_equal(hs.counts, direct.counts)
    for i, t in enumerate(raw):
        if t is None:
            assert hs.numel[i] == 0
            continue
        x = t.numpy() / np.float32(scale) if names[i] != "weights" else t.numpy()
        fin = x[np.isfinite(x)].astype(np.float64)
        np.testing.assert_array_equal(hs.counts[i], np.histogram(fin, bins=hs.edges[i])[0])
        assert (hs.minimum[i], hs.maximum[i]) == (fin.min(), fin.max())
        assert hs.nonfinite[i] == x.size - fin.size
        assert hs.sum[i] == pytest.approx(fin.sum(), rel=1e-5, abs=1e-9)
        assert hs.sum_squares[i] == pytest.approx(np.sum(fin**2), rel=1e-5)
        w = hs.edges[i][1] - hs.edges[i][0]
        assert math.frexp(w)[0] == 0.5 and np.all(hs.edges[i] / w == np.round(hs.edges[i] / w))


# ---------------------------------------------------------------------------------------- under DDP
DDP_GAN = """
import json, sys
from pathlib import Path

sys.path.insert(0, {root!r})
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from tests.callbacks.test_weight_histogram_optimizers import TinyGAN, gan_data

if __name__ == "__main__":
    out = Path(sys.argv[1])
    seed_everything(0)
    cb = WeightHistogramCallback(every_n_steps=3, bins=16, log="gradients")
    trainer = Trainer(
        default_root_dir=str(out), accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
        max_epochs=1, callbacks=[cb], logger=TensorBoardLogger(str(out), name="tb"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(TinyGAN(), gan_data())
    data = {{p["name"]: {{"steps": p["steps"].tolist(), "counts": p["counts"].tolist(),
                          "edges": p["edges"].tolist()}} for p in cb.evolution_data("gradients")["params"]}}
    (out / f"rank{{trainer.global_rank}}.json").write_text(json.dumps(data))
"""


@pytest.mark.distributed
def test_gan_under_ddp_every_rank_captures_the_same(tmp_path):
    """Two gloo ranks, manual optimization, two optimizers: the job ends (no collective is left waiting)
    and both ranks hold the same reduced histograms, at each optimizer's own steps."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "gan_ddp.py"
    script.write_text(DDP_GAN.format(root=str(root)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(PYTHONPATH=str(root), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    # 4 batches per rank, 8 global steps: own steps 0 and 3 of each optimizer
    assert ranks[0]["generator.0.weight"]["steps"] == [0, 6]
    assert ranks[0]["discriminator.0.weight"]["steps"] == [1, 7]
    sizes = {n: p.numel() for n, p in TinyGAN().named_parameters()}
    assert set(ranks[0]) == set(sizes)
    for name, p in ranks[0].items():  # replicated gradients are counted once
        assert [sum(c) for c in p["counts"]] == [sizes[name]] * 2

"""SaliencyCallback (#18 item 6) in real Trainers: Grad-CAM equals the test's own computation (its own hook on
the layer, torch.autograd.grad, the gradient-weighted channel sum, bilinear upsampling) for tuple and dict
batches and a layer inside a compiled submodule; input-gradient saliency on a model without convolutions
equals the test's own gradient; no parameter's gradient, requires_grad or train flag changes; many epochs
leave no tensors behind; bad arguments are one-line errors."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_viz.callbacks.saliency import SaliencyCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import make_trainer

pytest.importorskip("captum")
N = 6


def viz_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


class Images(Dataset):
    def __init__(self, n: int, seed: int, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 1, 12, 12, generator=g) * 0.3
        for k in range(3):
            self.x[self.y == k, :, 4 * k : 4 * k + 4] += 1.0
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


class Net(LightningModule):
    """Convolutions (the first frozen), a frozen BatchNorm kept in eval mode, a Linear head."""

    def __init__(self, as_dict: bool = False, compiled: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
        )
        self.features[0].requires_grad_(False)
        self.features[1].requires_grad_(False)
        if compiled:
            self.features = torch.compile(self.features, backend="eager")
        self.head = nn.Linear(8, 3)
        self.as_dict = as_dict

    def on_train_epoch_start(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()

    def forward(self, x):
        return self.head(F.relu(self.features(x)).mean((2, 3)))

    def _xy(self, batch):
        return (batch["image"], batch["label"]) if self.as_dict else batch

    def training_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = self._xy(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    def train_dataloader(self):
        return DataLoader(Images(24, 0, self.as_dict), batch_size=8)

    def val_dataloader(self):
        return DataLoader(Images(16, 1, self.as_dict), batch_size=8)


def gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM by hand: the layer's output A, d score / d A, ReLU(sum_k mean(grad_k) A_k), upsampled."""
    acts = []
    h = layer.register_forward_hook(lambda m, a, o: acts.append(o))
    x = x.clone().requires_grad_(True)
    out = model(x)
    h.remove()
    score = out.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, acts[0])
    cam = F.relu((grad.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    return F.interpolate(cam.detach(), size=x.shape[2:], mode="bilinear")[:, 0]


class Reference(Callback):
    """Listed before SaliencyCallback: the test's own maps at each epoch end, and every parameter's gradient,
    requires_grad and train flag, to compare after SaliencyCallback ran (``After``)."""

    def __init__(self, layer: str | None) -> None:
        self.layer = layer
        self.maps: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.state: list[tuple] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.state.append(snapshot(pl_module))
        x = trainer.val_dataloaders.dataset.x[:N]
        was = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        with torch.enable_grad(), torch.compiler.set_stance("force_eager"):
            with torch.no_grad():
                target = pl_module(x).argmax(1)
            if self.layer:
                layer = dict(pl_module.named_modules())[self.layer]
                maps = gradcam(pl_module, layer, x, target)
            else:
                xg = x.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(pl_module(xg).gather(1, target[:, None]).sum(), xg)
                maps = g.abs().reshape(N, -1)
        for m, t in was.items():
            m.train(t)
        self.maps.append(maps)
        self.targets.append(target)


def snapshot(model: nn.Module) -> tuple:
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return (
        grads,
        {n: p.requires_grad for n, p in model.named_parameters()},
        [m.training for m in model.modules()],
    )


class After(Callback):
    def __init__(self, ref: Reference) -> None:
        self.ref, self.same = ref, []

    def on_train_epoch_end(self, trainer, pl_module):
        (g0, rg0, tr0), (g1, rg1, tr1) = self.ref.state[-1], snapshot(pl_module)
        grads_same = all(
            (a is None and b is None) or torch.equal(a, b) for a, b in zip(g0.values(), g1.values())
        )
        self.same.append(grads_same and rg0 == rg1 and tr0 == tr1)


def data_files(trainer) -> list[dict]:
    root = Path(trainer.log_dir) / "viz" / "saliency"
    return [json.loads(p.read_text()) for p in sorted(root.glob("saliency_step*.json"))]


@pytest.mark.parametrize(
    "as_dict,compiled", [(False, False), (True, False), (False, True)], ids=["tuple", "dict", "compiled"]
)
def test_gradcam_equals_an_independent_computation_and_leaves_the_model_as_it_was(
    tmp_path, as_dict, compiled
):
    torch.manual_seed(0)
    layer = "features._orig_mod.3" if compiled else "features.3"
    ref = Reference(layer)
    cb = SaliencyCallback(sample_size=N, class_names=["a", "b", "c"], max_image_px=12)
    after = After(ref)
    trainer = make_trainer(tmp_path, [ref, cb, after], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(as_dict, compiled))
    assert viz_warnings(caught) == []
    assert after.same == [True, True]  # gradients, requires_grad and train flags as they were
    files = data_files(trainer)
    assert [d["step"] for d in files] == [3, 6]
    y = Images(16, 1).y[:N]
    for epoch, d in enumerate(files):
        assert (d["method"], d["layer"]) == ("gradcam", "features.3")
        want = ref.maps[epoch].double()
        peak = want.flatten(1).amax(1)
        np.testing.assert_allclose(d["peak"], peak.numpy(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(
            np.asarray(d["maps"]), (want / peak[:, None, None]).numpy(), rtol=1e-4, atol=1e-6
        )
        assert d["target"] == ref.targets[epoch].tolist() == d["pred"]
        assert d["true"] == y.tolist() and np.asarray(d["images"]).shape == (N, 1, 12, 12)


class Tabular(LightningModule):
    """No convolutions: 10 features, a hidden layer, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(Rows(16, 0), batch_size=8)

    def val_dataloader(self):
        return DataLoader(Rows(8, 1), batch_size=8)


class Rows(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.x = torch.randn(n, 10, generator=torch.Generator().manual_seed(seed))
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_input_gradients_on_a_model_without_convolutions(tmp_path):
    torch.manual_seed(0)
    ref = Reference(None)
    cb = SaliencyCallback(sample_size=N)
    trainer = make_trainer(tmp_path, [ref, cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Tabular())
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    assert d["method"] == "input_gradient" and d["layer"] is None and d["images"] is None
    want = ref.maps[0].double()
    peak = want.amax(1)
    np.testing.assert_allclose(np.asarray(d["maps"]), (want / peak[:, None]).numpy(), rtol=1e-5, atol=1e-7)


class Count(Callback):
    """The live tensors after each epoch end (after SaliencyCallback)."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        gc.collect()
        self.counts.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))


def test_many_epochs_leave_no_tensor_behind(tmp_path):
    count = Count()
    trainer = make_trainer(
        tmp_path,
        [SaliencyCallback(sample_size=4), count],
        max_epochs=24,
        limit_train_batches=1,
        limit_val_batches=0,
    )
    trainer.fit(Net())
    assert len(count.counts) == 24 and count.counts[-1] <= count.counts[3], count.counts


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"method": "cam"}, "method"),
        ({"explain": "both"}, "explain"),
        ({"sample_size": 0}, "sample_size"),
        ({"layer": "features.3", "method": "input_gradient"}, "layer"),
        ({"class_names": "a"}, "class_names"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as err:
        SaliencyCallback(**kwargs)
    assert "\n" not in str(err.value)


def test_gradcam_on_a_model_without_a_convolution_is_a_one_line_error_before_training(tmp_path):
    trainer = make_trainer(tmp_path, [SaliencyCallback(method="gradcam")], max_epochs=1)
    with pytest.raises(ValueError, match="no Conv2d layer") as err:
        trainer.fit(Tabular())
    assert str(err.value).startswith("SaliencyCallback") and "\n" not in str(err.value)
    assert trainer.global_step == 0


class Binary(Net):
    """One logit (binary cross-entropy); not trained (lr 0), so that its predictions are of both classes."""

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.0)

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x)[:, 0], (y > 0).float())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x)[:, 0], (y > 0).float()))


def test_one_logit_is_explained_for_the_class_predicted_even_class_zero(tmp_path):
    torch.manual_seed(3)
    model = Binary().eval()
    with torch.no_grad():  # centre the logits: half the examples predicted 0
        model.head.bias -= model(Images(16, 1).x)[:, 0].median() + 1e-3
    model.train()
    cb = SaliencyCallback(sample_size=16)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(model)
    (d,) = data_files(trainer)
    x = Images(16, 1).x
    model.eval()
    with torch.no_grad():
        logit = model(x)[:, 0]
    predicted = (logit > 0).long()
    assert d["target"] == predicted.tolist() == d["pred"] and 0 < predicted.sum() < 16  # both classes occur
    # class 1's score is the logit, class 0's its negative: Grad-CAM of the one each example is predicted
    two = lambda t: torch.cat([-model(t), model(t)], 1)  # noqa: E731
    with torch.enable_grad():
        want = gradcam_of(two, model.features[3], x, predicted)
    peak = want.flatten(1).amax(1)
    np.testing.assert_allclose(
        np.asarray(d["maps"]), (want / peak[:, None, None]).numpy(), rtol=1e-4, atol=1e-6
    )


def gradcam_of(fn, layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    acts = []
    h = layer.register_forward_hook(lambda m, a, o: acts.append(o))
    out = fn(x)
    h.remove()
    grads = torch.autograd.grad(out.gather(1, target[:, None]).sum(), acts)  # both calls' activations
    cam = sum(
        (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True) for g, a in zip(grads, acts, strict=True)
    )
    return F.interpolate(F.relu(cam).detach(), size=x.shape[2:], mode="bilinear")[:, 0]


def test_default_samples_take_a_small_validation_set_whole(tmp_path):
    from lightning_viz.callbacks.prediction_grid import PredictionGridCallback

    class Small(Net):
        def val_dataloader(self):
            return DataLoader(Images(5, 1), batch_size=8)

    trainer = make_trainer(tmp_path, [SaliencyCallback(), PredictionGridCallback()], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Small())
    assert viz_warnings(caught) == []
    (d,) = data_files(trainer)
    assert len(d["maps"]) == 5
    grid = json.loads(
        next((Path(trainer.log_dir) / "viz" / "prediction_grid").glob("predictions_step*.json")).read_text()
    )
    assert len(grid["sample"]["true"]) == 5

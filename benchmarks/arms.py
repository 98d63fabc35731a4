"""Models, synthetic data, the peers (TensorBoard histograms, wandb.watch) and the benchmark arms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_viz as lv

PEER_N = 10  # logging interval of the peers and of the "same N" arms (the quickstart's histogram interval)


# ---------------------------------------------------------------------------- models and data
def digits_cnn() -> LightningModule:
    """The example project's CNN with the quickstart's settings."""
    from example_projects.digits import DigitsClassifier

    return DigitsClassifier(channels=16, hidden=64, lr=0.01, optimizer="adam", activation="relu", depth=2)


class ResNet50(LightningModule):
    """torchvision's resnet50 (no pretrained weights, 1000 classes, 25.6M parameters) with plain SGD."""

    def __init__(self, size: int) -> None:
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet50(weights=None)
        self.example_input_array = torch.zeros(2, 3, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def synthetic_loaders(
    n_train: int, n_val: int, shape: tuple[int, ...], classes: int, batch: int, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """In-memory random images and labels (fixed by ``seed``): no disk, no download."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_val, *shape, generator=g)
    y = torch.randint(0, classes, (n_train + n_val,), generator=g)
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[n_train:], y[n_train:])
    shuffle_g = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch, shuffle=True, generator=shuffle_g),
        DataLoader(val, batch_size=batch),
    )


# ---------------------------------------------------------------------------- peers
class TensorBoardHistogramPeer(Callback):
    """What users write today: ``add_histogram`` for every parameter and every gradient every N steps."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer: Any, pl_module: LightningModule, optimizer: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        exp = trainer.logger.experiment
        for name, p in pl_module.named_parameters():
            exp.add_histogram(f"weights/{name}", p, step)
            if p.grad is not None:
                exp.add_histogram(f"gradients/{name}", p.grad, step)


class WandbWatchPeer(Callback):
    """The real ``wandb.watch(model, log="all", log_freq=N)`` on an offline run.

    Lightning's ``WandbLogger`` commits the watched histograms with the step's metrics; here the TensorBoard
    logger is the run's logger for every arm, so this callback commits the wandb step after every batch
    (what ``WandbLogger.log_metrics`` would do), which writes the histograms to the offline run file.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self.calls = 0  # histograms wandb computed (read by the step clock to find the logging steps)
        self._committed = 0

    def on_fit_start(self, trainer: Any, pl_module: LightningModule) -> None:
        import wandb

        history = wandb.run._torch
        real = type(history).log_tensor_stats

        def counted(tensor: Any, name: str) -> None:  # the real function, counted
            self.calls += 1
            real(history, tensor, name)

        history.log_tensor_stats = counted
        wandb.watch(pl_module, log="all", log_freq=self.every_n_steps)

    def on_train_batch_end(self, trainer: Any, pl_module: LightningModule, *args: Any) -> None:
        import wandb

        if self.calls != self._committed:  # histograms pending: commit the step, as WandbLogger would
            self._committed = self.calls
            wandb.run.log({"trainer/global_step": trainer.global_step}, commit=True)

    def on_fit_end(self, trainer: Any, pl_module: LightningModule) -> None:
        import wandb

        wandb.unwatch(pl_module)
        vars(wandb.run._torch).pop("log_tensor_stats", None)


# ---------------------------------------------------------------------------- arms
Predicate = Callable[[int], bool]  # step index (global_step before the batch) -> does the arm record there


@dataclass
class Arm:
    """One configuration of callbacks, and on which steps it records something."""

    name: str
    callbacks: Callable[[], list[Callback]]
    logging_step: Predicate | None = None  # None: records no per-step data (fit start or epoch ends only)
    note: str = ""
    tags: set[str] = field(default_factory=set)


def _every(n: int) -> Predicate:
    return lambda g: g % n == 0


def _after(n: int) -> Predicate:  # recorded after the optimizer step that makes global_step a multiple of n
    return lambda g: (g + 1) % n == 0


def suite() -> list[Callback]:
    """The quickstart's four core callbacks at their default settings (the headline arm)."""
    return [
        lv.ModelSummaryCallback(),
        lv.WeightHistogramCallback(),
        lv.ActivationMapCallback(),
        lv.CurvePlotCallback(),
    ]


def suite_quickstart() -> list[Callback]:
    """The four core callbacks as configs/quickstart.yaml sets them (its MetricPlot and Report are not timed):
    histograms every 10 steps instead of 50, for a short demo."""
    return [
        lv.ModelSummaryCallback(),
        lv.WeightHistogramCallback(every_n_steps=10),
        lv.ActivationMapCallback(every_n_epochs=1),
        lv.CurvePlotCallback(),
    ]


def suite_articles() -> list[Callback]:
    """The callbacks of the source articles (#18) at their defaults: the fixed-sample ones every epoch."""
    return [
        lv.ModelGraphCallback(),
        lv.WeightPictureCallback(),
        lv.ActivationHistogramCallback(),
        lv.PredictionGridCallback(),
        lv.EmbeddingCallback(),
        lv.SaliencyCallback(),
    ]


def peer_arms(n: int, with_wandb: bool) -> list[Arm]:
    """B0 and what users run today: a per-tensor add_histogram callback and (if installed) wandb.watch."""
    arms = [
        Arm("B0", list, None, "no visualization callbacks"),
        Arm("peer-TB", lambda: [TensorBoardHistogramPeer(n)], _every(n), f"add_histogram per tensor, N={n}"),
    ]
    if with_wandb:
        arms.append(
            Arm("peer-W&B", lambda: [WandbWatchPeer(n)], _every(n), f'wandb.watch(log="all", log_freq={n})')
        )
    return arms


def cnn_arms(log_every_n_steps: int, with_wandb: bool) -> list[Arm]:
    n = PEER_N
    arms = peer_arms(n, with_wandb)
    arms += [
        Arm("ModelSummary (default)", lambda: [lv.ModelSummaryCallback()], None, "fit start only"),
        Arm(
            "WeightHistogram (default)",
            lambda: [lv.WeightHistogramCallback()],
            _every(50),
            "every_n_steps=50",
        ),
        Arm(f"WeightHistogram (N={n})", lambda: [lv.WeightHistogramCallback(every_n_steps=n)], _every(n), ""),
        Arm("ActivationMap (default)", lambda: [lv.ActivationMapCallback()], None, "every epoch end"),
        Arm(
            f"ActivationMap (N={n})",
            lambda: [lv.ActivationMapCallback(every_n_epochs=None, every_n_steps=n)],
            lambda g: g > 0 and (g + 1) % n == 0,
            "",
        ),
        Arm("WeightPicture (default)", lambda: [lv.WeightPictureCallback()], None, "every epoch end"),
        Arm(
            "PredictionGrid (default)",
            lambda: [lv.PredictionGridCallback()],
            None,
            "every epoch end; the worst examples from the validation forward passes",
        ),
        Arm("ModelGraph (default)", lambda: [lv.ModelGraphCallback()], None, "once at setup, rank 0"),
        Arm(
            "Embedding (default)",
            lambda: [lv.EmbeddingCallback()],
            None,
            "every epoch end; 256 examples, the last Linear's input, PCA and the Projector files",
        ),
        Arm(
            "Saliency (default)",
            lambda: [lv.SaliencyCallback()],
            None,
            "every epoch end; Grad-CAM of 8 examples",
        ),
        Arm(
            "ActivationHistogram (default)",
            lambda: [lv.ActivationHistogramCallback()],
            _every(50),
            "every_n_steps=50, every leaf layer's output",
        ),
        Arm(
            f"ActivationHistogram (N={n}, gradients)",
            lambda: [lv.ActivationHistogramCallback(every_n_steps=n, gradients=True)],
            _every(n),
            "",
        ),
        Arm(
            "CurvePlot (default)",
            lambda: [lv.CurvePlotCallback()],
            _after(log_every_n_steps),
            f"follows log_every_n_steps={log_every_n_steps}",
        ),
        Arm(f"CurvePlot (N={n})", lambda: [lv.CurvePlotCallback(every_n_steps=n)], _after(n), ""),
        Arm(
            "full suite (defaults)",
            suite,
            lambda g: g % 50 == 0 or (g + 1) % log_every_n_steps == 0,
            "the quickstart's four core callbacks at their default settings",
            {"suite"},
        ),
        Arm(
            "full suite (quickstart settings)",
            suite_quickstart,
            lambda g: g % 10 == 0 or (g + 1) % log_every_n_steps == 0,
            "the four core callbacks as configs/quickstart.yaml sets them (histograms every 10 steps)",
        ),
    ]
    return arms


def resnet_arms(with_wandb: bool) -> list[Arm]:
    n = PEER_N
    arms = peer_arms(n, with_wandb)
    arms += [
        Arm(f"WeightHistogram (N={n})", lambda: [lv.WeightHistogramCallback(every_n_steps=n)], _every(n), ""),
        Arm("full suite (defaults)", suite, lambda g: g % 50 == 0 or (g + 1) % 5 == 0, "", {"suite"}),
    ]
    return arms

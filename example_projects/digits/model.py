"""DigitsClassifier: a small, input-size agnostic CNN with knobs that can plant training pathologies."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

Activation = Literal["relu", "tanh", "sigmoid"]
Optimizer = Literal["adam", "sgd"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
NUM_CLASSES = 10


def _check_positive(name: str, value: float, *, integer: bool) -> None:
    kind = "an integer >= 1" if integer else "a number > 0"
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if integer else value > 0
    if not ok:
        raise ValueError(f"`{name}` must be {kind}; got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}")


class DigitsClassifier(LightningModule):
    """A small CNN that classifies 1-channel digit images into 10 classes.

    ``features`` holds ``depth`` blocks named ``conv1``/``act1``, ``conv2``/``act2``, ... (3x3 convolutions
    that keep the spatial size), then ``pool`` (adaptive average pooling to 4x4, so any input size works)
    and ``classifier`` (``fc1``, ``act``, ``fc2``).

    The ``activation`` and ``init_*`` knobs exist to plant pathologies for the visualisations to reveal: a
    very negative ``init_bias`` with ReLU kills units (dead ReLU), a huge ``init_weight_scale`` with tanh or
    sigmoid saturates them, and a deep sigmoid stack (``depth: 8, activation: sigmoid``) makes gradients
    vanish in the early layers.

    Args:
        channels: output channels of every convolution.
        hidden: width of the hidden layer of the classifier head.
        lr: learning rate.
        weight_decay: L2 weight decay passed to the optimizer.
        optimizer: ``"adam"`` or ``"sgd"`` (SGD with momentum 0.9).
        activation: the non-linearity after every convolution and in the head.
        depth: number of convolution blocks.
        input_size: side of the square input images (8 for scikit-learn digits, 28 for MNIST); sets
            ``example_input_array`` to a zero batch of shape ``(2, 1, input_size, input_size)``.
        init_bias: if set, every convolution and linear bias starts at this constant.
        init_weight_scale: if set, every convolution and linear weight is multiplied by this factor after
            PyTorch's default initialisation.
        fsdp2: shard the model with FSDP2 (``torch.distributed.fsdp.fully_shard`` on every convolution and
            linear layer, then the whole model) in ``configure_model``; use with
            ``ModelParallelStrategy`` (see ``configs/fsdp.yaml``).
    """

    def __init__(
        self,
        channels: int = 16,
        hidden: int = 64,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        optimizer: Optimizer = "adam",
        activation: Activation = "relu",
        depth: int = 2,
        input_size: int = 8,
        init_bias: float | None = None,
        init_weight_scale: float | None = None,
        fsdp2: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("hidden", hidden), ("depth", depth)):
            _check_positive(name, value, integer=True)
        _check_positive("input_size", input_size, integer=True)
        _check_positive("lr", lr, integer=False)
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay!r}")
        _check_choice("optimizer", optimizer, ("adam", "sgd"))
        _check_choice("activation", activation, tuple(_ACTIVATIONS))
        if init_weight_scale is not None and init_weight_scale <= 0:
            raise ValueError(f"`init_weight_scale` must be > 0 or null; got {init_weight_scale!r}")
        self.save_hyperparameters()

        act = _ACTIVATIONS[activation]
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(1, depth + 1):
            blocks[f"conv{i}"] = nn.Conv2d(1 if i == 1 else channels, channels, kernel_size=3, padding=1)
            blocks[f"act{i}"] = act()
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(channels * 16, hidden),
                act=act(),
                fc2=nn.Linear(hidden, NUM_CLASSES),
            )
        )
        self._init_parameters(init_bias, init_weight_scale)

        self.train_acc = MulticlassAccuracy(num_classes=NUM_CLASSES)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES)
        self.test_acc = MulticlassAccuracy(num_classes=NUM_CLASSES)
        # Drawn by MetricPlotCallback (configs/metric_plot.yaml); torchmetrics syncs it across ranks.
        self.val_confmat = MulticlassConfusionMatrix(num_classes=NUM_CLASSES)
        self.example_input_array = torch.zeros(2, 1, input_size, input_size)

    @torch.no_grad()
    def _init_parameters(self, init_bias: float | None, init_weight_scale: float | None) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                if init_weight_scale is not None:
                    module.weight.mul_(init_weight_scale)
                if init_bias is not None and module.bias is not None:
                    module.bias.fill_(init_bias)

    def configure_model(self) -> None:
        """Apply FSDP2 sharding when ``fsdp2`` is set (the strategy has set up the device mesh by now)."""
        if not self.hparams.fsdp2:
            return
        from torch.distributed.fsdp import fully_shard

        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fully_shard(module)
        fully_shard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of shape ``(batch, 10)`` for images of shape ``(batch, 1, H, W)``."""
        return self.classifier(self.pool(self.features(x)))

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        metric = getattr(self, f"{stage}_acc")
        metric(logits, y)
        if stage == "val":
            self.val_confmat.update(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(
            f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train", sync_dist=True
        )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Predicted class indices."""
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)

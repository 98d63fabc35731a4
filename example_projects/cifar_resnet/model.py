"""CifarResNet: torchvision's ResNet-18 with the usual CIFAR stem, accuracy and a confusion matrix."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.models import resnet18

CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CifarResNet(LightningModule):
    """``torchvision.models.resnet18`` (random init) for 32x32 images, as ``self.net``.

    Args:
        lr: peak learning rate of SGD (momentum 0.9, Nesterov) with a one-cycle schedule.
        weight_decay: L2 weight decay.
        cifar_stem: replace the 7x7 stride-2 stem and the max-pool by one 3x3 stride-1 convolution (the
            usual choice for 32x32 images; keeps 32x32 feature maps in ``layer1``).
    """

    def __init__(self, lr: float = 0.1, weight_decay: float = 5e-4, cifar_stem: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = resnet18(num_classes=len(CLASSES))
        if cifar_stem:
            self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        self.train_acc = MulticlassAccuracy(num_classes=len(CLASSES))
        self.val_acc = MulticlassAccuracy(num_classes=len(CLASSES))
        self.val_confmat = MulticlassConfusionMatrix(num_classes=len(CLASSES), normalize="true")
        self.example_input_array = torch.zeros(2, 3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_confmat.update(logits, y)  # drawn by MetricPlotCallback at epoch end
        self.log(
            "val_loss", nn.functional.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=self.hparams.weight_decay,
        )
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=max(int(steps), 1)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

"""torchvision's ResNet-18 on CIFAR-10 (downloaded by torchvision; a flagged synthetic stand-in offline)."""

from example_projects.cifar_resnet.data import CIFAR10DataModule
from example_projects.cifar_resnet.model import CifarResNet

__all__ = ["CIFAR10DataModule", "CifarResNet"]

"""MNIST through torchvision's download, for users who are online (see ``configs/mnist.yaml``).

The model is :class:`example_projects.digits.DigitsClassifier` with ``input_size: 28``.
"""

from example_projects.mnist.data import MNISTDataModule

__all__ = ["MNISTDataModule"]

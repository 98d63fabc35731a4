"""A small CNN digit classifier on scikit-learn's bundled handwritten digits (no download needed)."""

from example_projects.digits.data import DigitsDataModule
from example_projects.digits.model import DigitsClassifier

__all__ = ["DigitsClassifier", "DigitsDataModule"]

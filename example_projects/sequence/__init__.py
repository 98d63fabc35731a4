"""A small transformer on generated token sequences: 3-D activations and attention maps (offline, CPU)."""

from example_projects.sequence.data import SequenceDataModule
from example_projects.sequence.model import SequenceTransformer

__all__ = ["SequenceDataModule", "SequenceTransformer"]

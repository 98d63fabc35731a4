"""The public callbacks, one per file."""

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.model_summary import ModelSummaryCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback

__all__ = ["ActivationMapCallback", "CurvePlotCallback", "ModelSummaryCallback", "WeightHistogramCallback"]

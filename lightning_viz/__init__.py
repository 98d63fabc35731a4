"""lightning-viz: Lightning callbacks that make a model visible while it trains."""

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.model_summary import ModelSummaryCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.base import VizCallback

__version__ = "0.1.0"

__all__ = [
    "ActivationMapCallback",
    "CurvePlotCallback",
    "ModelSummaryCallback",
    "VizCallback",
    "WeightHistogramCallback",
    "__version__",
]

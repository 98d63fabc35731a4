"""lightning-viz: Lightning callbacks that make a model visible while it trains."""

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.metric_plot import MetricPlotCallback
from lightning_viz.callbacks.model_summary import ModelSummaryCallback
from lightning_viz.callbacks.report import ReportCallback
from lightning_viz.callbacks.training_health import TrainingHealthCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.base import VizCallback

__version__ = "0.1.0"

__all__ = [
    "ActivationMapCallback",
    "CurvePlotCallback",
    "MetricPlotCallback",
    "ModelSummaryCallback",
    "ReportCallback",
    "TrainingHealthCallback",
    "VizCallback",
    "WeightHistogramCallback",
    "__version__",
]

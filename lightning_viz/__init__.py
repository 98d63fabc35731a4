"""lightning-viz: Lightning callbacks that make a model visible while it trains."""

from lightning_viz.callbacks import (
    ActivationMapCallback,
    CurvePlotCallback,
    MetricPlotCallback,
    ModelSummaryCallback,
    ReportCallback,
    TrainingHealthCallback,
    WeightHistogramCallback,
)
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

"""The public callbacks, one per file."""

from lightning_viz.callbacks.activation_histogram import ActivationHistogramCallback
from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.embedding import EmbeddingCallback
from lightning_viz.callbacks.metric_plot import MetricPlotCallback
from lightning_viz.callbacks.model_graph import ModelGraphCallback
from lightning_viz.callbacks.model_summary import ModelSummaryCallback
from lightning_viz.callbacks.prediction_grid import PredictionGridCallback
from lightning_viz.callbacks.rank_view import RankViewCallback
from lightning_viz.callbacks.report import ReportCallback
from lightning_viz.callbacks.saliency import SaliencyCallback
from lightning_viz.callbacks.training_health import TrainingHealthCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.callbacks.weight_picture import WeightPictureCallback

__all__ = [
    "ActivationHistogramCallback",
    "ActivationMapCallback",
    "CurvePlotCallback",
    "EmbeddingCallback",
    "MetricPlotCallback",
    "ModelGraphCallback",
    "ModelSummaryCallback",
    "PredictionGridCallback",
    "RankViewCallback",
    "ReportCallback",
    "SaliencyCallback",
    "TrainingHealthCallback",
    "WeightHistogramCallback",
    "WeightPictureCallback",
]

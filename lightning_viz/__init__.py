"""lightning-viz: Lightning callbacks that make a model visible while it trains.

The callbacks are imported on first use (``lightning_viz.WeightHistogramCallback``, ``from lightning_viz
import ...``), so that the rendering process, which imports only ``lightning_viz.render``, starts without
importing torch and Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationHistogramCallback": "lightning_viz.callbacks",
    "ActivationMapCallback": "lightning_viz.callbacks",
    "CurvePlotCallback": "lightning_viz.callbacks",
    "EmbeddingCallback": "lightning_viz.callbacks",
    "MetricPlotCallback": "lightning_viz.callbacks",
    "ModelGraphCallback": "lightning_viz.callbacks",
    "ModelSummaryCallback": "lightning_viz.callbacks",
    "PredictionGridCallback": "lightning_viz.callbacks",
    "RankViewCallback": "lightning_viz.callbacks",
    "ReportCallback": "lightning_viz.callbacks",
    "SaliencyCallback": "lightning_viz.callbacks",
    "TrainingHealthCallback": "lightning_viz.callbacks",
    "WeightHistogramCallback": "lightning_viz.callbacks",
    "WeightPictureCallback": "lightning_viz.callbacks",
    "VizCallback": "lightning_viz.core.base",
}

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
    "VizCallback",
    "WeightHistogramCallback",
    "WeightPictureCallback",
    "__version__",
]

if TYPE_CHECKING:
    from lightning_viz.callbacks import (
        ActivationHistogramCallback,
        ActivationMapCallback,
        CurvePlotCallback,
        EmbeddingCallback,
        MetricPlotCallback,
        ModelGraphCallback,
        ModelSummaryCallback,
        PredictionGridCallback,
        RankViewCallback,
        ReportCallback,
        SaliencyCallback,
        TrainingHealthCallback,
        WeightHistogramCallback,
        WeightPictureCallback,
    )
    from lightning_viz.core.base import VizCallback


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

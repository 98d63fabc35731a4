"""A torchmetrics ``Metric`` drawn with its own ``.plot()``, and the NPZ record that draws it again.

:class:`~lightning_viz.callbacks.metric_plot.MetricPlotCallback` saves, beside each picture, the metric's
value (``value`` or ``value_0``, ``value_1_2``, ... for nested tuples) with what ``lightning-viz render``
needs to draw it again without the run: the metric's class path, the arguments that rebuild it (read back
from the attributes its ``__init__`` stores, such as ``num_classes``), the nesting of the value, the
attribute name and the epoch. :func:`from_record` turns such a file back into :func:`render_metric`'s input.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure

RECORD_KEYS = ("metric_class", "metric_init", "value_structure", "name", "epoch")
_PLAIN = (type(None), bool, int, float, str)


def render_metric(data: Mapping[str, Any]) -> Figure:
    """Draw ``data["value"]`` with ``data["metric"].plot`` on a new lightning-viz figure."""
    fig = new_figure(data.get("width", 6.0), data.get("height", 5.0))
    ax = fig.add_subplot()
    data["metric"].plot(data["value"], ax=ax)
    ax.set_title(f"{data['name']} ({type(data['metric']).__name__}), epoch {data['epoch']}")
    return fig


def flatten_arrays(value: Any, prefix: str = "value") -> dict[str, np.ndarray]:
    """``{"value": array}`` or ``{"value_0": ..., "value_1_2": ...}`` for nested tuples, to save as NPZ."""
    if isinstance(value, torch.Tensor):
        return {prefix: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()}
    out: dict[str, np.ndarray] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value or ())
    for k, v in items:
        out.update(flatten_arrays(v, f"{prefix}_{k}"))
    return out


def value_structure(value: Any) -> Any:
    """The nesting of a metric value: ``"tensor"``, or ``{"tuple"|"list"|"dict": [...] | {...}}``."""
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, dict):
        return {"dict": {str(k): value_structure(v) for k, v in value.items()}}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [value_structure(v) for v in value]}
    return None


def _plain(v: Any) -> Any:
    """A JSON-plain copy of an init argument read off a metric, or ``...`` when it has none."""
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 1000 else ...
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v):
        return list(v)
    return ...


def init_arguments(metric: Any) -> dict[str, Any]:
    """The arguments of ``type(metric).__init__`` that the metric keeps as attributes of the same name."""
    out: dict[str, Any] = {}
    try:
        params = inspect.signature(type(metric).__init__).parameters.values()
    except (TypeError, ValueError):
        return out
    for p in params:
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        v = _plain(getattr(metric, p.name, ...))
        if v is not ...:
            out[p.name] = v
    return out


def metric_record(metric: Any, value: Any, name: str, epoch: int) -> dict[str, np.ndarray]:
    """What is saved beside a metric's picture: its value's arrays and what rebuilds the picture.

    Empty when the value holds no tensor (nothing to save, nothing to redraw).
    """
    arrays = flatten_arrays(value)
    if not arrays:
        return {}
    cls = type(metric)
    arrays.update(
        metric_class=np.array(f"{cls.__module__}.{cls.__qualname__}"),
        metric_init=np.array(json.dumps(init_arguments(metric))),
        value_structure=np.array(json.dumps(value_structure(value))),
        name=np.array(name),
        epoch=np.array(int(epoch)),
    )
    return arrays


def _unflatten(arrays: Mapping[str, np.ndarray], structure: Any, prefix: str) -> Any:
    if structure == "tensor":
        return torch.from_numpy(np.asarray(arrays[prefix]))
    (kind, items), *_ = structure.items()
    if kind == "dict":
        return {k: _unflatten(arrays, s, f"{prefix}_{k}") for k, s in items.items()}
    parts = [_unflatten(arrays, s, f"{prefix}_{i}") for i, s in enumerate(items)]
    return tuple(parts) if kind == "tuple" else parts


def build_metric(class_path: str, init: Mapping[str, Any]) -> Any:
    """A new metric of ``class_path`` built with ``init`` (its ``.plot`` is all that is used)."""
    module, _, qualname = class_path.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj(**init)


def from_record(arrays: Mapping[str, np.ndarray], name: str, epoch: int) -> dict[str, Any] | None:
    """:func:`render_metric`'s input from a saved record; ``None`` when the file has no metric class.

    ``name`` and ``epoch`` are used when the record lacks them (they are also in its file name).
    """
    if "metric_class" not in arrays:
        return None
    structure = json.loads(str(arrays["value_structure"])) if "value_structure" in arrays else "tensor"
    return {
        "metric": build_metric(str(arrays["metric_class"]), json.loads(str(arrays["metric_init"]))),
        "value": _unflatten(arrays, structure, "value"),
        "name": str(arrays["name"]) if "name" in arrays else name,
        "epoch": int(arrays["epoch"]) if "epoch" in arrays else epoch,
    }

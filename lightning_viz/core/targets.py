"""Targets and predictions: the label tensor of a batch, the prediction tensor of a model's output, the task
they make, and each example's loss, prediction and confidence.

The rule for the target of a collated batch: a tuple or list ``(x, y, ...)`` gives its second element; a
dict the first of the keys ``y``, ``label``, ``labels``, ``target``, ``targets``. The prediction of an
output: a tensor is itself; a dict its ``logits`` (else its first float tensor); a tuple or list its first
float tensor.

The task (:func:`detect_task`), from the shapes and dtypes of prediction ``p`` and target ``y``:

- ``classification``: integer ``y`` of shape ``[N]``, ``p`` of shape ``[N, C]`` (``C >= 2``): softmax;
- ``binary``: ``y`` of shape ``[N]`` (or ``[N, 1]``) with values 0 and 1, ``p`` one logit per example;
- ``sequence``: integer ``y`` of shape ``[N, T, ...]``, ``p`` of shape ``[N, T, ..., C]`` (per-token classes,
  ``-100`` ignored as in ``cross_entropy``);
- ``regression``: float ``y`` with as many values per example as ``p``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F

from lightning_viz.core.model_input import first_float_tensor

Task = Literal["classification", "binary", "sequence", "regression"]
TASKS: tuple[str, ...] = ("auto", "classification", "binary", "sequence", "regression")
TARGET_KEYS = ("y", "label", "labels", "target", "targets")
IGNORE = -100  # the target cross_entropy ignores


def target_of(batch: Any) -> torch.Tensor | None:
    """The target tensor of a collated batch by the rule above, or ``None``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        return next((batch[k] for k in TARGET_KEYS if isinstance(batch.get(k), torch.Tensor)), None)
    return None


def prediction_of(output: Any) -> torch.Tensor | None:
    """The prediction tensor of a model output by the rule above, or ``None``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    return first_float_tensor(output)


def detect_task(p: torch.Tensor, y: torch.Tensor) -> Task | None:
    """The task of prediction ``p`` and target ``y`` (see the module docstring), or ``None``."""
    if p.ndim == 0 or y.ndim == 0 or p.shape[0] != y.shape[0] or not p.is_floating_point():
        return None
    integer = not y.is_floating_point()
    if integer and p.ndim == y.ndim + 1 and p.shape[:-1] == y.shape and p.shape[-1] >= 2:
        return "classification" if y.ndim == 1 else "sequence"
    if p[0].numel() == 1 and y[0].numel() == 1:
        values = torch.unique(y.detach().reshape(-1).float())
        if values.numel() <= 2 and bool(((values == 0) | (values == 1)).all()):
            return "binary"
    if y.is_floating_point() and p[0].numel() == y[0].numel():
        return "regression"
    return None


@dataclass
class Judged:
    """Each example's loss, predicted class (or value) and confidence, for one task.

    Attributes:
        loss: ``[N]`` float32: cross-entropy (classification, sequence: the mean over the example's
            tokens), binary cross-entropy, or the mean squared error of the example's values.
        pred: ``[N]`` predicted class or value (sequence: ``[N, T...]`` tokens).
        conf: ``[N]`` probability of the predicted class (regression: NaN; sequence: token accuracy).
        true: ``[N]`` target class or value (sequence: ``[N, T...]`` tokens).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    conf: torch.Tensor
    true: torch.Tensor


def judge(task: Task, p: torch.Tensor, y: torch.Tensor) -> Judged:
    """Per-example loss, prediction and confidence of prediction ``p`` against target ``y``."""
    p = p.detach().float()
    y = y.detach()
    n = p.shape[0]
    if task == "classification":
        t = y.long()
        probs = p.softmax(-1)
        conf, pred = probs.max(-1)
        return Judged(F.cross_entropy(p, t, reduction="none"), pred, conf, t)
    if task == "binary":
        logit, t = p.reshape(n), y.reshape(n).float()
        prob = logit.sigmoid()
        pred = (prob > 0.5).long()
        conf = torch.where(pred == 1, prob, 1 - prob)
        return Judged(F.binary_cross_entropy_with_logits(logit, t, reduction="none"), pred, conf, t.long())
    if task == "sequence":
        t = y.long()
        classes = p.shape[-1]
        tokens = F.cross_entropy(p.reshape(-1, classes), t.reshape(-1), reduction="none", ignore_index=IGNORE)
        valid = (t != IGNORE).reshape(n, -1).float()
        count = valid.sum(1).clamp_min(1)
        pred = p.argmax(-1)
        right = ((pred == t) & (t != IGNORE)).reshape(n, -1).float().sum(1)
        return Judged((tokens.reshape(n, -1) * valid).sum(1) / count, pred, right / count, t)
    pred, t = p.reshape(n, -1), y.float().reshape(n, -1)
    loss = (pred - t).square().mean(1)
    return Judged(loss, pred[:, 0], torch.full((n,), float("nan"), device=p.device), t[:, 0])

"""Embeddings: the feature vectors a layer gives a fixed sample, and their 2-D principal components.

:func:`features_of` turns a layer's output (or the input of the model's last ``nn.Linear``, the
"penultimate" features a classifier head reads) into one row per example; :func:`pca_2d` projects the rows
onto their first two principal components, exactly (an SVD of the centred rows in float64), with the sign of
each component fixed so that pictures of successive epochs do not flip at random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lightning_viz.core.model_input import first_float_tensor

Pool = Literal["mean", "flatten"]
POOLS: tuple[str, ...] = ("mean", "flatten")


def features_of(value: Any, pool: Pool, *, channels_last: bool = False) -> torch.Tensor | None:
    """One row of features per example from a layer's input or output (its first float tensor): ``[N, D]``
    as is; more dimensions averaged over the positions (``"mean"``) or flattened (``"flatten"``). The
    features lie along the second dimension (a convolution's ``[N, C, H, W] -> [N, C]``) or, with
    ``channels_last``, along the last (a Linear's ``[N, T, D] -> [N, D]``); a nested tensor (examples of
    different lengths) is averaged over each example's own positions. ``None`` when there is no such tensor,
    or it has fewer than two dimensions."""
    t = value if isinstance(value, torch.Tensor) else first_float_tensor(value)
    if t is None or t.ndim < 2 or not t.is_floating_point():
        return None
    t = t.detach()
    # a TransformerEncoder's fast path (eval mode, a padding mask) gives nested tensors: each example its tokens
    if t.is_nested:
        rows = [
            x.reshape(-1, x.shape[-1]).mean(0) if channels_last else x.flatten(1).mean(1) for x in t.unbind()
        ]
        return torch.stack(rows).float()
    if t.ndim > 2 and pool == "flatten":
        t = t.flatten(1)
    elif t.ndim > 2:
        t = t.flatten(1, -2).mean(1) if channels_last else t.flatten(2).mean(2)
    return t.float()


@dataclass
class Projection:
    """The first two principal components of the finite rows.

    Attributes:
        coords: ``[n, 2]`` float64: each kept row's coordinates on the two components (zeros where there is
            no second component).
        explained: ``[2]``: the share of the total variance each component explains.
        kept: ``[N]`` bool: the rows with only finite values (the others are left out).
        components: ``[2, D]``: the components (unit vectors; zeros where there is none).
    """

    coords: np.ndarray
    explained: np.ndarray
    kept: np.ndarray
    components: np.ndarray


def pca_2d(features: np.ndarray | torch.Tensor) -> Projection:
    """Exact 2-D PCA of ``features`` (``[N, D]``): rows with NaN/Inf left out, the rest centred, an SVD in
    float64. Each component's sign is chosen so that its entry of largest magnitude is positive (the
    convention of scikit-learn's ``svd_flip``)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    kept = torch.isfinite(x).all(1) if x.numel() else torch.zeros(len(x), dtype=torch.bool)
    x = x[kept]
    n, d = x.shape
    coords = torch.zeros(n, 2, dtype=torch.float64)
    comps = torch.zeros(2, d, dtype=torch.float64)
    explained = torch.zeros(2, dtype=torch.float64)
    if n >= 2 and d >= 1:
        centred = x - x.mean(0)
        _, s, vt = torch.linalg.svd(centred, full_matrices=False)
        k = min(2, len(s))
        top = vt[:k]
        biggest = top.abs().argmax(1)
        signs = torch.sign(top[torch.arange(k), biggest])
        top = top * torch.where(signs == 0, 1.0, signs)[:, None]
        comps[:k] = top
        coords[:, :k] = centred @ top.T
        total = float(s.square().sum())
        if total > 0:
            explained[:k] = s[:k].square() / total
    return Projection(coords.numpy(), explained.numpy(), kept.numpy(), comps.numpy())

"""The plain-data records ActivationMapCallback's figures are drawn from, built from one layer's output.

Per hooked layer, :func:`picture_record` turns what the layer passes on (or its output) into a few channels
of one example (:func:`feature_record`, an image-like output) or a capped 2-d view (:func:`heatmap_record`),
as CPU arrays; :func:`input_image` and :func:`input_signal` cut the input shown beside them. After the
reduce phase, :func:`stats_record` turns each layer's summed statistics into the published
``"activation_stats"`` record, :func:`add_to_history` appends it to the statistics over training, and
:func:`maps_data`, :func:`heatmaps_data` and :func:`stats_data` assemble the data each figure is drawn
(and drawn again) from. Plain functions over tensors, arrays and dicts; no hooks, no callback state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_viz.core.activation_stats import (
    NSUMS,
    STATS,
    first_tensor,
    output_sums,
    saturation_bounds,
    stat_view,
    stats_from_sums,
)
from lightning_viz.core.passed import Passed, is_activation
from lightning_viz.core.sharding import clean_name
from lightning_viz.core.warn import warn_once

CONV1D_TYPES = (nn.Conv1d, nn.ConvTranspose1d)
HISTORY_STATS = (*STATS, "nonfinite")
HEATMAP_ROWS, HEATMAP_COLS = 64, 128

History = dict[str, dict[str, list[Any]]]  # layer -> "step", each statistic, "ran": one value per capture


# ---------------------------------------------------------------------- one layer's output
def rank_channels(per_channel: torch.Tensor, order: str, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``k`` channels shown (rows of ``[C, ...]`` values) and their scores, by the ``channel_order`` rule.

    ``mean_activation`` / ``variance``: highest mean / population variance first, ties to the lower index;
    ``first``: channels ``0 .. k-1`` (no score).
    """
    flat = per_channel.flatten(1).float()
    if order == "first":
        return torch.arange(min(k, flat.shape[0])), None
    scores = flat.var(dim=1, correction=0) if order == "variance" else flat.mean(dim=1)
    chans = torch.sort(scores, descending=True, stable=True).indices[:k]
    return chans.cpu(), scores[chans]


def feature_record(name: str, module: nn.Module, a: torch.Tensor, i: int, k: int, order: str) -> dict:
    """Example ``i``'s top-``k`` channels of an ``N, C, H, W`` (or ``N, C, D, H, W``) output, as CPU arrays."""
    ex = a[i]
    chans, scores = rank_channels(ex, order, k)
    maps = ex[chans.to(ex.device)]
    note = ""
    if maps.ndim == 4:
        maps, note = maps[:, maps.shape[1] // 2], f"middle depth slice of {maps.shape[1]}"
    return {
        "name": name,
        "kind": type(module).__name__,
        "maps": maps.float().cpu().numpy(),
        "channels": chans.numpy(),
        "scores": np.full(len(chans), np.nan) if scores is None else scores.cpu().numpy(),
        "total_channels": int(ex.shape[0]),
        "order": order,
        "note": note,
        "nonfinite": int(np.count_nonzero(~np.isfinite(maps.float().cpu().numpy()))),
    }


def heatmap_record(name: str, module: nn.Module, a: torch.Tensor, i: int, k: int, order: str) -> dict | None:
    """A capped 2-d view of a non-image output: ``N, F`` examples x features; ``N, C, L`` of a 1-d convolution:
    example ``i``'s top-``k`` channels (``row_ticks``: their channel numbers) x positions; other ``N, T, F``:
    example ``i``'s time steps x features. ``None`` for other ranks (statistics only)."""
    ticks: list[int] | None = None
    if a.ndim == 2:
        values, rows, cols = a[:HEATMAP_ROWS], "examples", "features"
        notes = [f"{values.shape[0]} of {a.shape[0]} rows"] if values.shape[0] < a.shape[0] else []
    elif a.ndim == 3 and isinstance(module, CONV1D_TYPES):
        chans, _ = rank_channels(a[i], order, k)
        values, rows, cols, ticks = (
            a[i][chans.to(a.device)],
            f"channel (example {i})",
            "position",
            chans.tolist(),
        )
        words = {"mean_activation": "highest mean", "variance": "highest variance", "first": "first"}[order]
        notes = [f"{len(ticks)} of {a.shape[1]} channels, {words}"] if len(ticks) < a.shape[1] else []
    elif a.ndim == 3:
        values, rows, cols = a[i, :HEATMAP_ROWS], f"time steps (example {i})", "features"
        notes = [f"{values.shape[0]} of {a.shape[1]} rows"] if values.shape[0] < a.shape[1] else []
    else:
        return None  # 1-d or 6-d+ outputs: statistics only
    if values.shape[1] > HEATMAP_COLS:
        notes.append(f"first {HEATMAP_COLS} of {values.shape[1]} columns")
    shown = values[:, :HEATMAP_COLS].float().cpu().numpy()
    rec = {
        "name": name,
        "kind": type(module).__name__,
        "values": shown,
        "rows": rows,
        "cols": cols,
        "note": ", ".join(notes),
        "nonfinite": int(np.count_nonzero(~np.isfinite(shown))),
    }
    if ticks is not None:
        rec["row_ticks"] = ticks
    return rec


def picture_record(
    name: str,
    module: nn.Module,
    own: torch.Tensor | None,
    a: torch.Tensor,
    of: str,
    sample_index: int,
    k: int,
    order: str,
) -> dict | None:
    """What layer ``name`` shows: ``a`` (what it passes on, as :func:`stat_view` sees it, described by
    ``of``) when it has the shape of the layer's own output ``own``, else ``own``; a feature-map record of
    an image-like tensor, else a heatmap record, with ``shows`` saying which tensor; ``None`` when there is
    nothing to draw (a 1-d tensor, or one of 6 dimensions or more)."""
    same = own is None or (own.shape == a.shape and not own.is_complex() and own.numel() > 0)
    shown, shows = (a, of) if same else (stat_view(own), f"output of {name} ({type(module).__name__})")
    if shown.ndim < 2:
        return None
    args = (name, module, shown, min(sample_index, shown.shape[0] - 1), k)
    image_like = shown.ndim in (4, 5)
    rec = feature_record(*args, order) if image_like else heatmap_record(*args, order)
    if rec is not None:
        rec["shows"] = shows
    return rec


def layer_meta(passed: Passed, of: str, bounds: tuple[float, float] | None) -> dict[str, Any]:
    """What a layer's statistics are of: ``of`` (in words), the tracker's ``source``, the activation module
    that produced it (``None`` unless one did) and whether its bounds define the saturated fraction."""
    return {
        "of": of,
        "source": passed.source,
        "activation": type(passed.module).__name__ if is_activation(passed.module) else None,
        "bounded": bounds is not None,
    }


# ---------------------------------------------------------------------- the input beside them
def input_image(x: Any, i: int) -> np.ndarray | None:
    """Example ``i`` of an image-like input (``N, C, H, W``; middle depth slice of ``N, C, D, H, W``) as
    ``[C, H, W]`` (the first channel only unless C is 1 or 3), or ``None`` when the input is no image."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5) or not x.is_floating_point():
        return None
    ex = x[min(i, x.shape[0] - 1)].float()
    ex = ex[:, ex.shape[1] // 2] if ex.ndim == 4 else ex
    return (ex if ex.shape[0] in (1, 3) else ex[:1]).cpu().numpy()


def input_signal(x: Any, i: int, source: str) -> dict | None:
    """Example ``i`` of a 1-d input ``N, C, L`` as ``[C, L]`` values (at most :data:`HEATMAP_ROWS` channels
    and ``4 * HEATMAP_COLS`` positions), or ``None`` when the input is no such signal."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        return None
    ex = x[min(i, x.shape[0] - 1)].float()
    values = ex[:HEATMAP_ROWS, : 4 * HEATMAP_COLS].cpu().numpy()
    notes = [f"{values.shape[0]} of {ex.shape[0]} channels"] if values.shape[0] < ex.shape[0] else []
    if values.shape[1] < ex.shape[1]:
        notes.append(f"first {values.shape[1]} of {ex.shape[1]} positions")
    return {"values": values, "example": i, "source": source, "note": ", ".join(notes)}


# ---------------------------------------------------------------------- the reduce phase and after
def layer_sums(
    layer_names: Sequence[str], acc: Mapping[str, torch.Tensor], device: torch.device, *, failed: bool
) -> torch.Tensor:
    """The ``[layers, NSUMS]`` float64 sums a rank adds to the reduction, one row per layer in
    ``layer_names`` order: the layer's sums from ``acc``, zeros for a layer that did not run (all zeros
    when the capture ``failed``: a placeholder of the same shape). On the device of the sums in ``acc``,
    else on ``device``."""
    dev = next((v.device for v in acc.values()), device)
    sums = torch.zeros(len(layer_names), NSUMS, dtype=torch.float64, device=dev)
    if not failed:
        for row, name in enumerate(layer_names):
            if name in acc:
                sums[row] = acc[name].to(dev)
    return sums


def stats_record(
    layer_names: Sequence[str], modules: Mapping[str, nn.Module], sums: np.ndarray, meta: Mapping[str, dict]
) -> dict[str, Any]:
    """The published ``"activation_stats"`` record: per layer, the statistics of its summed row of ``sums``
    (:func:`~lightning_viz.core.activation_stats.stats_from_sums`) with ``of`` and ``source`` from its
    ``meta`` (:func:`layer_meta`); ``_types``: each layer's class name (``"?"`` when it is not in
    ``modules``); ``_activation``: the activation module its statistics were taken after, if any."""
    published: dict[str, Any] = {"_types": {}, "_activation": {}}
    for name, row in zip(layer_names, sums):
        module = modules.get(name)
        info = meta.get(name, {})
        stats = stats_from_sums(row, bool(info.get("bounded")))
        published[name] = {**stats, "of": info.get("of"), "source": info.get("source")}
        published["_types"][name] = type(module).__name__ if module is not None else "?"
        published["_activation"][name] = info.get("activation")
    return published


def add_to_history(
    history: History, step: int, layer_names: Sequence[str], published: Mapping[str, Any]
) -> tuple[dict[str, float], list[tuple[str, int]]]:
    """Append each layer's statistics of :func:`stats_record` at ``step`` to ``history`` (in place); returns
    the scalars to log (``activation/<layer>/<statistic>``, finite ones; ``.../nonfinite`` when NaN/Inf were
    counted) and the layers with NaN/Inf values, with their counts, in layer order."""
    scalars: dict[str, float] = {}
    nonfinite: list[tuple[str, int]] = []
    for name in layer_names:
        stats = published[name]
        hist = history.setdefault(name, {"step": [], **{k: [] for k in HISTORY_STATS}, "ran": []})
        hist.setdefault("nonfinite", [0] * len(hist["step"]))
        hist.setdefault("ran", [True] * len(hist["step"]))
        hist["step"].append(step)
        hist["ran"].append(bool(stats["ran"]))
        for k in STATS:
            v = stats[k]
            hist[k].append(v)
            if math.isfinite(v):
                scalars[f"activation/{name}/{k}"] = v
        bad = int(stats["nonfinite"])
        hist["nonfinite"].append(bad)
        if bad:
            scalars[f"activation/{name}/nonfinite"] = float(bad)
            nonfinite.append((name, bad))
    return scalars, nonfinite


def copy_history(history: Mapping[str, Mapping[str, Sequence[Any]]]) -> History:
    """A copy of the statistics over training whose lists the next capture does not extend."""
    return {n: {k: list(v) for k, v in h.items()} for n, h in history.items()}


def history_from_state(history: Mapping[str, Mapping[str, Sequence[float]]]) -> History:
    """The statistics over training as a checkpoint saved them; an older state has no ``nonfinite`` or
    ``ran`` list, and a missing statistic is NaN at each step."""
    out: History = {}
    for n, h in history.items():
        steps = list(h.get("step", []))
        fill: dict[str, Any] = {"nonfinite": 0, "ran": True}
        out[n] = {
            "step": steps,
            **{
                k: list(h[k]) if len(h.get(k, [])) == len(steps) else [fill.get(k, math.nan)] * len(steps)
                for k in (*HISTORY_STATS, "ran")
            },
        }
    return out


# ---------------------------------------------------------------------- what each figure is drawn from
def maps_data(
    step: int, sample_index: int, x: Any, source: str, color_scale: str, maps: list[dict], not_run: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The feature-map figure's data (for ``render_feature_maps``), with example ``sample_index`` of the
    input ``x`` beside the maps when it is an image (:func:`input_image`), and the arrays saved to redraw it."""
    image = input_image(x, sample_index)
    data = {
        "step": step,
        "sample_index": sample_index,
        "input": image,
        "input_source": source,
        "color_scale": color_scale,
        "layers": maps,
        "not_run": not_run,
    }
    arrays = {
        "step": np.array(step),
        "sample_index": np.array(sample_index),
        "input_source": np.array(source),
        "color_scale": np.array(color_scale),
        "not_run": np.array(not_run, dtype=str),
    }
    arrays["layer_names"] = np.array([m["name"] for m in maps])
    if image is not None:
        arrays["input"] = image
    for key in ("kind", "total_channels", "order", "note", "nonfinite", "shows"):  # enough to redraw
        arrays[f"layer_{key}"] = np.array([m[key] for m in maps])
    for j, m in enumerate(maps):
        arrays.update({f"{key}_{j}": m[key] for key in ("maps", "channels", "scores")})
    return data, arrays


def heatmaps_data(
    step: int, heat: list[dict], not_run: list[str], x: Any, sample_index: int, source: str
) -> dict[str, Any]:
    """The heatmap figure's data (for ``render_heatmaps``); with 1-d convolutions among the layers, the
    input signal ``x`` beside them (:func:`input_signal`)."""
    data: dict[str, Any] = {"step": step, "layers": heat, "not_run": not_run}
    if any("row_ticks" in p for p in heat):  # 1-d convolutions: the input signal beside them
        signal = input_signal(x, sample_index, source)
        if signal is not None:
            data["input"] = signal
    return data


def stats_data(saturation_threshold: float, history: History, layer_of: Mapping[str, str]) -> dict[str, Any]:
    """The statistics-over-training figure's data (for ``render_activation_stats``)."""
    layers = copy_history(history)
    return {
        "saturation_threshold": saturation_threshold,
        "layers": layers,
        "of": {n: layer_of[n] for n in layers if n in layer_of},
    }


class PassedRecords:
    """What one capture forward collects per hooked layer (a ``capture_passed`` callback: :meth:`add`): the
    sums of what the layer passes on, on its device; what that tensor is (``meta``); and, when ``pictures``,
    one picture record per layer (rank 0 only).

    Args:
        saturation_threshold: "near the bounds" of a bounded activation, as a fraction of its half range.
        sample_index: the example the pictures show.
        max_channels: most channels a picture shows.
        channel_order: which channels a picture shows (``rank_channels``).
        pictures: collect picture records too.
    """

    def __init__(
        self,
        saturation_threshold: float,
        sample_index: int,
        max_channels: int,
        channel_order: str,
        *,
        pictures: bool,
    ) -> None:
        self.saturation_threshold, self.sample_index = saturation_threshold, sample_index
        self.max_channels, self.channel_order = max_channels, channel_order
        self.acc: dict[str, torch.Tensor] = {}
        self.meta: dict[str, dict[str, Any]] = {}
        self.pictures: dict[str, dict[str, Any]] | None = {} if pictures else None

    def add(self, name: str, module: nn.Module, output: Any, passed: Passed) -> None:
        """Layer ``name`` (``module``) returned ``output`` and passes on ``passed``."""
        own = first_tensor(output)
        t = first_tensor(passed.tensor)
        if t is None or t.numel() == 0 or t.is_complex():
            what = type(output).__name__ + (
                "" if own is None else f" of shape {tuple(own.shape)}, {own.dtype}"
            )
            warn_once(
                ("ActivationMapCallback", "skip", name),
                f"ActivationMapCallback: layer {name!r} is skipped: its output ({what}) holds no real, "
                "non-empty tensor.",
            )
            return
        bounds = saturation_bounds(passed.module)
        a = stat_view(t)
        vec = output_sums(a, bounds, self.saturation_threshold)
        self.acc[name] = self.acc[name] + vec if name in self.acc else vec
        of = clean_name(passed.describe(name))
        self.meta.setdefault(name, layer_meta(passed, of, bounds))
        if self.pictures is None or name in self.pictures:
            return
        # the picture shows what the layer passes on when it has the output's shape, else the output
        rec = picture_record(
            name, module, own, a, of, self.sample_index, self.max_channels, self.channel_order
        )
        if rec is not None:
            self.pictures[name] = rec

"""Figures of activations: feature-map grids beside the input, and heatmaps (statistics over training: :mod:`~lightning_viz.render.activation_stats`).

Pure functions: plain data (numpy arrays, lists, numbers) in, a matplotlib ``Figure`` out. They never touch
pyplot state; the caller closes the figure (:func:`lightning_viz.render.close_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import (
    Room,
    colorbar_room,
    fit_axes,
    flatten_ticks,
    nice_ticks,
    place_grid,
    suptitle,
)
from lightning_viz.render._stamp import stamp_labels

ORDER_WORDS = {
    "mean_activation": "highest mean activation",
    "variance": "highest variance",
    "first": "first channels",
}
NONFINITE_COLOR = "#ff00ff"  # NaN/Inf cells of maps and heatmaps
GRID_PAD = 1
PAD_VALUE = 2.0  # drawn in white: above the colour map's range
CBAR_WIDTH, CBAR_GAP = 0.12, 0.15  # inches: a heatmap's colour bar and its gap to the heatmap


def _input_title(sample_index: int, source: str = "") -> str:
    where = "example_input_array, " if source == "example_input_array" else ""
    return f"input ({where}example {sample_index})"


def _show_input(ax: Axes, image: np.ndarray, sample_index: int, source: str = "") -> None:
    """An input example ``[C, H, W]``: grey for one channel, RGB (rescaled to [0, 1]) for three."""
    img = np.asarray(image, dtype=np.float32)
    if img.shape[0] == 3:
        lo, hi = float(img.min()), float(img.max())
        ax.imshow(np.transpose((img - lo) / max(hi - lo, 1e-12), (1, 2, 0)), interpolation="nearest")
    else:
        ax.imshow(img[0], cmap="gray", interpolation="nearest")
    ax.set_title(_input_title(sample_index, source), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _title_with_nonfinite(ax: Axes, title: str, nonfinite: int) -> None:
    """The axes title; with NaN/Inf values shown, a red note on how many (drawn in NONFINITE_COLOR)."""
    if nonfinite > 0:
        title += f"\n{nonfinite:,} NaN/Inf values shown in magenta"
    ax.set_title(title, fontsize=9, color="red" if nonfinite > 0 else "black")


def tile_grid(tiles: np.ndarray, nrow: int, padding: int, pad_value: float) -> np.ndarray:
    """``[K, H, W]`` tiles laid out ``nrow`` to a row with ``padding`` pixels of ``pad_value`` around each
    (the layout of ``torchvision.utils.make_grid``, in numpy, so the render process needs no torch)."""
    k, h, w = tiles.shape
    if k == 1:  # as make_grid: a single tile, unpadded
        return tiles[0]
    cols = min(nrow, k)
    rows = math.ceil(k / cols)
    step_h, step_w = h + padding, w + padding
    grid = np.full((step_h * rows + padding, step_w * cols + padding), pad_value, dtype=tiles.dtype)
    for i in range(k):
        y, x = divmod(i, cols)
        grid[y * step_h + padding : (y + 1) * step_h, x * step_w + padding : (x + 1) * step_w] = tiles[i]
    return grid


def feature_grid(
    maps: np.ndarray, color_scale: str = "per_map"
) -> tuple[np.ndarray, int, tuple[float, float]]:
    """Tile ``[K, H, W]`` maps for display.

    Args:
        maps: the maps.
        color_scale: ``"per_map"``: each channel scaled to [0, 1] on its own finite values (a constant map
            is 0); ``"absolute"``: the values as they are, on one range for all the maps, which includes 0
            (an all-zero map is drawn as 0, never stretched).

    Returns:
        The ``[H', W']`` grid (NaN/Inf as NaN; the padding between tiles lies above the range, drawn white),
        the number of tiles per row, and the colour range ``(vmin, vmax)``.
    """
    k = int(maps.shape[0])
    nrow = max(1, math.ceil(math.sqrt(k)))
    tiles = np.array(maps, dtype=np.float32, copy=True)
    tiles[~np.isfinite(tiles)] = np.nan  # NaN/Inf stay NaN (drawn as "bad")
    if color_scale == "absolute":
        ok = np.isfinite(tiles)
        lo = min(float(tiles[ok].min()), 0.0) if ok.any() else 0.0
        hi = max(float(tiles[ok].max()), 0.0) if ok.any() else 0.0
        if hi - lo <= 0:
            hi = lo + 1.0
        return tile_grid(tiles, nrow, GRID_PAD, hi + PAD_VALUE * (hi - lo)), nrow, (lo, hi)
    for tile in tiles:
        ok = np.isfinite(tile)
        lo, hi = (float(tile[ok].min()), float(tile[ok].max())) if ok.any() else (0.0, 1.0)
        tile -= lo
        tile /= max(hi - lo, 1e-5)
    return tile_grid(tiles, nrow, GRID_PAD, PAD_VALUE), nrow, (0.0, 1.0)


def _image_width(box: tuple[float, float, float, float], shape: tuple[int, ...]) -> tuple[float, float]:
    """Left edge and width (inches) of an ``aspect="equal"`` image centred in an axes box."""
    x, _, w, h = box
    drawn = min(w, h * shape[1] / max(shape[0], 1))
    return x + (w - drawn) / 2, drawn


def _not_run(data: Mapping[str, Any]) -> str:
    """A second title line naming the selected layers that did not run in this capture pass, if any."""
    names = [str(n) for n in data.get("not_run", ())]
    if not names:
        return ""
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"\nnot run in this pass (nothing to show): {shown}"


def render_feature_maps(data: Mapping[str, Any]) -> Figure:
    """The input example beside one labelled feature-map grid per layer.

    Args:
        data: ``step``; ``sample_index``; ``input`` (``[C, H, W]`` array or ``None``); optional
            ``input_source`` (``"example_input_array"`` says so in the input's title); ``color_scale``
            (``"absolute"``: one colour scale per layer with its colour bar; ``"per_map"``, the default for
            data without it: each channel stretched to its own range); ``layers``: a list of dicts with
            ``name``, ``kind`` (module type), ``maps`` (``[K, H, W]``), ``channels`` (the ``K`` channel indices
            shown, in display order), ``total_channels``, ``order`` (the channel rule), and optional ``note``
            and ``shows`` (which tensor the maps are, e.g. ``"output of act1 (ReLU) after conv1"``).

    Returns:
        A figure with one axes for the input (when given) and one per layer, each titled with the layer name,
        its type, the channels shown and what the maps are; every tile is labelled with its channel index.
    """
    layers: Sequence[Mapping[str, Any]] = data["layers"]
    image = data.get("input")
    absolute = data.get("color_scale", "per_map") == "absolute"
    n = max(1, len(layers))
    fig = new_figure(10.0 if image is not None else 7.5, 0.6 + 3.0 * n, layout=None)
    how = "one colour scale per layer" if absolute else "each channel scaled to its own range"
    top = suptitle(fig, f"Feature maps at step {data.get('step', '?')} ({how})" + _not_run(data))
    ncols = 2 if image is not None else 1
    slots: list[Axes | None] = [None] * (n * ncols)  # row-major; the input's column is empty below it
    if image is not None:
        slots[0] = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        _show_input(slots[0], image, int(data.get("sample_index", 0)), str(data.get("input_source", "")))
    bars: list[tuple[Axes, Axes, tuple[int, ...], Any]] = []
    labels: list[tuple[Axes, Any, list[str], list[tuple[float, float]]]] = []
    for row, layer in enumerate(layers):
        ax = slots[row * ncols + ncols - 1] = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        maps = np.asarray(layer["maps"])
        grid, nrow, (lo, hi) = feature_grid(maps, "absolute" if absolute else "per_map")
        cmap = matplotlib.colormaps["viridis"].with_extremes(over="white", bad=NONFINITE_COLOR)
        im = ax.imshow(grid, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        h, w = maps.shape[1] + GRID_PAD, maps.shape[2] + GRID_PAD
        channels = [str(ch) for ch in np.asarray(layer["channels"]).tolist()]
        corners = [
            ((i % nrow) * w + GRID_PAD - 0.5 + 0.15, (i // nrow) * h + GRID_PAD - 0.5 + 0.15)
            for i in range(len(channels))
        ]
        labels.append((ax, im, channels, corners))
        order = ORDER_WORDS.get(str(layer.get("order")), str(layer.get("order")))
        title = (
            f"{layer['name']} ({layer['kind']}): {len(layer['channels'])} of {layer['total_channels']} "
            f"channels, {order}"
        )
        if layer.get("shows"):
            title += f"\n{layer['shows']}"
        if layer.get("note"):
            title += f"\n{layer['note']}"
        _title_with_nonfinite(ax, title, int(layer.get("nonfinite", 0) or 0))
        ax.set_xticks([])
        ax.set_yticks([])
        if absolute:
            cax = fig.add_axes((0.0, 0.0, 0.01, 0.5), label="<colorbar>")
            cb = fig.colorbar(im, cax=cax, extend="neither")
            cb.locator = MaxNLocator(4, steps=[1, 2, 2.5, 5, 10])
            bars.append((ax, cax, grid.shape, cb))
    rooms = [fit_axes(ax) if ax is not None else Room() for ax in slots]
    if bars:
        extra = Room(right=CBAR_GAP + CBAR_WIDTH + max(colorbar_room(cb) for *_, cb in bars))
        with_bar = {id(ax) for ax, *_ in bars}
        rooms = [r | extra if id(ax) in with_bar else r for ax, r in zip(slots, rooms)]
    boxes = place_grid(fig, slots, ncols, rooms, top=top, width_ratios=[1, 3] if image is not None else None)
    fig_w, fig_h = fig.get_size_inches()
    for ax, cax, shape, _ in bars:
        box = boxes[slots.index(ax)]
        left, width = _image_width(box, shape)
        y, hgt = box[1], box[3]
        drawn_h = min(hgt, width * shape[0] / max(shape[1], 1))
        y0 = y + (hgt - drawn_h) / 2
        cax.set_position(((left + width + CBAR_GAP) / fig_w, y0 / fig_h, CBAR_WIDTH / fig_w, drawn_h / fig_h))
        flatten_ticks(cax)
    for ax, im, channels, corners in labels:  # every tile's channel index, one overlay per layer
        stamp_labels(ax, im, channels, corners)
    return fig


def _row_ticks(ax: Axes, ticks: Sequence[int]) -> None:
    """Rows labelled with the real channel numbers (every k-th when there are many)."""
    every = max(1, math.ceil(len(ticks) / 16))
    rows = list(range(0, len(ticks), every))
    ax.yaxis.set_major_locator(FixedLocator(rows))
    ax.yaxis.set_major_formatter(FixedFormatter([str(ticks[r]) for r in rows]))
    ax.tick_params(axis="y", labelsize=7)


def _show_signal(ax: Axes, signal: Mapping[str, Any]) -> Any:
    """A 1-d input example ``[C, L]``: one line per channel (up to 4 channels), else a C x L heatmap."""
    values = np.asarray(signal["values"], dtype=np.float32)
    title = _input_title(int(signal.get("example", 0)), str(signal.get("source", "")))
    if signal.get("note"):
        title += f": {signal['note']}"
    im = None
    if values.shape[0] <= 4:
        for c, line in enumerate(values):
            ax.plot(np.arange(line.size), line, lw=1, label=f"channel {c}")
        if values.shape[0] > 1:
            ax.legend(fontsize=7, loc="upper right")
        ax.set_ylabel("value")
        nice_ticks(ax.yaxis, 5)
        ax.set_xlim(0, max(values.shape[1] - 1, 1))
    else:
        lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        im = ax.imshow(
            values, aspect="auto", cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, interpolation="nearest"
        )
        ax.set_ylabel("channel")
        nice_ticks(ax.yaxis, 6, integer=True)
    ax.set_xlabel("position")
    nice_ticks(ax.xaxis, 7, integer=True)
    ax.set_title(title, fontsize=9)
    return im


def render_heatmaps(data: Mapping[str, Any]) -> Figure:
    """One heatmap per layer for activations that are not images (linear, sequence, 1-d convolution).

    Args:
        data: ``step``; optional ``input``: a 1-d input example shown first (``values`` ``[C, L]``,
            ``example``, ``source``, ``note``); ``layers``: a list of dicts with ``name``, ``kind``, ``values``
            (a 2-d array), ``rows`` and ``cols`` (axis labels), and optional ``row_ticks`` (the channel number
            of each row), ``shows`` (which tensor the values are) and ``note``.

    Returns:
        A figure with the input (when given) and one heatmap axes (and its colour bar) per layer.
    """
    layers: Sequence[Mapping[str, Any]] = data["layers"]
    signal = data.get("input")
    n = max(1, len(layers)) + (signal is not None)
    fig = new_figure(8.0, 0.6 + 2.6 * n, layout=None)
    top = suptitle(fig, f"Activations at step {data.get('step', '?')}" + _not_run(data))
    axes, bars, rooms = [], [], []
    if signal is not None:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        im = _show_signal(ax, signal)
        cax = None
        room = fit_axes(ax)
        if im is not None:
            cax = fig.add_axes((0.0, 0.0, CBAR_WIDTH / 8.0, 0.5), label="<colorbar>")
            cb = fig.colorbar(im, cax=cax)
            cb.locator = MaxNLocator(4, steps=[1, 2, 2.5, 5, 10])
            room = room | Room(right=CBAR_GAP + CBAR_WIDTH + colorbar_room(cb))
        axes.append(ax)
        bars.append(cax)
        rooms.append(room)
    for layer in layers:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        values = np.asarray(layer["values"], dtype=np.float32)
        finite = values[np.isfinite(values)]
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim if lim > 0 and math.isfinite(lim) else 1.0
        shown = np.where(np.isfinite(values), values, np.nan)
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=NONFINITE_COLOR)
        im = ax.imshow(shown, aspect="auto", cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        cax = fig.add_axes((0.0, 0.0, CBAR_WIDTH / 8.0, 0.5), label="<colorbar>")
        cb = fig.colorbar(im, cax=cax)
        cb.locator = MaxNLocator(4, steps=[1, 2, 2.5, 5, 10])
        nice_ticks(ax.xaxis, 7, integer=True)
        if layer.get("row_ticks") is not None:
            _row_ticks(ax, [int(t) for t in layer["row_ticks"]])
        else:
            nice_ticks(ax.yaxis, 6, integer=True)
        ax.set_ylabel(str(layer["rows"]))
        ax.set_xlabel(str(layer["cols"]))
        title = f"{layer['name']} ({layer['kind']})"
        if layer.get("note"):
            title += f": {layer['note']}"
        if layer.get("shows"):
            title += f"\n{layer['shows']}"
        _title_with_nonfinite(ax, title, int(layer.get("nonfinite", 0) or 0))
        rooms.append(fit_axes(ax) | Room(right=CBAR_GAP + CBAR_WIDTH + colorbar_room(cb)))
        axes.append(ax)
        bars.append(cax)
    if not axes:
        axes.append(fig.add_axes((0.0, 0.0, 1.0, 1.0)))
        rooms.append(fit_axes(axes[0]))
    boxes = place_grid(fig, axes, 1, rooms, top=top)
    fig_w, fig_h = fig.get_size_inches()
    for cax, (x, y, w, h) in zip(bars, boxes):  # shrunk to 90% of the heatmap's height, as before
        if cax is not None:
            cax.set_position(
                ((x + w + CBAR_GAP) / fig_w, (y + 0.05 * h) / fig_h, CBAR_WIDTH / fig_w, 0.9 * h / fig_h)
            )
    return fig

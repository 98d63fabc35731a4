"""Many small labels on an image as one overlay image, instead of one matplotlib ``Text`` each.

A feature-map figure of resnet50 labels 848 tiles with their channel numbers; as ``Text`` artists with a
background box they cost most of its drawing time (each reads dozens of rcParams when it is made and lays
itself out when it is drawn). Here each distinct label is rasterised once with matplotlib's own FreeType
font (the font and size a ``Text`` would use) and stamped, with its dark box, into one RGBA overlay the size
of the image as it is drawn, shown above the image with :meth:`Axes.imshow`. Call :func:`stamp_labels` once
the axes has its final position.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

LABELS_GID = "tile-labels"  # the gid of the overlay; its label holds the texts, comma-separated


def _load_flags() -> int:
    flags = getattr(ft2font, "LoadFlags", None)  # matplotlib >= 3.10; before, module constants
    hinting = {"default": "DEFAULT", "no_autohint": "NO_AUTOHINT", "force_autohint": "FORCE_AUTOHINT"}
    name = hinting.get(str(matplotlib.rcParams["text.hinting"]), "NO_HINTING")
    return getattr(flags, name) if flags is not None else getattr(ft2font, f"LOAD_{name}")


@functools.lru_cache(maxsize=1)
def _font_file() -> str:
    return font_manager.findfont(font_manager.FontProperties())


@functools.lru_cache(maxsize=512)
def glyphs(text: str, size_pt: float, dpi: float) -> np.ndarray:
    """``text`` rasterised as a ``[H, W]`` coverage array in [0, 1] (the default font, antialiased)."""
    font = ft2font.FT2Font(_font_file())
    font.set_size(size_pt, dpi)
    font.set_text(text, 0.0, flags=_load_flags())
    font.draw_glyphs_to_bitmap(antialiased=True)
    return np.asarray(font.get_image(), dtype=np.float32) / 255.0


def stamp_labels(
    ax: Axes,
    image: AxesImage,
    texts: Sequence[str],
    corners: Sequence[tuple[float, float]],
    *,
    size_pt: float = 7.0,
    pad_pt: float = 0.5,
    box_alpha: float = 0.5,
) -> AxesImage:
    """White labels on dark boxes at data positions of ``image`` (their top-left corners), as one overlay.

    Args:
        ax: the axes that shows ``image`` (already at its final position in the figure).
        image: the image the labels are on (its extent gives the data coordinates).
        texts: the labels.
        corners: each label's top-left corner, in ``image``'s data coordinates (x, y; y grows downwards).
        size_pt: the font size in points.
        pad_pt: the box's margin around the text, in points.
        box_alpha: the box's opacity (black).

    Returns:
        The overlay (gid :data:`LABELS_GID`, its label the texts joined by commas).
    """
    fig = ax.figure
    x0, x1, y0, y1 = image.get_extent()  # imshow's default: (-0.5, W - 0.5, H - 0.5, -0.5)
    ax.apply_aspect()  # aspect "equal": the axes shrinks to the image as drawn
    bbox = ax.get_window_extent()
    wpx, hpx = max(1, round(bbox.width)), max(1, round(bbox.height))
    sx, sy = wpx / (x1 - x0), hpx / (y0 - y1)
    over = np.zeros((hpx, wpx, 4), dtype=np.float32)
    pad = max(1, round(pad_pt * fig.dpi / 72.0))
    for text, (cx, cy) in zip(texts, corners):
        g = glyphs(text, size_pt, fig.dpi)
        gh, gw = g.shape
        top, left = round((cy - y1) * sy), round((cx - x0) * sx)
        bh, bw = gh + 2 * pad, gw + 2 * pad
        t0, l0 = max(0, top), max(0, left)
        t1, l1 = min(hpx, top + bh), min(wpx, left + bw)
        if t1 <= t0 or l1 <= l0:
            continue
        cover = np.zeros((bh, bw), dtype=np.float32)
        cover[pad : pad + gh, pad : pad + gw] = g
        cover = cover[t0 - top : t1 - top, l0 - left : l1 - left]
        alpha = cover + box_alpha * (1.0 - cover)  # white text over a black box of box_alpha
        over[t0:t1, l0:l1, :3] = (cover / np.maximum(alpha, 1e-6))[..., None]
        over[t0:t1, l0:l1, 3] = alpha
    overlay = ax.imshow(over, extent=(x0, x1, y0, y1), interpolation="nearest", zorder=image.get_zorder() + 1)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    overlay.set_gid(LABELS_GID)
    overlay.set_label(",".join(texts))
    return overlay

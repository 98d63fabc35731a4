"""A fixed layout measured from font metrics, instead of matplotlib's constrained layout.

Constrained layout measures the tight bounding box of every axes (each tick label, title and axis label)
twice per draw, and the draw then lays the same text out again: for figures drawn at every epoch that was
most of their cost. Here a renderer fills its axes first (data, limits, locators, labels, titles), then
:func:`fit_axes` measures the room each axes' text needs from font metrics (cached per string) and pins
the title and axis labels at those offsets, and :func:`place_grid` puts the axes at fixed positions that
leave that room. The figure then draws with no layout engine and no automatic label or title placement.

All lengths are in inches unless a name says points.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, LogLocator, MaxNLocator, NullLocator
from matplotlib.transforms import offset_copy

PT = 1 / 72  # inches per point
PAD = 0.05  # kept free around each axes' decorations: twice this between neighbours, once at the edge
_MIN_AXES = 0.3  # the smallest axes side a crowded figure shrinks to

_lock = threading.Lock()
_sizes: dict[tuple, tuple[float, float]] = {}
_MAX_CACHED = 8192
MINOR_SUBS = (2.0, 5.0)  # minor ticks of log axes and log colour bars
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass(frozen=True)
class Room:
    """Space (inches) that an axes' text takes on each side of the axes box."""

    left: float = 0.0
    right: float = 0.0
    top: float = 0.0
    bottom: float = 0.0

    def __or__(self, other: Room) -> Room:
        """The room that fits both."""
        return Room(
            max(self.left, other.left),
            max(self.right, other.right),
            max(self.top, other.top),
            max(self.bottom, other.bottom),
        )


def points(size: float | str | None, default: str) -> float:
    """A font size in points (``"small"``, ``None`` for the rc default named ``default``)."""
    return FontProperties(size=mpl.rcParams[default] if size is None else size).get_size_in_points()


def text_size(fig: Figure, text: str, size: float, *, rotation: float = 0.0, weight: str = "normal") -> tuple:
    """``(width, height)`` in inches of the box of ``text`` (any number of lines) drawn at ``size`` points."""
    if not text:
        return 0.0, 0.0
    key = (text, float(size), float(rotation), weight, float(fig.dpi), *mpl.rcParams["font.family"])
    hit = _sizes.get(key)
    if hit is None:
        t = Text(0, 0, text, fontsize=size, rotation=rotation, fontweight=weight)
        t.set_figure(fig)
        bbox = t.get_window_extent(fig.canvas.get_renderer())
        hit = (bbox.width / fig.dpi, bbox.height / fig.dpi)
        with _lock:
            if len(_sizes) >= _MAX_CACHED:
                _sizes.clear()
            _sizes[key] = hit
    return hit


class PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis tick labels as plain text with superscript digits (``10⁻⁴``; ``2 x 10⁻¹`` with a times sign).

    They look like matplotlib's mathtext labels, but need no mathtext parse, which matplotlib caches per
    renderer, so every new figure paid for it again.
    """

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        math = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
        if math is None:
            return label
        body = math.group(1).replace(r"\times", "\N{MULTIPLICATION SIGN}")
        body = re.sub(r"\^\{(-?\d+)\}", lambda m: m.group(1).translate(_SUPERSCRIPT), body)
        return body.replace("-", "\N{MINUS SIGN}")


def nice_ticks(axis: Axis, nbins: int, *, integer: bool = False) -> None:
    """At most ``nbins + 1`` ticks at round steps, as many whatever the axes' size (unlike the default)."""
    axis.set_major_locator(MaxNLocator(nbins, steps=[1, 2, 2.5, 5, 10], integer=integer))


def plain_log_axis(axis: Axis, base: float = 10.0, numticks: int = 11) -> None:
    """A log axis with :class:`PlainLogFormatter` labels, a tick count that does not depend on the axes'
    size (so that :func:`fit_axes` measures the labels that are drawn), and minor ticks at 2 and 5 times
    each power, not at every 2..9: matplotlib builds each tick as two lines and two texts."""
    axis.set_major_locator(LogLocator(base, numticks=numticks))
    axis.set_minor_locator(LogLocator(base, subs=MINOR_SUBS, numticks=numticks))
    axis.set_major_formatter(PlainLogFormatter(base))
    axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def _in_view(axis: Axis, locs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The locations of ``locs`` inside the view and their positions along the axis in [0, 1]."""
    locs = np.asarray(locs, dtype=float)
    start, end = axis.get_view_interval()  # in the axis' own direction: an inverted axis (an image's rows)
    transform = axis.get_transform()
    t_lo, t_hi = transform.transform([start, end])
    t = (transform.transform(locs) - t_lo) / ((t_hi - t_lo) or 1.0)
    keep = (t >= -1e-9) & (t <= 1 + 1e-9)
    return locs[keep], t[keep]


def pin_ticks(axis: Axis) -> None:
    """Fix the axis' ticks at the locations its locators give now, less those outside the view.

    Locators return a tick beyond each end of the view; matplotlib builds a tick (two lines, two texts)
    for each and then leaves it undrawn. Call once the limits are final.
    """
    major, minor = axis.get_majorticklocs(), axis.get_minorticklocs()
    if not isinstance(axis.get_major_locator(), (NullLocator, FixedLocator)):
        axis.set_major_locator(FixedLocator(_in_view(axis, major)[0]))
    if not isinstance(axis.get_minor_locator(), (NullLocator, FixedLocator)):
        axis.set_minor_locator(FixedLocator(_in_view(axis, minor)[0]))


def tick_labels(axis: Axis) -> list[tuple[float, str]]:
    """``(position along the axis in [0, 1], label)`` of the tick labels (major and minor) ``axis`` draws."""
    out = []
    for ticker, locs in ((axis.major, axis.get_majorticklocs()), (axis.minor, axis.get_minorticklocs())):
        if len(locs):
            labels = dict(zip(locs, ticker.formatter.format_ticks(locs)))
            out += [(float(t), labels[loc]) for loc, t in zip(*_in_view(axis, locs)) if labels[loc]]
    return out


def label_style(axis: Axis) -> tuple[float, float, str]:
    """Font size (points), rotation and horizontal alignment of the axis' tick labels, as ``tick_params``
    or ``set_ticks`` left them."""
    label = axis.get_major_ticks(1)[0].label1
    return label.get_fontsize(), label.get_rotation(), label.get_horizontalalignment()


def _tick_room(axis: Axis, which: str) -> float:
    return (mpl.rcParams[f"{which}tick.major.size"] + mpl.rcParams[f"{which}tick.major.pad"]) * PT


def fit_axes(
    ax: Axes,
    *,
    xticklabels: bool = True,
    yticklabels: bool = True,
    title_pad: float | None = None,
) -> Room:
    """Measure the room ``ax``'s text needs and pin its title and axis labels, so nothing moves at draw.

    Call it once the data, limits, scales, locators, labels and title are set: the ticks are pinned where
    the locators put them (:func:`pin_ticks`) and their labels measured in their font size and rotation.
    The locators must not depend on the axes' size (:func:`nice_ticks`, :func:`plain_log_axis`, fixed
    ticks): the axes is measured before :func:`place_grid` gives it its size.
    The x label goes under them, the y label left of them, and the title ``title_pad`` points above the
    axes, or above the y axis' offset text (``1e-5``) when there is one.

    Returns:
        The room on each side (x tick labels that overhang the axes' ends: :func:`overhang`).
    """
    fig = ax.get_figure(root=True)
    left = bottom = top = 0.0
    pin_ticks(ax.xaxis)
    pin_ticks(ax.yaxis)
    xticklabels = xticklabels and ax.axison and ax.xaxis.get_visible()
    yticklabels = yticklabels and ax.axison and ax.yaxis.get_visible()
    if xticklabels:
        labels = tick_labels(ax.xaxis)
        size, rotation, _ = label_style(ax.xaxis)
        boxes = [text_size(fig, s, size, rotation=rotation) for _, s in labels]
        bottom = _tick_room(ax.xaxis, "x") + max((h for _, h in boxes), default=0.0)
        offset = ax.xaxis.major.formatter.get_offset()
        if offset:
            bottom += text_size(fig, offset, size)[1] + 2 * PT
    if yticklabels:
        labels = tick_labels(ax.yaxis)
        size = label_style(ax.yaxis)[0]
        left = _tick_room(ax.yaxis, "y") + max((text_size(fig, s, size)[0] for _, s in labels), default=0.0)
    xlabel, ylabel = ax.xaxis.label, ax.yaxis.label
    labelpad = mpl.rcParams["axes.labelpad"] * PT
    # pinned even when empty: an axis label left to place itself measures every tick label at each draw
    down, across = bottom + labelpad, left + labelpad
    ax.xaxis.set_label_coords(0.5, 0.0, transform=offset_copy(ax.transAxes, fig, 0.0, -down))
    ax.yaxis.set_label_coords(0.0, 0.5, transform=offset_copy(ax.transAxes, fig, -across, 0.0))
    if xlabel.get_text() and ax.axison:
        bottom = down + text_size(fig, xlabel.get_text(), xlabel.get_fontsize())[1]
    if ylabel.get_text() and ax.axison:
        left = across + text_size(fig, ylabel.get_text(), ylabel.get_fontsize())[1]
    title = ax.title
    pad = mpl.rcParams["axes.titlepad"] if title_pad is None else title_pad
    offset = ax.yaxis.major.formatter.get_offset() if yticklabels else ""
    if offset:  # the offset text sits above the y axis: lift the title over it
        pad += (text_size(fig, offset, label_style(ax.yaxis)[0])[1] + 2 * PT) / PT
        top = pad * PT
    if title.get_text():
        ax.set_title(
            title.get_text(),
            pad=pad,
            y=1.0,  # a given y turns off the automatic title placement of every draw
            fontsize=title.get_fontsize(),
            color=title.get_color(),
            fontweight=title.get_fontweight(),
        )
        top = pad * PT + text_size(fig, title.get_text(), title.get_fontsize())[1]
    return Room(left=left, top=top, bottom=bottom)


def overhang(ax: Axes, width: float) -> Room:
    """How far ``ax``'s x tick labels reach past its left and right edges when it is ``width`` inches wide."""
    fig = ax.get_figure(root=True)
    if not (ax.axison and ax.xaxis.get_visible() and ax.xaxis.get_major_ticks(1)[0].label1.get_visible()):
        return Room()
    size, rotation, ha = label_style(ax.xaxis)
    left = right = 0.0
    for t, label in tick_labels(ax.xaxis):
        w = text_size(fig, label, size, rotation=rotation)[0]
        reach_left, reach_right = {"right": (w, 0.0), "left": (0.0, w)}.get(ha, (w / 2, w / 2))
        left = max(left, reach_left - t * width)
        right = max(right, reach_right - (1 - t) * width)
    return Room(left=left, right=right)


def colorbar_room(cb: Colorbar) -> float:
    """Width (inches) right of a vertical colour bar that its tick labels and label take; pins the label."""
    ax = cb.ax
    fig = ax.get_figure(root=True)
    size = label_style(ax.yaxis)[0]
    pin_ticks(ax.yaxis)
    labels = tick_labels(ax.yaxis)
    width = _tick_room(ax.yaxis, "y") + max((text_size(fig, s, size)[0] for _, s in labels), default=0.0)
    label = ax.yaxis.label
    if label.get_text():
        across = width + mpl.rcParams["axes.labelpad"] * PT
        ax.yaxis.set_label_coords(1.0, 0.5, transform=offset_copy(ax.transAxes, fig, across, 0.0))
        width = across + text_size(fig, label.get_text(), label.get_fontsize())[1]
    return width


def fit_label(fig: Figure, left: str, right: str, width: float, size: float, smallest: float = 5.5) -> tuple:
    """``(text, font size)`` of the label ``left → right`` in ``width`` inches: on one line at ``size`` points
    when it fits; else on two lines (``left →`` over ``right``), at a smaller size down to ``smallest`` when
    needed, and only then each line cut with an ellipsis (the labels of a grid of small tiles, which would
    otherwise run into their neighbours')."""
    arrow = "\N{RIGHTWARDS ARROW}"
    one = f"{left} {arrow} {right}"
    if text_size(fig, one, size)[0] <= width:
        return one, size
    lines = [f"{left} {arrow}", right]
    widest = max(text_size(fig, line, size)[0] for line in lines)
    if widest > width:
        size = max(smallest, size * width / widest)
        while size > smallest and max(text_size(fig, line, size)[0] for line in lines) > width:
            size = max(smallest, size - 0.25)  # glyph widths are not quite proportional to the size
    for k, line in enumerate(lines):
        while text_size(fig, line, size)[0] > width and len(line) > 3:
            cut = line.rstrip("\N{HORIZONTAL ELLIPSIS}")
            line = cut[:-1].rstrip() + "\N{HORIZONTAL ELLIPSIS}"
        lines[k] = line
    return "\n".join(lines), size


def shrink_title(ax: Axes, width: float, smallest: float = 6.0) -> None:
    """Make ``ax``'s title fit ``width`` inches by lowering its font size, to ``smallest`` at least (a long
    parameter name would otherwise run into the neighbouring panels' titles)."""
    title = ax.title
    fig = ax.get_figure(root=True)
    size = title.get_fontsize()
    needed = text_size(fig, title.get_text(), size)[0]
    if needed > width and size > smallest:
        title.set_fontsize(max(smallest, size * width / needed))


def suptitle(fig: Figure, text: str, size: float | None = None, **kwargs) -> float:
    """Set the figure title at a fixed place at the top; returns the height (inches) it takes there."""
    size_pt = points(size, "figure.titlesize")
    height = fig.get_size_inches()[1]
    fig.suptitle(text, fontsize=size_pt, y=1.0 - PAD / height, va="top", **kwargs)
    return PAD + text_size(fig, text, size_pt)[1] + PAD


def place_grid(
    fig: Figure,
    axes: Sequence[Axes | None],
    ncols: int,
    rooms: Sequence[Room] | Room,
    *,
    top: float = 0.0,
    right: float = 0.0,
    bottom: float = 0.0,
    left: float = 0.0,
    width_ratios: Sequence[float] | None = None,
) -> list[tuple[float, float, float, float]]:
    """Put ``axes`` (row-major, ``None`` for an empty cell) in a grid of ``ncols`` columns over the figure
    less the outer margins (inches), each axes with its room (one for all, or one per axes) around it.

    A column keeps the widest left and right room of its axes, a row the tallest top and bottom room, plus
    :data:`PAD` on every side; what is left is shared out by ``width_ratios`` across columns and evenly
    across rows, so that the axes of a row have one height and those of a column one width. Where x tick
    labels would reach past their axes into a neighbour, the columns are widened and the grid laid out
    again.

    Returns:
        Each axes' box ``(x0, y0, width, height)`` in inches (zeros for empty cells).
    """
    fig_w, fig_h = fig.get_size_inches()
    nrows = -(-len(axes) // ncols)
    ratios = list(width_ratios or [1.0] * ncols)
    each = [rooms] * len(axes) if isinstance(rooms, Room) else list(rooms)

    def layout() -> list[tuple[float, float, float, float]]:
        cols, rows = [Room()] * ncols, [Room()] * nrows
        for k, (ax, room) in enumerate(zip(axes, each)):
            if ax is not None:
                cols[k % ncols] = cols[k % ncols] | room
                rows[k // ncols] = rows[k // ncols] | room
        free_w = fig_w - left - right - sum(c.left + c.right + 2 * PAD for c in cols)
        free_h = fig_h - top - bottom - sum(r.top + r.bottom + 2 * PAD for r in rows)
        widths = [max(free_w * q / sum(ratios), _MIN_AXES) for q in ratios]
        height = max(free_h / nrows, _MIN_AXES)
        xs, x = [], left
        for c, w in zip(cols, widths):
            xs.append(x + PAD + c.left)
            x += 2 * PAD + c.left + w + c.right
        ys, y = [], fig_h - top
        for r in rows:
            ys.append(y - PAD - r.top - height)
            y -= 2 * PAD + r.top + height + r.bottom
        boxes = []
        for k, ax in enumerate(axes):
            box = (xs[k % ncols], ys[k // ncols], widths[k % ncols], height)
            if ax is not None:
                ax.set_position((box[0] / fig_w, box[1] / fig_h, box[2] / fig_w, box[3] / fig_h))
            boxes.append(box if ax is not None else (0.0, 0.0, 0.0, 0.0))
        return boxes

    boxes = layout()
    wider = [
        room | overhang(ax, box[2]) if ax is not None else room for ax, room, box in zip(axes, each, boxes)
    ]
    if wider != each:
        each = wider
        boxes = layout()
    return boxes


def flatten_ticks(ax: Axes) -> None:
    """Draw ``ax``'s ticks as one marker line per side and one text per label, instead of matplotlib's tick
    objects (two lines and two texts each, built and laid out at every draw: much of a many-panel figure's
    cost).

    Call it once the ticks are final (after :func:`fit_axes`, or :func:`colorbar_room` for a colour bar):
    they are drawn where they are now, in axes coordinates, on the sides where they show, with their size,
    width, colour, label size, rotation and alignment; the axis then has no ticks of its own. An axis with
    an offset text (``1e-5``), a hidden one, or one with inward ticks is left as it is. The labels are the
    texts in ``ax.texts``, and the marks the lines in ``ax.lines``, whose ``gid`` is ``"xtick"`` or ``"ytick"``.
    """
    fig = ax.get_figure(root=True)
    if not ax.axison:
        return
    for axis, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
        if not axis.get_visible() or axis.major.formatter.get_offset():
            continue
        first = axis.get_major_ticks(1)[0]
        if first._tickdir != "out":
            continue
        size, rotation, ha = label_style(axis)
        sides = []  # (marker line, label text, where along the other axis, direction away from the axes)
        if first.tick1line.get_visible() or first.label1.get_visible():
            sides.append((first.tick1line, first.label1, 0.0, -1.0))
        if first.tick2line.get_visible() or first.label2.get_visible():
            sides.append((first.tick2line, first.label2, 1.0, 1.0))
        for ticker, locs, kind in (
            (axis.major, axis.get_majorticklocs(), "major"),
            (axis.minor, axis.get_minorticklocs(), "minor"),
        ):
            if not len(locs):
                continue
            shown, t = _in_view(axis, locs)
            labels = ticker.formatter.format_ticks(list(shown))
            length = mpl.rcParams[f"{which}tick.{kind}.size"]
            width = mpl.rcParams[f"{which}tick.{kind}.width"]
            pad = mpl.rcParams[f"{which}tick.{kind}.pad"]
            for line, text, at, sign in sides:
                if line.get_visible():
                    across = np.full_like(t, at)
                    ax.plot(
                        *((t, across) if which == "x" else (across, t)),
                        linestyle="none",
                        marker=line.get_marker(),
                        markersize=length,
                        markeredgewidth=width,
                        color=line.get_color(),
                        transform=ax.transAxes,
                        clip_on=False,
                        zorder=2.01,
                        gid=f"{which}tick",
                    )
                if not text.get_visible():
                    continue
                away = sign * (length + pad) * PT
                place = offset_copy(ax.transAxes, fig, *((0.0, away) if which == "x" else (away, 0.0)))
                if which == "x":
                    align = {"ha": ha, "va": "top" if sign < 0 else "bottom", "rotation_mode": "default"}
                else:
                    align = {"ha": "right" if sign < 0 else "left", "va": "center_baseline"}
                    align["rotation_mode"] = "anchor"
                for ti, label in zip(t, labels):
                    if label:
                        xy = (ti, at) if which == "x" else (at, ti)
                        ax.text(
                            *xy, label, transform=place, fontsize=size, color=text.get_color(),
                            rotation=rotation, clip_on=False, gid=f"{which}tick", **align,
                        )  # fmt: skip
        axis.set_major_locator(NullLocator())
        axis.set_minor_locator(NullLocator())

"""What a figure is, declared once by the callback that draws it, and read by the report and ``render``.

Each callback lists its figures in its ``figures`` class attribute (:class:`FigureSpec`: the file names of
its data and PNG files, the pure render function, whether it is cumulative, its heading in the report), and
its report section in ``section_title`` and ``report_rank``. ``lightning-viz report`` orders and titles its
sections and series from these declarations, and ``lightning-viz render`` maps a data file back to its
render function through them, so a new figure is declared in one place: beside the code that draws it.

This module imports neither torch nor matplotlib; :func:`sections` imports the callbacks when asked.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FigureSpec:
    """One kind of figure a callback draws.

    Args:
        series: the PNG stem, or its prefix before ``_stepNNNNNN`` / ``_epochNNN`` (``"maps"``); ``"*"``: any
            (MetricPlotCallback names its series after the metrics).
        title: the heading of the series in the report.
        render: the pure render function, as ``"module:function"``.
        data: a glob of the data file's name beside the PNG (``"maps_step*.npz"``, ``"curves.json"``).
        cumulative: a newer figure shows everything an older one does (curves, evolution, statistics), so
            the latest one alone tells the whole story; other series are snapshots (one per epoch). Either
            kind is drawn at most once per redraw interval, a newer figure taking a waiting one's place
            (``VizCallback.emit_figure``).
        latest_only: the report shows the latest frame alone (it already shows the whole history), not a
            slider over the frames.
    """

    series: str
    title: str
    render: str
    data: str
    cumulative: bool = False
    latest_only: bool = False

    def render_function(self) -> Callable[[Any], Any]:
        module, _, name = self.render.partition(":")
        return getattr(importlib.import_module(module), name)

    def holds_data(self, filename: str) -> bool:
        """Whether a data file of this name is this figure's."""
        return fnmatch.fnmatchcase(filename, self.data)

    def shows(self, series: str) -> bool:
        """Whether a report series (a PNG stem without its step or epoch) is this figure's."""
        return self.series == "*" or series == self.series


@dataclass(frozen=True)
class Section:
    """A callback's folder of figures: its default folder name, report heading and figures."""

    folder: str
    title: str
    figures: tuple[FigureSpec, ...]


FRAME = re.compile(r"^(?P<series>.+?)_(?P<unit>step|epoch)(?P<n>\d+)$")  # a PNG stem of one frame


def sections() -> list[Section]:
    """The report sections of every lightning-viz callback that draws figures, in report order."""
    import lightning_viz.callbacks as callbacks
    from lightning_viz.core.base import VizCallback

    classes = [
        c
        for c in vars(callbacks).values()
        if isinstance(c, type) and issubclass(c, VizCallback) and c.figures
    ]
    classes.sort(key=lambda c: (c.report_rank, c.viz_name))
    return [Section(c.viz_name, c.section_title, tuple(c.figures)) for c in classes]


def spec_for_data(filename: str, folder: str | None = None) -> FigureSpec | None:
    """The figure a data file holds: among the figures of the callback whose folder is ``folder`` first,
    then among all (a custom ``output_dir``); ``None`` when it is no figure's data."""
    every = sections()
    ranked = [s for s in every if s.folder == folder] + [s for s in every if s.folder != folder]
    for section in ranked:
        for spec in section.figures:
            if spec.series != "*" and spec.holds_data(filename):
                return spec
    for section in ranked:  # catch-all names last (MetricPlotCallback's <metric>_epochNNN.npz)
        for spec in section.figures:
            if spec.series == "*" and spec.holds_data(filename):
                return spec
    return None

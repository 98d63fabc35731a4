"""Where pictures, histograms, text and scalars go: one adapter per destination, detected once.

The rest of the package never asks which logger is attached: it calls :func:`make_sinks` in ``setup`` and
hands every output to each sink. A sink that raises is reported once and the other sinks still receive.

* :class:`FileSink` writes PNG files, the data behind each figure (JSON / NPZ) and text, atomically.
* :class:`TensorBoardSink` sends images, native histograms, text and scalars to a ``TensorBoardLogger``.
* :class:`LoggerSink` sends scalars (and images, when the logger has ``log_image``) to any other logger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_viz.core.warn import warn_once
from lightning_viz.core.writer import atomic_write_bytes, atomic_write_json, atomic_write_npz


class Sink:
    """A destination; every method is optional and does nothing by default."""

    name = "sink"

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        """A rendered figure (``rgba`` ``[H, W, 4]`` uint8 and its PNG encoding)."""

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        """A histogram: ``len(edges) == len(counts) + 1``; stats has min, max, num, sum, sum_squares."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars to plot over steps."""

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        """A text block (e.g. the model summary table)."""

    def data(self, stem: str, payload: Any) -> None:
        """The data behind a figure, so it can be drawn again."""


class FileSink(Sink):
    """Files under one directory: ``<stem>.png``, ``<stem>.json`` / ``<stem>.npz`` and ``<stem>.txt``."""

    name = "files"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        atomic_write_bytes(self.root / f"{stem}.png", png)

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        atomic_write_bytes(self.root / f"{stem}.txt", text.encode())

    def data(self, stem: str, payload: Any) -> None:
        if (
            isinstance(payload, Mapping)
            and payload
            and all(isinstance(v, np.ndarray) for v in payload.values())
        ):
            atomic_write_npz(self.root / f"{stem}.npz", dict(payload))
        else:
            atomic_write_json(self.root / f"{stem}.json", payload)


class LoggerSink(Sink):
    """Scalars through ``logger.log_metrics``; images through ``logger.log_image`` when it exists."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.name = type(logger).__name__

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(values), step=step)

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        log_image = getattr(self.logger, "log_image", None)
        if callable(log_image):
            log_image(key=tag, images=[rgba[..., :3]], step=step)


class TensorBoardSink(LoggerSink):
    """Images, native histograms (the Histograms dashboard) and text through the logger's SummaryWriter."""

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        self.logger.experiment.add_image(tag, rgba[..., :3], global_step=step, dataformats="HWC")

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        num = float(np.sum(counts))
        if num <= 0:
            return
        self.logger.experiment.add_histogram_raw(
            tag,
            min=float(stats["min"]),
            max=float(stats["max"]),
            num=num,
            sum=float(stats["sum"]),
            sum_squares=float(stats["sum_squares"]),
            bucket_limits=[float(e) for e in edges[1:]],
            bucket_counts=[float(c) for c in counts],
            global_step=step,
        )

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        # TensorBoard renders markdown: keep the table's alignment in a code block.
        self.logger.experiment.add_text(tag, "```\n" + text + "\n```", global_step=step)


def make_sinks(loggers: Sequence[Any], root: str | Path) -> list[Sink]:
    """The file sink plus one adapter per attached logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    sinks: list[Sink] = [FileSink(root)]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            sinks.append(TensorBoardSink(logger))
        else:
            sinks.append(LoggerSink(logger))
    return sinks


def fan_out(
    sinks: Sequence[Sink], method: str, *args: Any, owner: str = "lightning-viz", **kwargs: Any
) -> None:
    """Call ``method`` on every sink; a sink that raises is reported once and skipped."""
    for sink in sinks:
        try:
            getattr(sink, method)(*args, **kwargs)
        except Exception as err:
            warn_once(
                (owner, sink.name, method, type(err).__name__),
                f"{owner}: sink {sink.name!r} failed in {method}() and is skipped for this output: {err!r}. "
                "Other destinations still receive it; training continues.",
            )

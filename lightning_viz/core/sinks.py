"""Where pictures, histograms, text and scalars go: one adapter per destination, detected once.

The rest of the package never asks which logger is attached: it calls :func:`make_sinks` in ``setup`` and
hands every output to each sink. A sink that raises is reported once and the other sinks still receive.
When the output directory cannot be written, :func:`drop_unwritable_files` leaves the file sink out,
with one warning.

* :class:`FileSink` writes PNG files, the data behind each figure (JSON / NPZ) and text, atomically. It is
  always there: with no logger at all, the files are the whole output.
* :class:`TensorBoardSink`: images, native histograms, text, scalars, the Projector's embeddings and the
  Graphs dashboard's traced model through a ``TensorBoardLogger``.
* :class:`WandbSink`: ``wandb.Image``, ``wandb.Histogram``, ``wandb.Html`` and scalars through a
  ``WandbLogger``, all against its ``trainer/global_step`` axis.
* :class:`MLflowSink`: images with ``MlflowClient.log_image(key=..., step=...)`` (MLflow's step slider),
  text as an artifact and scalars as metrics through an ``MLFlowLogger``.
* :class:`CSVSink`: the PNG files are already on disk; histogram statistics go to ``statistics.csv``
  beside them and scalars to the ``CSVLogger``'s ``metrics.csv``.
* :class:`LoggerSink` sends scalars (and images, when the logger has ``log_image``) to any other logger.

Loggers are recognised by class name in their MRO (``lightning.pytorch.loggers`` and the older
``pytorch_lightning.loggers`` alike, subclasses included), so nothing here imports wandb or mlflow unless
such a logger is attached. When one is attached but its package is missing, a warning names the extra to
install (``pip install 'lightning-viz[wandb]'``) and that logger receives scalars only.
"""

from __future__ import annotations

import csv
import importlib
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_viz.core.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    unwritable_reason,
)
from lightning_viz.core.warn import warn_once


class Sink:
    """A destination; every method is optional and does nothing by default."""

    name = "sink"

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        """A rendered figure (``rgba`` ``[H, W, 4]`` uint8 and its PNG encoding)."""

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        """A histogram: ``len(edges) == len(counts) + 1``; stats has min, max, num, sum, sum_squares."""

    def histograms(
        self, items: Sequence[tuple[str, np.ndarray, np.ndarray, Mapping[str, float]]], step: int
    ) -> None:
        """Many histograms ``(tag, edges, counts, stats)`` of one step; by default one :meth:`histogram` each."""
        for tag, edges, counts, stats in items:
            self.histogram(tag, edges, counts, stats, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Scalars to plot over steps."""

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        """A text block (e.g. the model summary table)."""

    def data(self, stem: str, payload: Any) -> None:
        """The data behind a figure, so it can be drawn again."""

    def embedding(
        self,
        tag: str,
        features: np.ndarray,
        metadata: Mapping[str, Sequence[str]] | None,
        images: np.ndarray | None,
        step: int,
    ) -> None:
        """Feature vectors of a fixed sample (``[N, D]``), a label column or more, ``[N, C, H, W]`` images."""

    def graph(self, model: Any, inputs: tuple[Any, ...]) -> None:
        """The model's traced graph (``inputs``: the positional tensors of one forward call); runs the
        model, on the calling thread."""

    def raw(self, name: str, data: bytes) -> None:
        """A file of bytes as it is (an SVG), by its name."""


class FileSink(Sink):
    """Files under one directory: ``<stem>.png``, ``<stem>.json`` / ``<stem>.npz`` and ``<stem>.txt``."""

    name = "files"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        atomic_write_bytes(self.root / f"{stem}.png", png)

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        atomic_write_bytes(self.root / f"{stem}.txt", text.encode())

    def raw(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)

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
    """Images, native histograms (the Histograms dashboard) and text through the logger's SummaryWriter.

    The scalars and the histograms of one step go out as one event each (a ``Summary`` with many values,
    which TensorBoard reads like separate ``add_scalar`` calls): the SummaryWriter's queue holds 10 events
    and a full queue blocks the caller, so sixteen ``add_scalar`` calls could stall the training step.
    """

    def _file_writer(self) -> Any:
        """torch's SummaryWriter's FileWriter, or None for another kind of experiment."""
        get = getattr(self.logger.experiment, "_get_file_writer", None)
        return get() if callable(get) else None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        file_writer = self._file_writer()
        if file_writer is None or getattr(self.logger, "_prefix", ""):  # the logger's own way (prefixes)
            super().scalars(values, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import scalar

        parts = [scalar(tag, float(value)).value for tag, value in values.items()]
        file_writer.add_summary(Summary(value=[v for part in parts for v in part]), step)

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        file_writer = self._file_writer()
        if file_writer is None:  # not torch's SummaryWriter: let it encode the image itself
            self.logger.experiment.add_image(tag, rgba[..., :3], global_step=step, dataformats="HWC")
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        # The PNG the render process already encoded, as is (add_image would encode it a second time).
        image = Summary.Image(
            height=rgba.shape[0], width=rgba.shape[1], colorspace=4, encoded_image_string=png
        )
        file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    @staticmethod
    def _raw(edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float]) -> dict[str, Any] | None:
        """The arguments of ``add_histogram_raw`` for one histogram; None when it is empty."""
        num = float(np.sum(counts))
        if num <= 0:
            return None
        return {
            "min": float(stats["min"]),
            "max": float(stats["max"]),
            "num": num,
            "sum": float(stats["sum"]),
            "sum_squares": float(stats["sum_squares"]),
            "bucket_limits": [float(e) for e in edges[1:]],
            "bucket_counts": [float(c) for c in counts],
        }

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        self.histograms([(tag, edges, counts, stats)], step)

    def histograms(
        self, items: Sequence[tuple[str, np.ndarray, np.ndarray, Mapping[str, float]]], step: int
    ) -> None:
        raw = [(tag, kw) for tag, edges, counts, stats in items if (kw := self._raw(edges, counts, stats))]
        file_writer = self._file_writer()
        if file_writer is None:  # not torch's SummaryWriter: its own add_histogram_raw, one at a time
            for tag, kw in raw:
                self.logger.experiment.add_histogram_raw(tag, global_step=step, **kw)
            return
        if not raw:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import histogram_raw

        # torch's own histogram_raw (what add_histogram_raw writes), every value in one event
        values = [v for tag, kw in raw for v in histogram_raw(tag, **kw).value]
        file_writer.add_summary(Summary(value=values), step)

    def embedding(
        self,
        tag: str,
        features: np.ndarray,
        metadata: Mapping[str, Sequence[str]] | None,
        images: np.ndarray | None,
        step: int,
    ) -> None:
        # the Projector dashboard's files, beside the event files (what add_embedding writes, atomically)
        from lightning_viz.core.projector import write_embedding

        get_logdir = getattr(self.logger.experiment, "get_logdir", None)
        logdir = get_logdir() if callable(get_logdir) else self.logger.log_dir
        write_embedding(logdir, tag, step, features, dict(metadata) if metadata else None, images)

    def graph(self, model: Any, inputs: tuple[Any, ...]) -> None:
        # the Graphs dashboard: add_graph traces with torch.jit.trace (its deprecation notes are not the user's)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.logger.experiment.add_graph(model, inputs, use_strict_trace=False)

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        # TensorBoard renders markdown: keep the table's alignment in a code block.
        self.logger.experiment.add_text(tag, "```\n" + text + "\n```", global_step=step)


class WandbSink(LoggerSink):
    """Figures as ``wandb.Image``, native ``wandb.Histogram``, text as ``wandb.Html``, scalars as metrics.

    Every row carries ``trainer/global_step``, the step axis ``WandbLogger`` defines, so pictures line up
    with the metrics Lightning logs (W&B's own ``_step`` counter is left alone).
    """

    def __init__(self, logger: Any) -> None:
        super().__init__(logger)
        self.wandb = importlib.import_module("wandb")

    def _log(self, row: dict[str, Any], step: int) -> None:
        self.logger.experiment.log({**row, "trainer/global_step": step})

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        self._log({tag: self.wandb.Image(np.ascontiguousarray(rgba[..., :3]), caption=stem)}, step)

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        if float(np.sum(counts)) <= 0:
            return
        hist = self.wandb.Histogram(np_histogram=(np.asarray(counts, float), np.asarray(edges, float)))
        self._log({tag: hist}, step)

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        import html

        self._log({tag: self.wandb.Html(f"<pre>{html.escape(text)}</pre>", inject=False)}, step)


_MLFLOW_KEY = re.compile(r"[^a-zA-Z0-9_\-./ ]")


class MLflowSink(LoggerSink):
    """Figures with ``log_image(key=tag, step=step)`` (MLflow's image-per-step view), text as an artifact
    ``viz/<stem>.txt``, scalars as metrics; histograms have no MLflow counterpart (the evolution figures
    carry them)."""

    def __init__(self, logger: Any) -> None:
        super().__init__(logger)
        importlib.import_module("mlflow")

    def figure(self, tag: str, rgba: np.ndarray, png: bytes, step: int, stem: str) -> None:
        client, run_id = self.logger.experiment, self.logger.run_id
        key = _MLFLOW_KEY.sub("_", tag)
        try:
            client.log_image(
                run_id, np.ascontiguousarray(rgba[..., :3]), key=key, step=step, synchronous=True
            )
        except TypeError:  # MLflow < 2.12: no per-step images; keep one file per figure
            client.log_image(run_id, np.ascontiguousarray(rgba[..., :3]), artifact_file=f"viz/{stem}.png")

    def text(self, tag: str, text: str, step: int, stem: str) -> None:
        self.logger.experiment.log_text(self.logger.run_id, text, f"viz/{stem}.txt")


class CSVSink(LoggerSink):
    """Scalars to the ``CSVLogger`` (its ``metrics.csv``); one row per histogram to ``statistics.csv``
    beside the figures: step, tag, count, min, max, mean, std, non-finite count. The figures themselves are
    the PNG files the :class:`FileSink` writes."""

    COLUMNS = ("step", "tag", "count", "min", "max", "mean", "std", "nonfinite")

    def __init__(self, logger: Any, root: str | Path) -> None:
        super().__init__(logger)
        self.path = Path(root) / "statistics.csv"
        self._lock = threading.Lock()

    def histogram(
        self, tag: str, edges: np.ndarray, counts: np.ndarray, stats: Mapping[str, float], step: int
    ) -> None:
        num = float(np.sum(counts))
        mean = float(stats["sum"]) / num if num > 0 else float("nan")
        var = float(stats["sum_squares"]) / num - mean * mean if num > 0 else float("nan")
        row = [step, tag, int(num), stats.get("min"), stats.get("max"), mean, max(var, 0.0) ** 0.5]
        row.append(int(stats.get("nonfinite", 0) or 0))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            with self.path.open("a", newline="") as fh:
                out = csv.writer(fh)
                if new:
                    out.writerow(self.COLUMNS)
                out.writerow(row)


# logger class name (anywhere in the MRO) -> kind; kinds that need a package name it and its extra
_KINDS = {
    "TensorBoardLogger": "tensorboard",
    "WandbLogger": "wandb",
    "MLFlowLogger": "mlflow",
    "CSVLogger": "csv",
}
EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}  # kind -> (module, extra)


def logger_kind(logger: Any) -> str:
    """``"tensorboard"``, ``"wandb"``, ``"mlflow"``, ``"csv"`` or ``"other"``, from the logger's class MRO."""
    for cls in type(logger).__mro__:
        if cls.__name__ in _KINDS and cls.__module__.split(".")[0] in {"lightning", "pytorch_lightning"}:
            return _KINDS[cls.__name__]
    return "other"


def missing_extra_message(logger: Any, module: str, extra: str) -> str:
    """The warning shown when ``logger`` is attached but ``module`` (installed by ``extra``) is missing."""
    return (
        f"lightning-viz: {type(logger).__name__} is attached but the `{module}` package is not installed, so "
        f"it receives scalars only (no images, histograms or text). Install it with: "
        f"pip install 'lightning-viz[{extra}]'"
    )


# One adapter per logger kind (see logger_kind); anything else gets the scalars-only LoggerSink.
ADAPTERS: dict[str, Callable[[Any, Path], Sink]] = {
    "tensorboard": lambda logger, root: TensorBoardSink(logger),
    "wandb": lambda logger, root: WandbSink(logger),
    "mlflow": lambda logger, root: MLflowSink(logger),
    "csv": lambda logger, root: CSVSink(logger, root),
    "other": lambda logger, root: LoggerSink(logger),
}


def make_sinks(loggers: Sequence[Any], root: str | Path) -> list[Sink]:
    """The file sink plus one adapter per attached logger, chosen once here (no logger: files only)."""
    sinks: list[Sink] = [FileSink(root)]
    for logger in loggers:
        kind = logger_kind(logger)
        try:
            sinks.append(ADAPTERS[kind](logger, Path(root)))
        except ImportError:
            module, extra = EXTRAS[kind]
            warn_once(("missing-extra", type(logger).__name__), missing_extra_message(logger, module, extra))
            sinks.append(LoggerSink(logger))
    return sinks


def drop_unwritable_files(sinks: list, directory: Any, owner: str) -> list:
    """``sinks`` without the file sink when ``directory`` is not writable, with one warning per directory.

    The other sinks (TensorBoard, W&B, MLflow, ...) still receive every figure, histogram and scalar.
    """
    if directory is None or not sinks:
        return sinks
    reason = unwritable_reason(directory)
    if reason is None:
        return sinks
    kept = [s for s in sinks if not isinstance(s, FileSink)]
    others = ", ".join(getattr(s, "name", type(s).__name__) for s in kept) or "none attached"
    warn_once(
        ("unwritable", str(directory)),
        f"{owner}: cannot write to the output directory {str(directory)!r} ({reason}); its files (PNG, "
        f"JSON, NPZ) are skipped for this run. Other destinations still receive everything ({others}); "
        "training continues. Set `output_dir` to a writable folder.",
    )
    return kept


def fan_out(
    sinks: Sequence[Sink], method: str, *args: Any, owner: str = "lightning-viz", **kwargs: Any
) -> None:
    """Call ``method`` on every sink; a sink that raises is reported once and skipped."""
    for sink in sinks:
        try:
            getattr(sink, method)(*args, **kwargs)
        except Exception as err:
            warn_once(
                (owner, sink.name, type(err).__name__),
                f"{owner}: sink {sink.name!r} failed in {method}() and is skipped for this output: {err!r}. "
                "Other destinations still receive it; training continues.",
            )

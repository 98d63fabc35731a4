"""VizCallback: the schedule, the stage filter, and the capture -> reduce -> keep -> render path.

The base class owns the path. It counts the one schedule (:mod:`lightning_viz.core.schedule`) at the
training hooks and, when a capture is due, calls the subclass's :meth:`~VizCallback.capture_batch`,
:meth:`~VizCallback.capture_optimizer_step` or :meth:`~VizCallback.capture_epoch` (every rank). A capture
returns a record (:mod:`lightning_viz.core.records`) whose kind declares its reduction; the base reduces it
(every rank, the same collectives in the same order), then calls :meth:`~VizCallback.keep` (every rank:
histories, decisions, :meth:`~VizCallback.publish`) and :meth:`~VizCallback.render` (rank 0: a pure
``render(data) -> Figure`` from :mod:`lightning_viz.render` through the emit helpers), each under its guard
(:meth:`~VizCallback.run_path`). A capture that completes outside the schedule's hooks (at the end of the
batch it examined) hands its record to :meth:`~VizCallback.run_path` itself. The base also provides
argument validation helpers, the output directory, sinks, emission on rank zero through the background
writer, the once-only failure warning, and flushing at fit end and on exceptions. A subclass that overrides
one of the training hooks calls ``super()`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure

from lightning_viz.core import distributed, errors, pacing, renderer, writer
from lightning_viz.core.errors import (  # noqa: F401  (the argument checks, re-exported for the callbacks)
    check_choice,
    check_int,
    check_patterns,
    check_scheduled,
)
from lightning_viz.core.figures import FRAME, FigureSpec
from lightning_viz.core.records import Captured, Reduced
from lightning_viz.core.schedule import Schedule
from lightning_viz.core.sinks import FileSink, Sink, drop_unwritable_files, fan_out, make_sinks
from lightning_viz.core.warn import short_error, warn_if_state_missing, warn_once

WhenFull = Literal["wait", "drop_oldest"]


def step_stem(prefix: str, step: int) -> str:
    """File stem for an output recorded at a global step, e.g. ``weights_step000040``."""
    return f"{prefix}_step{step:06d}"


class VizCallback(Callback):
    """Base class of the lightning-viz callbacks (not used directly).

    Subclasses must not store anything in ``self.log`` or ``self.log_dict``: Lightning assigns those
    attributes on every callback at fit start.

    Args:
        output_dir: where files go; default ``<trainer.log_dir>/viz/<callback name>``.
        when_full: what to do when the background rendering queue is full: ``"wait"`` (nothing is lost:
            figures wait in temporary files, and past 1000 of them the training step waits until there is
            room) or ``"drop_oldest"`` (discard the oldest pending picture and warn once).
    """

    viz_name: ClassVar[str] = "viz"
    # its figures and its report section, declared (read by the report and `lightning-viz render`)
    figures: ClassVar[tuple[FigureSpec, ...]] = ()
    section_title: ClassVar[str] = ""
    report_rank: ClassVar[int] = 100
    captures: ClassVar[str] = "capture"  # what its capture is called in a warning
    render_modules: ClassVar[
        tuple[str, ...]
    ] = ()  # what its render functions import beyond lightning_viz.render

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # its argument checks raise one line that names the callback
            cls.__init__ = errors.named_init(cls.__name__, cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self, output_dir: str | None = None, when_full: WhenFull = "wait") -> None:
        check_choice("when_full", when_full, ("wait", "drop_oldest"))
        self.output_dir = output_dir
        self.when_full = when_full
        self.viz_dir: Path | None = None
        self._sinks: list[Sink] = []
        self.schedule = Schedule()  # off; a callback that captures on a schedule sets its own

    # ------------------------------------------------------------------ the schedule (every rank)
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.schedule.start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = self.schedule.batch_due(trainer, batch_idx)
        if step is not None:
            self.run_path(
                trainer, self.captures, self._captured(trainer, self.capture_batch, pl_module, batch, step)
            )

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        index, by_step, by_epoch = self.schedule.optimizer_due(trainer, optimizer)
        if by_step or by_epoch:
            captured = self._captured(
                trainer, self.capture_optimizer_step, pl_module, optimizer, index, by_epoch=by_epoch
            )
            self.run_path(trainer, self.captures, captured)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.epoch_due(trainer):
            self.run_path(trainer, self.captures, self._captured(trainer, self.capture_epoch, pl_module))

    def capture_batch(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int
    ) -> Captured | None:
        """A due step opens with this batch (before its forward pass): the model after ``step`` updates.

        Called on every rank alike; returns the record to reduce, or ``None`` (nothing to reduce now, the
        same on every rank). A part that may fail on one rank only reports it in the record
        (``failed=True`` with placeholders of the same shapes), so that every rank still reduces.
        """
        return None

    def capture_optimizer_step(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        optimizer: torch.optim.Optimizer,
        index: int,
        *,
        by_epoch: bool,
    ) -> Captured | None:
        """Optimizer ``index`` is about to take a due step (its gradients are final); ``by_epoch``: it is
        due as the epoch's last step of a due epoch rather than by ``every_n_steps``. Every rank alike;
        returns the record to reduce, or ``None``."""
        return None

    def capture_epoch(self, trainer: Trainer, pl_module: LightningModule) -> Captured | None:
        """A due training epoch ends. Every rank alike; returns the record to reduce, or ``None``."""
        return None

    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        """Every rank, after the reduce phase: add the reduced record to the histories, take the decisions
        that must agree across ranks, :meth:`publish` it."""

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        """Rank 0, after :meth:`keep`: hand the record's figures, histograms and scalars to the sinks
        (:meth:`emit_figure`, :meth:`emit_histograms`, :meth:`emit_scalars`)."""

    # ------------------------------------------------------------------ the data path (every rank)
    def _captured(self, trainer: Trainer, capture: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``capture(trainer, *args, **kwargs)``; an exception it raises becomes one warning and no record."""
        with self.guard(trainer, self.captures):
            return capture(trainer, *args, **kwargs)
        return None

    def run_path(self, trainer: Trainer, what: str, captured: Captured | None) -> None:
        """The data path after a capture, in order: reduce (every rank), :meth:`keep` (every rank),
        :meth:`render` (rank 0), each under :meth:`guard`.

        Args:
            trainer: the running Trainer.
            what: what was captured, for the warning a failure gives.
            captured: the capture's record (``None``: nothing was captured, the same on every rank). Its
                kind declares the reduction (:mod:`~lightning_viz.core.records`); when it failed on some
                rank, every rank skips it, with one warning.
        """
        if captured is None:
            return
        reduced = None
        with self.guard(trainer, f"{what} (reduce)"):
            reduced = captured.reduce()
            if reduced is None and not captured.failed:  # (a failure here was said where it happened)
                warn_once(
                    (type(self).__name__, "failed-capture"),
                    f"{type(self).__name__}: {what} failed on some rank at step {captured.step} "
                    f"(epoch {trainer.current_epoch}); this step is skipped. Training continues; this "
                    "warning is shown once.",
                )
        if reduced is None:
            return
        with self.guard(trainer, what):
            self.keep(trainer, reduced)
        if self.emitting(trainer):
            with self.guard(trainer, f"drawing {what}"):
                self.render(trainer, reduced)

    # ------------------------------------------------------------------ identity and state
    def state_fields(self) -> dict[str, Any]:
        """The arguments that tell two callbacks of this class apart in a checkpoint (see ``state_key``)."""
        return {"output_dir": self.output_dir}

    @property
    def state_key(self) -> str:
        # Lightning reads every callback's state_key at every hook it calls (its profiler's action name):
        # made once per run (setup clears it), not a dict repr per hook and callback
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = self._generate_state_key(**self.state_fields())
        return key

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.__dict__.pop("_state_key", None)  # the arguments as they are for this run
        renderer.mode()  # a wrong LIGHTNING_VIZ_RENDER fails here, naming the valid choices
        if distributed.world_size() > 1:
            distributed.destroy_group_at_exit()  # a gloo group must not outlive the interpreter's finalization
            distributed.use_root_device(getattr(trainer.strategy, "root_device", None))
        # trainer.log_dir broadcasts from rank 0, so every rank calls it and agrees on the directory.
        log_dir = trainer.log_dir or trainer.default_root_dir
        self.viz_dir = Path(self.output_dir) if self.output_dir else Path(log_dir) / "viz" / self.viz_name
        self._sinks = make_sinks(trainer.loggers, self.viz_dir) if distributed.is_emitter(trainer) else []
        # An unwritable output directory drops the file sink (one warning); the loggers still receive.
        self._sinks = drop_unwritable_files(self._sinks, self.viz_dir, type(self).__name__)
        if self._sinks:  # figures will be drawn here: let the render process load matplotlib now
            renderer.get_renderer().start(preload=self.render_modules)
            # pacing: cumulative figures while every core trains; the folder named at fit end (<log_dir>/viz)
            pacing.DrawingPacer.attach(trainer, self.viz_dir if self.output_dir else self.viz_dir.parent)
        try:
            self.check_setup(trainer, pl_module, stage)
        except ValueError as err:
            raise errors.named(type(self).__name__, err) from err

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning skips load_state_dict silently when the checkpoint has no state for this callback.
        if self.state_dict():
            warn_if_state_missing(self, checkpoint)

    def check_setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Validate what depends on the model and the data (layer patterns, sample sizes); raise
        ``ValueError``. Runs in ``setup``; the part that needs only the model goes in :meth:`check_model`."""
        self.check_model(pl_module)

    def check_model(self, pl_module: LightningModule) -> None:
        """Validate what depends on the model alone (layer patterns); raise ``ValueError``.

        The ``lightning-viz`` command calls :meth:`validate_model` before the run starts, so such an error
        reaches the user before any run directory is made.
        """

    def validate_model(self, pl_module: LightningModule) -> None:
        """:meth:`check_model`, its ``ValueError`` as a :class:`~lightning_viz.core.errors.VizConfigError`
        that names this callback."""
        try:
            self.check_model(pl_module)
        except ValueError as err:
            raise errors.named(type(self).__name__, err) from err

    # ------------------------------------------------------------------ failure isolation
    @contextmanager
    def guard(self, trainer: Trainer, what: str) -> Iterator[None]:
        """Run a visualisation step; an exception becomes one warning and training goes on.

        Never wrap a block that issues collectives with this on only some ranks: capture and reduce report
        failures through ``reduce_values(failed=...)`` instead.
        """
        try:
            yield
        except Exception as err:
            warn_once(
                (type(self).__name__, what, type(err).__name__),
                f"{type(self).__name__}: {what} failed at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}): {short_error(err)}. Training continues; this warning is shown once.",
            )

    # ------------------------------------------------------------------ sharing captures
    def records(self) -> frozenset[str]:
        """The kinds of record (see :meth:`publish`) this callback publishes, as it is configured: a listener
        asks this at fit start instead of looking at the other callbacks' types and arguments."""
        return frozenset()

    def publish(self, trainer: Trainer, kind: str, step: int, payload: Any) -> None:
        """Hand a reduced record to every other callback that defines ``on_viz_record``.

        Called on every rank with data that is already reduced (identical on all ranks), so listeners such
        as a health check can reuse a capture instead of computing it again, and can take decisions that
        agree across ranks. Kinds: ``"histograms"`` (a :class:`~lightning_viz.core.stats.HistogramSet` of
        ``weights/<param>`` and ``gradients/<param>``; declared in :meth:`records` when it holds every
        parameter), ``"activation_stats"`` (``{layer: {stat: value}}`` plus ``"_types": {layer: module class
        name}``).
        """
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            listener = getattr(cb, "on_viz_record", None)
            if cb is not self and callable(listener):
                listener(trainer, self, kind, step, payload)

    # ------------------------------------------------------------------ declared figures
    @classmethod
    def figure_spec(cls, stem: str) -> FigureSpec:
        """The declared figure (``figures``) a PNG stem belongs to; raises ``LookupError`` if none does."""
        m = FRAME.match(stem)
        series = m["series"] if m else stem
        spec = next((f for f in cls.figures if f.series == series), None)
        spec = spec or next((f for f in cls.figures if f.series == "*"), None)
        if spec is None:
            raise LookupError(f"{cls.__name__} declares no figure {stem!r} in `figures`")
        return spec

    # ------------------------------------------------------------------ emission (rank zero only)
    def emitting(self, trainer: Trainer) -> bool:
        return distributed.is_emitter(trainer) and bool(self._sinks)

    def _submit(
        self,
        label: str,
        job: Callable[[], None],
        queue: Literal["io", "render"] = "io",
        key: Any = None,
        snapshot: bool = False,
    ) -> None:
        writer.get_writer(queue).submit(job, f"{type(self).__name__} {label}", self.when_full, key, snapshot)

    def emit_figure(
        self,
        trainer: Trainer,
        render: Callable[[Any], Figure],
        data: Any,
        *,
        tag: str,
        stem: str,
        step: int,
        save_data: Any = None,
        cumulative: bool | None = None,
    ) -> None:
        """Draw ``render(data)`` in the render process (see :mod:`~lightning_viz.core.renderer`), off the
        training thread, and hand the picture to every sink (rank zero only).

        The figures of one ``tag`` are a series: drawn at most once per redraw interval and at fit end, a
        newer one taking the place of one still waiting (see :mod:`~lightning_viz.core.writer`); the data
        of every one is saved, and ``lightning-viz render`` draws those that were not. With the interval at
        0 (``LIGHTNING_VIZ_REDRAW_S=0``) every snapshot is drawn, and only cumulative figures are replaced,
        when drawing is behind.

        Args:
            render: pure function from plain data to a Figure.
            data: its input (must not be mutated afterwards).
            tag: logger tag, e.g. ``viz/weight_histogram/weights``.
            stem: file stem under the output directory.
            step: global step for loggers.
            save_data: what to save beside the PNG (defaults to ``data``); ``False`` saves nothing.
            cumulative: the figure shows everything so far (a newer one makes it redundant). Default: as
                declared in the callback's ``figures`` for this stem.
        """
        if not self.emitting(trainer):
            return
        if cumulative is None:
            try:
                cumulative = self.figure_spec(stem).cumulative
            except LookupError:  # a figure its class does not declare: a snapshot
                cumulative = False
        series = cumulative or writer.redraw_every_s() > 0
        sinks = list(self._sinks)
        owner = type(self).__name__
        payload = data if save_data is None else save_data

        if payload is not False:
            files = [s for s in sinks if isinstance(s, FileSink)]
            self._submit(f"{stem} data", lambda: fan_out(files, "data", stem, payload, owner=owner))

        def draw(job: tuple[Callable[[Any], Figure], Any]) -> None:
            # on the render queue's thread; the drawing itself is in the render process
            rgba, png = renderer.render_png(*job)
            self._submit(stem, lambda: fan_out(sinks, "figure", tag, rgba, png, step, stem, owner=owner))

        # (render, data) may wait on disk while drawing is behind: see lightning_viz.core.writer
        job = writer.DiskBacked((render, data), draw)
        self._submit(stem, job, "render", key=(id(self), tag) if series else None, snapshot=not cumulative)

    def emit_histograms(
        self,
        trainer: Trainer,
        items: list[tuple[str, np.ndarray, np.ndarray, Mapping[str, float]]],
        step: int,
    ) -> None:
        """Many native histograms ``(tag, edges, counts, stats)`` of one step, as one background job."""
        if not self.emitting(trainer) or not items:
            return
        sinks, owner = list(self._sinks), type(self).__name__

        self._submit(
            f"histograms step {step}", lambda: fan_out(sinks, "histograms", items, step, owner=owner)
        )

    def emit_scalars(self, trainer: Trainer, values: Mapping[str, float], step: int) -> None:
        """Scalars to every logger, on the calling thread (loggers are not all thread-safe)."""
        if not self.emitting(trainer) or not values:
            return
        fan_out(
            self._sinks, "scalars", {k: float(v) for k, v in values.items()}, step, owner=type(self).__name__
        )

    def emit_text(self, trainer: Trainer, tag: str, text: str, step: int, stem: str) -> None:
        """A text block to the files and the loggers that show text (rank zero only)."""
        if not self.emitting(trainer):
            return
        sinks, owner = list(self._sinks), type(self).__name__
        self._submit(f"{stem}", lambda: fan_out(sinks, "text", tag, text, step, stem, owner=owner))

    def emit_data(self, trainer: Trainer, stem: str, payload: Any) -> None:
        """Data only (no figure), saved beside the figures (rank zero only)."""
        if not self.emitting(trainer):
            return
        sinks, owner = [s for s in self._sinks if isinstance(s, FileSink)], type(self).__name__
        self._submit(f"{stem}", lambda: fan_out(sinks, "data", stem, payload, owner=owner))

    # ------------------------------------------------------------------ flushing
    def finish(self, trainer: Trainer) -> None:
        """Draw what is still pending (final figures); runs at fit end and after the training loop fails."""

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finish(trainer)
        writer.flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Draw what was recorded up to the failure, then flush every pending figure to disk.
        with self.guard(trainer, "drawing after the training loop failed"):
            self.finish(trainer)
        writer.flush()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        writer.flush()

"""The ``lightning-viz`` command: Lightning's LightningCLI with any LightningModule and LightningDataModule.

Usage::

    lightning-viz fit --model mypkg.MyModel --data mypkg.MyData   # your own project, from its folder
    lightning-viz fit --config quickstart                          # a shipped config, by name
    lightning-viz fit --config configs/quickstart.yaml --trainer.max_epochs=10
    lightning-viz fit --config quickstart --print_config
    lightning-viz fit --help
    lightning-viz fit --trainer.callbacks.help lightning_viz.WeightHistogramCallback
    lightning-viz configs | render <viz-dir> | report <viz-dir>

``fit``, ``validate``, ``test`` and ``predict`` work as in LightningCLI. Model and data are chosen by class
path (subclass mode), so one command runs every project; the current directory is on the import path, as
with ``python -m``. The callbacks are switched on in the YAML under ``trainer.callbacks``; when none of
them is a lightning-viz callback, the core ones are on (one line says so; ``--viz_defaults=false`` turns
that off). An invalid callback argument is one line on stderr and exit status 2. After ``fit``, one line
tells where the pictures are.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import re
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback

import lightning_viz
import lightning_viz.callbacks  # imported so that `fit --help` lists every lightning-viz callback
from lightning_viz.core import distributed, errors
from lightning_viz.core.base import VizCallback
from lightning_viz.core.pacing import DrawingPacer

# What is on when no lightning-viz callback is configured (``--viz_defaults=false`` turns it off).
DEFAULT_CALLBACKS = (
    "ModelSummaryCallback",
    "WeightHistogramCallback",
    "ActivationMapCallback",
    "CurvePlotCallback",
    "TrainingHealthCallback",
    "ReportCallback",
)


def viz_dirs(trainer: Trainer) -> list[Path]:
    """Where the visualisation callbacks of ``trainer`` wrote: ``<log_dir>/viz`` plus any custom ``output_dir``.

    Calls ``trainer.log_dir``, which broadcasts under DDP, so call it on every rank.
    """
    default = Path(trainer.log_dir or trainer.default_root_dir) / "viz"
    dirs: list[Path] = []
    for cb in trainer.callbacks:
        if not isinstance(cb, VizCallback):
            continue
        where = Path(cb.viz_dir) if cb.viz_dir is not None else default
        where = default if where.parent == default else where
        if where not in dirs:
            dirs.append(where)
    return dirs


def did_you_mean(message: str) -> str | None:
    """A hint for a jsonargparse error about a lightning-viz callback: the argument or class meant."""
    exported = [n for n in lightning_viz.__all__ if n[0].isupper()]
    for path, option in re.findall(
        r"class_path '(lightning_viz[\w.]*\.\w+)':\s*Option '(\w+)' is not accepted", message
    ):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if dataclasses.is_dataclass(cls):  # a typed group of arguments (TrainingHealthCallback's thresholds)
            accepted = [f.name for f in dataclasses.fields(cls)]
        else:
            accepted = [a for a in inspect.signature(cls.__init__).parameters if a != "self"]
        close = get_close_matches(option, accepted, n=1, cutoff=0.6)
        if close:
            return f"did you mean `{close[0]}` (an argument of {path})? Arguments: {', '.join(accepted)}"
        return f"{path} takes: {', '.join(accepted)}"
    for name in re.findall(
        r"(?:lightning_viz\.|\b)(\w+(?:Callback|Histogram|Map|Plot|Summary|Health)\w*)", message
    ):
        if name in exported:
            continue
        close = get_close_matches(name, exported, n=1, cutoff=0.6)
        if close:
            return f"did you mean `lightning_viz.{close[0]}`? lightning-viz callbacks: " + ", ".join(
                f"lightning_viz.{n}" for n in exported if n != "VizCallback"
            )
    return None


class VizArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors about a lightning-viz callback end with a "did you mean"."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        hint = did_you_mean(message)
        super().error(f"{message}\n{hint}" if hint else message, ex)  # type: ignore[call-arg]


class VizSaveConfigCallback(SaveConfigCallback):
    """Lightning's config saver, which saves beside the pictures when the logger has no ``log_dir``.

    ``MLFlowLogger`` with a database tracking URI (``sqlite:///runs/mlflow.db``) gives ``trainer.log_dir``
    None, and Lightning's saver then fails on an assertion; the pictures go to ``default_root_dir/viz``, so
    ``config.yaml`` goes to ``default_root_dir``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.save_to_log_dir and not self.already_saved and trainer.log_dir is None:
            if trainer.is_global_zero:
                root = Path(trainer.default_root_dir)
                root.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config, str(root / self.config_filename), skip_none=False, overwrite=True
                )
            self.save_to_log_dir = False  # the rest (save_config, the broadcast) as Lightning does it
        super().setup(trainer, pl_module, stage)


class VizCLI(LightningCLI):
    """LightningCLI with the core callbacks on by default, one-line errors, and the pictures' place at the end."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--viz_defaults",
            type=bool,
            default=True,
            help="When no lightning-viz callback is under trainer.callbacks, switch on the core ones ("
            + ", ".join(DEFAULT_CALLBACKS)
            + "). false: train without them.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks")
        configured = (
            [] if configured is None else list(configured) if isinstance(configured, list) else [configured]
        )
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        if self._get(self.config_init, "viz_defaults", default=True) and not any(
            isinstance(cb, VizCallback) for cb in [*configured, *extra]
        ):
            defaults: list[Callback] = [getattr(lightning_viz, name)() for name in DEFAULT_CALLBACKS]
            kwargs["callbacks"] = configured + defaults
            if distributed.is_emitter():
                print(
                    "lightning-viz: no lightning-viz callback is configured, so the core ones are on: "
                    + ", ".join(n.removesuffix("Callback") for n in DEFAULT_CALLBACKS)
                    + " (--viz_defaults=false turns them off)",
                    flush=True,
                )
        trainer = super().instantiate_trainer(**kwargs)
        self._prepare_renderer(trainer)
        setattr(trainer, DrawingPacer.SAYS_WHERE, True)  # after_fit names the folders (and the report)
        return trainer

    @staticmethod
    def _prepare_renderer(trainer: Trainer) -> None:
        """Ask the render process (started before Lightning was imported, see :mod:`lightning_viz.command`)
        for the modules the configured callbacks' figures need, now, while the run is still being built;
        stop it when no lightning-viz callback is on."""
        from lightning_viz.core import renderer

        ours = [cb for cb in trainer.callbacks if isinstance(cb, VizCallback)]  # type: ignore[attr-defined]
        if not ours:
            renderer.stop_renderer()
        elif distributed.is_emitter():
            renderer.get_renderer().start(preload=sorted({m for cb in ours for m in cb.render_modules}))

    def _check_models(self) -> None:
        """The callbacks' checks that need only the model, before any run directory is made."""
        for cb in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, VizCallback):
                cb.validate_model(self.model)

    def before_fit(self) -> None:
        self._check_models()

    def before_validate(self) -> None:
        self._check_models()

    def before_test(self) -> None:
        self._check_models()

    def before_predict(self) -> None:
        self._check_models()

    def after_fit(self) -> None:
        dirs = viz_dirs(self.trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if not distributed.is_emitter(self.trainer):
            return
        if not dirs:
            print("lightning-viz: no lightning-viz callback was on (--viz_defaults=false)", flush=True)
            return
        written = [d for d in dirs if d.is_dir() and any(f.is_file() for f in d.rglob("*"))]
        if not written:
            print(
                "lightning-viz: no picture was written to "
                + ", ".join(str(d) for d in dirs)
                + " (see the warning above); the loggers received what they take",
                flush=True,
            )
            return
        from lightning_viz.callbacks.report import ReportCallback

        reports = [
            cb.report_path
            for cb in self.trainer.callbacks  # type: ignore[attr-defined]
            if isinstance(cb, ReportCallback) and cb.report_path
        ]
        line = f"lightning-viz: pictures are in {', '.join(str(d) for d in written)}"
        print(line + (f"; report: {reports[0]}" if reports else ""), flush=True)


def build_cli(args: ArgsType = None, run: bool = True) -> VizCLI:
    """Build (and with ``run=True``, run) the lightning-viz LightningCLI.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``), e.g. ``["fit", "--config", "x.yaml"]``.
            With ``run=False`` there is no subcommand: ``["--config", "x.yaml"]`` parses and instantiates.
        run: whether to run the subcommand.

    Returns:
        The LightningCLI, with ``trainer``, ``model`` and ``datamodule`` instantiated.
    """
    return VizCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=VizSaveConfigCallback,
        parser_class=VizArgumentParser,
        save_config_kwargs={"overwrite": True},
        # An abbreviated flag (--trainer.max_epoch) is an error, not a silent match of --trainer.max_epochs.
        parser_kwargs={"allow_abbrev": False},
        args=args,
        run=run,
    )


TOOLS = {
    "render": ("lightning_viz.rerender", "redraw every figure of a viz directory from its saved data"),
    "report": ("lightning_viz.report", "build the self-contained report.html of a viz directory"),
    "configs": ("lightning_viz.config_files", "list the shipped example configs, or copy one to edit"),
}


def _top_help(args: ArgsType) -> None:
    """``lightning-viz --help``: LightningCLI's help, then the file tools."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        build_cli(args)
    print(buf.getvalue().rstrip())
    print("\nfile tools (lightning-viz TOOL --help for each):")
    for name, (_, what) in TOOLS.items():
        print(f"    {name:<20}{what}")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lightning-viz`` console script.

    ``lightning-viz fit|validate|test|predict ...`` is LightningCLI; ``lightning-viz render <viz-dir>``,
    ``lightning-viz report <viz-dir>`` and ``lightning-viz configs`` work on files. The current directory is
    put on the import path (as ``python -m`` does), ``--config NAME`` finds a shipped config by name, and an
    invalid lightning-viz callback argument ends the command with one line on stderr and exit status 2.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).
    """
    import importlib

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--model mypkg.MyModel` from the folder that holds mypkg
    if isinstance(args, dict):
        build_cli(args)
        return
    from lightning_viz.config_files import resolve_config_args

    argv = resolve_config_args(list(sys.argv[1:] if args is None else args))
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        raise SystemExit(module.main(argv[1:]))
    # LightningCLI warns when it is given the arguments it would read itself
    cli_args = None if args is None and argv == sys.argv[1:] else argv
    if argv and argv[0] in ("-h", "--help"):
        _top_help(cli_args)
        return
    mark = errors.mark()
    try:
        build_cli(cli_args)
    except Exception as err:
        found = errors.raised_since(mark, err)
        if found is None:
            raise
        print(f"lightning-viz: error: {found}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()

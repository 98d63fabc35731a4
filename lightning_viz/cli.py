"""The ``lightning-viz`` command: Lightning's LightningCLI with any LightningModule and LightningDataModule.

Usage::

    lightning-viz fit --config configs/quickstart.yaml
    lightning-viz fit --config configs/quickstart.yaml --trainer.max_epochs=10
    lightning-viz fit --config configs/quickstart.yaml --print_config
    lightning-viz fit --help
    lightning-viz fit --trainer.callbacks.help lightning_viz.WeightHistogramCallback

``fit``, ``validate``, ``test`` and ``predict`` work as in LightningCLI. Model and data are chosen by class
path (subclass mode), so one command runs every project; the callbacks are switched on in the YAML under
``trainer.callbacks``. After ``fit``, one line tells where the pictures are.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI

from lightning_viz.core import distributed
from lightning_viz.core.base import VizCallback

try:  # import the example projects so that short names work: --model DigitsClassifier
    import example_projects.digits
    import example_projects.mnist  # noqa: F401
except ImportError:  # pragma: no cover - lightning_viz vendored without its examples
    pass


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


class VizCLI(LightningCLI):
    """LightningCLI that reports, after ``fit``, where the pictures are."""

    def after_fit(self) -> None:
        dirs = viz_dirs(self.trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if not distributed.is_emitter(self.trainer):
            return
        if dirs:
            from lightning_viz.callbacks.report import ReportCallback

            reports = [
                cb.report_path
                for cb in self.trainer.callbacks  # type: ignore[attr-defined]
                if isinstance(cb, ReportCallback) and cb.report_path
            ]
            line = f"lightning-viz: pictures are in {', '.join(str(d) for d in dirs)}"
            print(line + (f"; report: {reports[0]}" if reports else ""), flush=True)
        else:
            print(
                "lightning-viz: no visualisation callback was configured under trainer.callbacks "
                "(see configs/quickstart.yaml)",
                flush=True,
            )


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
        save_config_kwargs={"overwrite": True},
        # An abbreviated flag (--trainer.max_epoch) is an error, not a silent match of --trainer.max_epochs.
        parser_kwargs={"allow_abbrev": False},
        args=args,
        run=run,
    )


TOOLS = {
    "render": ("lightning_viz.rerender", "redraw every figure of a viz directory from its saved data"),
    "report": ("lightning_viz.report", "build the self-contained report.html of a viz directory"),
}


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lightning-viz`` console script.

    ``lightning-viz fit|validate|test|predict ...`` is LightningCLI; ``lightning-viz render <viz-dir>`` and
    ``lightning-viz report <viz-dir>`` work on the files of a finished (or crashed) run.

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).
    """
    import importlib
    import sys

    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv and argv[0] in TOOLS:
        module = importlib.import_module(TOOLS[argv[0]][0])
        raise SystemExit(module.main(argv[1:]))
    build_cli(args)


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``lightning-viz`` console script (and ``python -m lightning_viz``): the render process starts first.

Importing Lightning takes seconds of one core (it brings torch, torchmetrics and torchvision), and so does
the render process's own start-up (Python, matplotlib, the render functions). A run that may draw figures
starts the render process before that import, so that on a machine with a second core the two load side by
side instead of one after the other; :mod:`lightning_viz.cli` then runs as before. Not started early: for
``--help``, ``--print_config`` and the file tools (``render``, ``report``, ``configs``), with
``--viz_defaults=false`` (the command then most likely trains without lightning-viz: the callbacks start it
at ``setup`` if any is configured after all), with ``LIGHTNING_VIZ_RENDER=thread``, and on any process but
global rank zero (which alone draws). When no lightning-viz callback turns out to be on, the CLI stops it.
A run also destroys its process group at exit (:func:`lightning_viz.core.distributed.destroy_group_at_exit`:
Lightning does so for NCCL only, and a gloo group left to the interpreter's finalization aborted finished
DDP runs). The render process keeps its normal priority until training starts (it is then demoted to the lowest, see
:mod:`lightning_viz.core.renderer`), so that what it loads uses the core that the importing leaves idle.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

RUNS = ("fit", "validate", "test", "predict")
# Callbacks whose figures need more than lightning_viz.render, and what (their ``render_modules``): when a
# config given on the command line names one, the render process imports it while Lightning is imported.
PRELOAD_FOR = {"MetricPlotCallback": ("lightning_viz.render.metrics", "torchmetrics")}
NOT_A_RUN = ("-h", "--help", "--print_config")


def draws_figures(argv: Sequence[str]) -> bool:
    """Whether the arguments of ``lightning-viz`` start a run that may draw figures (see the module)."""
    if not argv or argv[0] not in RUNS:
        return False
    for i, arg in enumerate(argv):
        if arg in NOT_A_RUN or arg.startswith("--print_config=") or arg.startswith("--help="):
            return False
        value = arg.split("=", 1)[1] if arg.startswith("--viz_defaults=") else None
        if arg == "--viz_defaults" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and value.strip().lower() in ("false", "0", "no", "off"):
            return False
    return True


def start_renderer_early(argv: Sequence[str]) -> bool:
    """Start the render process now when ``argv`` may draw figures on this process; whether it started."""
    from lightning_viz.core import renderer

    if not draws_figures(argv):
        return False
    try:
        if renderer.mode() != "process":
            return False
    except ValueError:  # a wrong LIGHTNING_VIZ_RENDER: the callbacks' setup reports it
        return False
    from lightning_viz.core import distributed  # imports torch, not Lightning

    if not distributed.launcher_rank_zero():
        return False
    renderer.get_renderer().start(preload=preload_for(argv))
    return True


def preload_for(argv: Sequence[str]) -> list[str]:
    """What the callbacks named in ``argv`` or in the config files it gives need (:data:`PRELOAD_FOR`)."""
    from lightning_viz.config_files import resolve_config_args

    argv = resolve_config_args(list(argv))
    texts = list(argv)
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path:
            try:
                texts.append(Path(path).read_text(errors="replace"))
            except OSError:  # not a file (a YAML string) or unreadable: LightningCLI reports it
                texts.append(path)
    return sorted({m for name, mods in PRELOAD_FOR.items() if any(name in t for t in texts) for m in mods})


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-viz`` console script: :func:`lightning_viz.cli.main`, with the render
    process started first (see the module docstring).

    Args:
        args: command-line arguments (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as lightning_viz.cli.main does: the render process imports from it
    if argv and argv[0] in RUNS:
        from lightning_viz.core import distributed

        distributed.destroy_group_at_exit()  # with or without callbacks: a gloo group must not outlive exit
    start_renderer_early(argv)
    from lightning_viz.cli import main as cli_main

    cli_main(None if args is None else list(args))

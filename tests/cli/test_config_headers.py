"""Every command in a config's comment header runs, as written, through the installed ``lightning-viz``.

The commands are collected from the leading ``#`` block of every YAML under ``configs/`` (globbed, so a
config added later is covered; one whose header shows no command fails
``test_every_config_documents_a_command``): each indented line that starts with ``lightning-viz``
(``#   lightning-viz fit --config ...``), a trailing ``# comment`` dropped.

Each runs shlex-split exactly as written, from a temporary working directory that holds a ``configs``
symlink to the repository's ``configs/``, so the header's relative paths work and every output (``runs/``,
``data/``, MLflow's database) lands in the temporary directory. The commands that start processes of their
own (the distributed overlays), the one that must fail offline, W&B's and the quickstart run as subprocesses of
the installed console script; the others run through the function the console script calls
(``lightning_viz.cli.main``) in this process, with the same arguments, working directory and environment,
their Python warnings shown as Lightning shows them (``<file>:<line>: <message>``): the same code path
without paying 10-16 s of ``import torch`` per command (``tests/cli/test_first_run.py`` runs the script
itself as users type it). The ONLY
change to a command is the short-training overrides appended at its end (``SHORT``: one epoch of 3 training
and 2 validation batches, no progress bar), to keep the suite short. The HTTP(S) proxy is set to a closed
local port, so every run is offline whatever the machine: downloads fail fast and the same way everywhere.

For each command: exit status 0, the last stdout line says where the pictures are, every lightning-viz
callback of the resolved config (the ``config.yaml`` the run saved) wrote a readable PNG there, and stderr
holds no lightning-viz warning but those the header documents. The commands that cannot run here are
listed with their reasons (``OFFLINE_FAILS``, ``NEEDS_GPUS``), with what is checked of them instead.
"""

from __future__ import annotations

import base64
import importlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml

from lightning_viz.callbacks.report import ReportCallback
from lightning_viz.cli import DEFAULT_CALLBACKS
from lightning_viz.core.base import VizCallback
from lightning_viz.report import REPORT_NAME
from tests.distributed.test_distributed import assert_no_duplicate_events
from tests.helpers import read_events

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in {".yaml", ".yml"})
BIN = Path(sys.executable).parent  # the venv's bin/, which holds the lightning-viz console script
SHORT = (
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
)
TIMEOUT = 240  # seconds per command: a hang (a distributed one above all) fails instead of stalling
PICTURES = "lightning-viz: pictures are in "
# Lines of ours that are information, not warnings (each asks nothing of the user).
KNOWN_INFO = (
    PICTURES,
    "lightning-viz: no lightning-viz callback is configured",
    "lightning-viz: figures are produced faster than they are drawn",
)
# A warning of ours on stderr. Lightning prints a warning as "<file>:<line>: <message>", without its
# category, so it is known by the file that raised it; our other lines start with "lightning-viz:".
OURS = re.compile(r"^lightning-viz:|VizWarning|[/\\]lightning_viz[/\\][\w/\\]+\.py:\d+: ")
OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, so a download is refused at once

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines a logger prints to stdout at process exit, after the command's last line: W&B's atexit hook prints
# where the offline run is and how to sync it ("wandb: wandb sync runs/quickstart_wandb/wandb/...").
LOGGER_EXIT_LINES = ("wandb:",)

# Header commands that cannot run offline, each with why and what is asserted instead.
OFFLINE_FAILS = {
    "lightning-viz fit --config configs/mnist.yaml": (
        "downloads MNIST (torchvision) on its first run; offline it must stop with one line that names the "
        "failed download, with no traceback",
        "MNIST download failed",
    ),
}
# Header commands that need more GPUs than the test machine may have: run only where they are.
NEEDS_GPUS = {
    "lightning-viz fit --config configs/quickstart.yaml --config configs/fsdp1.yaml": (
        2,
        "Lightning runs FSDPStrategy on GPUs only, 2 as written (its CPU run, with two overrides, is "
        "tests/distributed/test_fsdp1.py)",
    ),
}
# What a header documents on stderr beyond its "Expect:" lines: each substring must appear, and a
# lightning-viz warning that holds one is documented, not a failure.
DOCUMENTED_STDERR = {
    # "Offline it says so in one line and trains on a SYNTHETIC stand-in instead"
    "lightning-viz fit --config configs/cifar_resnet.yaml": ["CIFAR10DataModule: CIFAR-10 is not available"],
    # "the activation maps are skipped (one warning)"
    "lightning-viz fit --config configs/quickstart.yaml --config configs/fsdp1.yaml": [
        "ActivationMapCallback"
    ],
}


# Documented messages that the short run (SHORT: 3 optimizer steps) cannot reach, each with why.
BEYOND_SHORT_RUN = {
    "TrainingHealthCallback: exploding gradients: classifier.fc1.weight": "gradient norms are examined at "
    "steps 0, 5, 10, ... (the quickstart's log_every_n_steps: 5) and are first above 1e3 at step 10; the short "
    "run shows the documented non-finite values and 'updates too large' at step 0 instead",
}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def header(path: Path) -> list[str]:
    """The text of the leading comment block of ``path``, one entry per line, without the ``#``."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def header_commands(path: Path) -> list[str]:
    """The command lines of ``path``'s header: set off by indentation (``#   lightning-viz fit ...``, as
    opposed to prose that starts with the name), a trailing ``# comment`` dropped."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if re.match(r"#\s{2,}lightning-viz ", line):
            commands.append(shlex.join(shlex.split(line.lstrip("#"), comments=True)))
    return commands


def expected_stderr(command: str) -> tuple[list[str], list[str]]:
    """What the headers of the command's configs say it prints on stderr: the messages that must appear
    (the quoted ones after ``Expect:``, cut at their placeholder ``at step N`` or ``...``, and
    ``DOCUMENTED_STDERR``) and what a warning of ours may hold. A header with ``Expect:`` plants a pathology,
    so every TrainingHealthCallback warning is expected there (a planted fault has consequences: weights
    blown up by a huge learning rate also kill the ReLUs behind them)."""
    required, allowed = list(DOCUMENTED_STDERR.get(command, [])), list(DOCUMENTED_STDERR.get(command, []))
    for path in command_configs(command):
        text = " ".join(header(path))
        if "Expect:" not in text:
            continue
        allowed.append("TrainingHealthCallback: ")
        for quoted in re.findall(r'"([^"]+)"', text.split("Expect:", 1)[1]):
            message = quoted.removesuffix("...").strip().removesuffix(":").split(" at step N")[0]
            if message not in BEYOND_SHORT_RUN:
                required.append(message)
    return required, allowed


def command_configs(command: str) -> list[Path]:
    argv = shlex.split(command)
    return [REPO / argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def is_distributed(command: str) -> bool:
    devices = [(load(p).get("trainer") or {}).get("devices") for p in command_configs(command)]
    return any(isinstance(d, int) and d > 1 for d in devices)


# command -> the config whose header documents it (the first, when two headers give the same command)
COMMANDS: dict[str, Path] = {}
for _path in CONFIGS:
    for _command in header_commands(_path):
        COMMANDS.setdefault(_command, _path)


def params() -> list:
    out = []
    for command in COMMANDS:
        marks = [pytest.mark.slow]
        if is_distributed(command):
            marks.append(pytest.mark.distributed)
        if command in NEEDS_GPUS:
            gpus, why = NEEDS_GPUS[command]
            marks.append(pytest.mark.skipif(torch.cuda.device_count() < gpus, reason=why))
        out.append(pytest.param(command, marks=marks, id=command.removeprefix("lightning-viz ")))
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_every_config_documents_a_command(path):
    assert header_commands(path), (
        f"{rel(path)}: its comment header shows no `lightning-viz ...` command line (the way to run it)"
    )
    for command in header_commands(path):
        for config in command_configs(command):
            assert config.is_file(), f"{rel(path)}: `{command}` names {rel(config)}, which does not exist"


def test_the_exception_lists_name_header_commands():
    stale = (set(OFFLINE_FAILS) | set(NEEDS_GPUS) | set(DOCUMENTED_STDERR) | AS_SUBPROCESS) - set(COMMANDS)
    assert not stale, f"not a header command any more: {sorted(stale)}"
    headers = " ".join(" ".join(header(p)) for p in CONFIGS)
    gone = [m for m in BEYOND_SHORT_RUN if m not in headers]
    assert not gone, f"BEYOND_SHORT_RUN names messages no header documents: {gone}"


def environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = OFFLINE
    env["no_proxy"] = env["NO_PROXY"] = "localhost,127.0.0.1"
    return env


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """``command`` exactly as written plus ``SHORT``, from ``cwd``; its whole process group is killed at
    ``TIMEOUT`` (Lightning starts the other ranks of a distributed run as children)."""
    (cwd / "configs").symlink_to(CONFIG_DIR, target_is_directory=True)
    argv = [*shlex.split(command), *SHORT]
    env = environment()
    assert shutil.which(argv[0], path=env["PATH"]) == str(BIN / "lightning-viz")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`{command}` did not finish in {TIMEOUT} s:\n{out[-2000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# Header commands that run as subprocesses of the console script (see the module docstring): the
# quickstart, and W&B, whose run is process-global (an in-process run would stay the active one and a later
# WandbLogger in this process would log into it).
AS_SUBPROCESS = {
    "lightning-viz fit --config configs/quickstart.yaml",
    "lightning-viz fit --config configs/quickstart.yaml --config configs/loggers/wandb.yaml",
}


def as_subprocess(command: str) -> bool:
    return command in AS_SUBPROCESS or command in OFFLINE_FAILS or is_distributed(command)


def run_in_process(
    command: str, cwd: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> subprocess.CompletedProcess:
    """``command`` plus ``SHORT`` through ``lightning_viz.cli.main``, from ``cwd`` with the environment of
    :func:`environment`; stdout and stderr as the process would print them, warnings included."""
    from lightning_viz.cli import main
    from lightning_viz.core.warn import reset_warnings

    (cwd / "configs").symlink_to(CONFIG_DIR, target_is_directory=True)
    argv = [*shlex.split(command), *SHORT]
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main puts the working directory on it
    for key, value in environment().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    reset_warnings()
    capfd.readouterr()
    code = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capfd.readouterr()
    shown = "".join(f"{w.filename}:{w.lineno}: {w.message}\n" for w in caught)
    return subprocess.CompletedProcess(argv, code, out, shown + err)


def warnings_of_ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if OURS.search(line) and not line.startswith(KNOWN_INFO)]


def picture_dirs(line: str, cwd: Path) -> tuple[list[Path], Path | None]:
    """The directories named in the ``pictures are in A, B; report: R`` line, and the report, resolved
    against ``cwd``."""
    listed, _, report = line.removeprefix(PICTURES).partition("; report: ")
    return [(cwd / d).resolve() for d in listed.split(", ")], (cwd / report).resolve() if report else None


def viz_callbacks(config: dict) -> list[tuple[type, dict]]:
    """The lightning-viz callbacks of a resolved config, as (class, init_args); the core ones when none is
    configured and ``viz_defaults`` is on, as the command does."""
    import lightning_viz

    found = []
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        module, _, name = cb["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, VizCallback):
            found.append((cls, cb.get("init_args") or {}))
    if not found and config.get("viz_defaults", True):
        found = [(getattr(lightning_viz, name), {}) for name in DEFAULT_CALLBACKS]
    return found


def assert_pictures(where: Path, who: str) -> None:
    pngs = sorted(where.rglob("*.png")) if where.is_dir() else []
    files = sorted(f.name for f in where.rglob("*") if f.is_file()) if where.is_dir() else []
    assert pngs, f"{who} wrote no PNG under {where} ({files})"
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 10, f"{png} is not a picture"


def assert_report(report: Path | None) -> None:
    assert report is not None and report.is_file(), f"ReportCallback wrote no report ({report})"
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report.read_text())
    assert embedded, f"{report} embeds no picture"
    image = matplotlib.image.imread(io.BytesIO(base64.b64decode(embedded[0])), format="png")
    assert image.ndim == 3 and min(image.shape[:2]) > 10, f"{report}: its first picture is not one"


@pytest.mark.parametrize("command", params())
def test_header_command_runs(tmp_path, command, capfd, monkeypatch):
    proc = (
        run(command, tmp_path)
        if as_subprocess(command)
        else run_in_process(command, tmp_path, capfd, monkeypatch)
    )
    log = f"`{command}` (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    if command in OFFLINE_FAILS:
        _why, message = OFFLINE_FAILS[command]
        assert proc.returncode != 0, log
        assert "Traceback" not in proc.stderr, log
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
        assert last.startswith(message) and "download" in last, log
        assert len(last) < 400, f"not a short message: {last!r}"
        return

    assert proc.returncode == 0, log
    assert "Traceback" not in proc.stderr, log
    required, allowed = expected_stderr(command)
    for message in required:
        assert message in proc.stderr, f"the header documents {message!r} on stderr; not there.\n{log}"
    undocumented = [w for w in warnings_of_ours(proc.stderr) if not any(m in w for m in allowed)]
    assert not undocumented, f"lightning-viz warnings the header does not document: {undocumented}\n{log}"

    lines = [ANSI.sub("", ln) for ln in proc.stdout.splitlines() if ln.strip()]
    while lines and lines[-1].startswith(LOGGER_EXIT_LINES):  # printed at exit, after ours (see there)
        lines.pop()
    assert lines, log
    assert (proc.stdout + proc.stderr).count(PICTURES) <= 1, f"more than one pictures line\n{log}"
    if not lines[-1].startswith(PICTURES):
        assert lines[-1].startswith("lightning-viz: no lightning-viz callback was on"), log
        return
    dirs, report = picture_dirs(lines[-1], tmp_path)
    for d in dirs:
        assert d.is_relative_to(tmp_path.resolve()), f"pictures outside the working directory: {d}"

    # The resolved config, as the run saved it: in its log directory, the parent of its viz/ directory.
    saved = [d.parent / "config.yaml" for d in dirs if (d.parent / "config.yaml").is_file()]
    assert saved, f"no config.yaml beside {dirs}\n{log}"
    run_dir = saved[0].parent
    config = load(saved[0])
    callbacks = viz_callbacks(config)
    assert callbacks, f"the pictures line names {dirs} but the resolved config has no lightning-viz callback"
    for cls, init_args in callbacks:
        if issubclass(cls, ReportCallback):  # one page, in the viz directory itself, its pictures embedded
            where = (
                (tmp_path / init_args["output_dir"]).resolve()
                if init_args.get("output_dir")
                else run_dir / "viz"
            )
            assert report == where / REPORT_NAME, f"the pictures line names report {report}, not in {where}"
            assert_report(report)
            continue
        where = (
            (tmp_path / init_args["output_dir"]).resolve()
            if init_args.get("output_dir")
            else run_dir / "viz" / cls.viz_name
        )
        assert where in dirs or where.parent in dirs, f"{cls.__name__} wrote to {where}, not in {dirs}"
        assert_pictures(where, cls.__name__)

    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger"):
        # One run, written once (under DDP/FSDP too): one version directory, one events file, no event twice.
        assert [v.name for v in run_dir.parent.iterdir()] == [run_dir.name], "more than one run directory"
        assert_no_duplicate_events(run_dir)
        if any(cls.__name__ == "WeightHistogramCallback" for cls, _ in callbacks):
            histograms = read_events(run_dir).Tags()["histograms"]
            assert any(t.startswith("weights/") for t in histograms), histograms

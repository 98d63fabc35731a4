"""A newcomer's first run, as typed in a shell: real ``lightning-viz`` processes in a project folder of
their own (not this repository), with no ``PYTHONPATH`` and no config.

The project is written here: a Conv1d model on dict batches with functional activations and two validation
dataloaders, the kind of model the examples do not have.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMAND = Path(sys.executable).with_name("lightning-viz")
SHORT = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=2"]
CORE = ("model_summary", "weight_histogram", "activation_map", "curves", "training_health")

PROJECT = """
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Signals(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, generator=g)
        self.y = self.x[:, 0].mean(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"signal": self.x[i], "target": self.y[i]}


class MyData(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(Signals(64, 0), batch_size=16)

    def val_dataloader(self):
        return [DataLoader(Signals(32, 1), batch_size=16), DataLoader(Signals(32, 2), batch_size=16)]


class MyModel(LightningModule):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, width, 5, padding=2)
        self.head = nn.Linear(width, 1)

    def forward(self, signal):
        return self.head(F.relu(self.conv(signal)).mean(-1))

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self(batch["signal"]), batch["target"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", F.mse_loss(self(batch["signal"]), batch["target"]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "mypkg.py").write_text(textwrap.dedent(PROJECT))
    return folder


def lightning_viz(cwd: Path, *args: str, umask: int | None = None, timeout: float = 300):
    """The console script as a user runs it: no PYTHONPATH, the project folder as working directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [str(COMMAND), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if "lightning-viz" in line or "VizWarning" in line]


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("version_*") if p.is_dir())


# ------------------------------------------------------------------------ your own model, no setup


def test_own_project_trains_with_the_core_callbacks_and_files_follow_the_umask(project):
    done = lightning_viz(
        project, "fit", "--model", "mypkg.MyModel", "--data", "mypkg.MyData", *SHORT, umask=0o027
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = ours(done.stdout)
    assert lines[0].startswith(
        "lightning-viz: no lightning-viz callback is configured, so the core ones are on"
    )
    assert "--viz_defaults=false" in lines[0]
    viz = project / "lightning_logs" / "version_0" / "viz"
    assert lines[-1] == f"lightning-viz: pictures are in {viz}; report: {viz / 'report.html'}"
    for name in CORE:
        assert list((viz / name).glob("*.png")), f"{name} drew nothing: {sorted(os.listdir(viz))}"
    assert (viz / "report.html").is_file()
    empty = [d for d in viz.rglob("*") if d.is_dir() and not any(d.iterdir())]
    assert not empty, f"empty folders left in the viz directory: {empty}"
    # quiet: no warning from us; at most the one line at fit end on how drawing kept up
    # (Python warnings print as "<file>:<line>: <message>"; ours are raised from inside lightning_viz/)
    warned = [ln for ln in done.stderr.splitlines() if "VizWarning" in ln or "/lightning_viz/" in ln]
    assert not warned, warned
    said = ours(done.stderr)
    assert len(said) <= 1 and all(line.startswith("lightning-viz: drew ") for line in said), said

    files = [p for p in (project / "lightning_logs").rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".png", ".json", ".html"} <= kinds, kinds
    ours_written = [p for p in files if p.suffix in {".png", ".json", ".npz", ".html", ".txt"}]
    modes = {p.relative_to(project).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in ours_written}
    assert set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items() if v != 0o640}
    assert not [p for p in files if p.name.endswith(".tmp")], "a temporary file was left behind"


def test_unwritable_output_does_not_claim_pictures_are_there(project):
    (project / "afile").write_text("a file where the output folder should be")  # unwritable even for root
    done = lightning_viz(
        project,
        "fit",
        "--model=mypkg.MyModel",
        "--data=mypkg.MyData",
        *SHORT,
        "--trainer.callbacks+=lightning_viz.CurvePlotCallback",
        f"--trainer.callbacks.output_dir={project / 'afile' / 'curves'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = ours(done.stdout)[-1]
    assert not last.startswith("lightning-viz: pictures are in"), last
    assert "no picture was written" in last
    assert (
        "CurvePlotCallback: cannot write to the output directory" in done.stderr
    )  # the warning that says why


# -------------------------------------------------------------------------------- shipped configs


def test_configs_are_listed_copied_and_run_by_name_outside_the_clone(tmp_path):
    listed = lightning_viz(tmp_path, "configs")
    assert listed.returncode == 0, listed.stderr
    names = [
        line.split()[0] for line in listed.stdout.splitlines() if line and not line.startswith("run one")
    ]
    expected = sorted(
        p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.yaml")
    )
    assert names == expected

    copied = lightning_viz(tmp_path, "configs", "copy", "loggers/csv")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "csv.yaml").read_text() == (REPO / "configs" / "loggers" / "csv.yaml").read_text()
    again = lightning_viz(tmp_path, "configs", "copy", "loggers/csv")
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr
    wrong = lightning_viz(tmp_path, "configs", "copy", "quickstrat")
    assert wrong.returncode == 2 and "'quickstart'" in wrong.stderr.split("closest:")[1]

    printed = lightning_viz(
        tmp_path, "fit", "--config", "quickstart", "--config=loggers/csv", "--print_config"
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "example_projects.digits.DigitsClassifier" in printed.stdout
    assert "lightning.pytorch.loggers.CSVLogger" in printed.stdout


def test_the_wheel_ships_the_configs(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("lightning_viz-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    for config in (REPO / "configs").rglob("*.yaml"):
        assert f"lightning_viz/configs/{config.relative_to(REPO / 'configs').as_posix()}" in inside, config
    assert "example_projects/digits/model.py" in inside
    # the installed files find their configs where the wheel put them
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lightning_viz import config_files as c; print(c.config_dir()); print(c.find('quickstart'))",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [
        str(target / "lightning_viz" / "configs"),
        str(target / "lightning_viz" / "configs" / "quickstart.yaml"),
    ]


def test_every_package_is_in_the_wheel_list():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        p.parent.relative_to(REPO).as_posix().replace("/", ".")
        for p in REPO.glob("lightning_viz/**/__init__.py")
    }
    on_disk |= {
        p.parent.relative_to(REPO).as_posix().replace("/", ".")
        for p in REPO.glob("example_projects/**/__init__.py")
    }
    on_disk |= {
        "lightning_viz.configs." + p.name
        for p in (REPO / "configs").iterdir()
        if p.is_dir() and list(p.glob("*.yaml"))
    }
    on_disk.add("lightning_viz.configs")
    assert listed == on_disk


# ---------------------------------------------------------------------------------------- short errors


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            [
                "--trainer.callbacks+=lightning_viz.WeightHistogramCallback",
                "--trainer.callbacks.every_n_steps=-5",
            ],
            "lightning-viz: error: WeightHistogramCallback: `every_n_steps` must be an integer >= 1, "
            "'log_every_n_steps' (the Trainer's) or null (off); got -5",
        ),
        (
            [
                "--trainer.callbacks+=lightning_viz.ActivationMapCallback",
                "--trainer.callbacks.layers=[convv]",
            ],
            "lightning-viz: error: ActivationMapCallback: `layers` pattern 'convv' matched no module; closest: ['conv']",
        ),
    ],
    ids=["bad-value", "pattern-matches-nothing"],
)
def test_a_callback_error_is_one_line_exit_2_and_no_run_directory(project, args, line):
    done = lightning_viz(project, "fit", "--model=mypkg.MyModel", "--data=mypkg.MyData", *SHORT, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in done.stderr
    assert not run_dirs(project), run_dirs(project)


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (
            [
                "--trainer.callbacks+=lightning_viz.WeightHistogramCallback",
                "--trainer.callbacks.every_n_step=3",
            ],
            "did you mean `every_n_steps` (an argument of lightning_viz.WeightHistogramCallback)?",
        ),
        (
            ["--trainer.callbacks+=lightning_viz.WeightHistogram"],
            "did you mean `lightning_viz.WeightHistogramCallback`?",
        ),
    ],
    ids=["argument", "class"],
)
def test_a_mistyped_name_gets_a_did_you_mean(project, args, hint):
    done = lightning_viz(project, "fit", "--model=mypkg.MyModel", "--data=mypkg.MyData", *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(hint), done.stderr[-1500:]


def test_help_lists_the_callbacks_and_the_file_tools(tmp_path):
    fit = lightning_viz(tmp_path, "fit", "--help")
    assert fit.returncode == 0
    text = "".join(fit.stdout.split())
    for name in (
        "ModelSummary",
        "WeightHistogram",
        "ActivationMap",
        "CurvePlot",
        "TrainingHealth",
        "MetricPlot",
        "Report",
    ):
        assert f"lightning_viz.{name}Callback" in text, name
    assert "--viz_defaults" in fit.stdout
    top = lightning_viz(tmp_path, "--help")
    assert top.returncode == 0
    for tool in ("render", "report", "configs"):
        assert any(line.split()[:1] == [tool] for line in top.stdout.splitlines()), tool
    assert "fit" in top.stdout

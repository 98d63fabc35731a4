"""The ``lightning-viz`` command and the example projects it runs.

Most tests call :func:`lightning_viz.cli.build_cli` in-process (the command's own code path, without paying
for a fresh ``import torch`` each time); one runs the real interpreter to see exactly what a user sees.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import yaml

from lightning_viz.cli import build_cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
MNIST = REPO / "configs" / "mnist.yaml"
CALLBACKS = [
    "ModelSummaryCallback",
    "WeightHistogramCallback",
    "ActivationMapCallback",
    "CurvePlotCallback",
    "MetricPlotCallback",
    "ReportCallback",
]
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: connection refused at once, no network needed


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    """The command sees only the arguments a test passes (not pytest's own)."""
    monkeypatch.setattr(sys, "argv", ["lightning-viz"])


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    """Run the command in-process; return (exit code, stdout, stderr)."""
    try:
        build_cli(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def fast_overrides(tmp_path: Path) -> list[str]:
    """Overrides that make a config run a few steps and write under tmp_path."""
    return [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]


def squash(text: str) -> str:
    """Text without whitespace, so that help wrapped at any width can be searched."""
    return re.sub(r"\s+", "", text)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    """A complete digits config whose only callback is one of Lightning's own (independent of ours)."""
    return write_yaml(
        tmp_path / "base.yaml",
        f"""
        model:
          class_path: example_projects.digits.DigitsClassifier
        data:
          class_path: example_projects.digits.DigitsDataModule
        trainer:
          accelerator: cpu
          devices: 1
          logger:
            class_path: lightning.pytorch.loggers.TensorBoardLogger
            init_args:
              save_dir: {tmp_path}
          callbacks:
            - class_path: lightning.pytorch.callbacks.LearningRateMonitor
        """,
    )


# ---------------------------------------------------------------------------------------------- the command


def test_console_script_runs_main():
    from lightning_viz import command

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "lightning-viz"]
    assert script.load() is command.main  # which starts the render process, then runs cli.main


def test_fit_help_lists_the_callbacks_and_how_to_see_their_arguments(capsys):
    # the user's models are listed once imported (as `--model mypkg.MyModel` imports them); the command
    # itself imports no example project
    importlib.import_module("example_projects.digits.model")
    importlib.import_module("example_projects.digits.data")
    code, out, _ = run_cli(capsys, ["fit", "--help"])
    assert code == 0
    assert "--trainer.callbacks.help" in out
    assert "--model.help" in out and "--data.help" in out
    flat = squash(out)
    for name in CALLBACKS:
        assert name in flat, f"`fit --help` does not list {name} among the known callbacks"
    assert "DigitsClassifier" in flat and "DigitsDataModule" in flat


@pytest.mark.parametrize("name", CALLBACKS)
def test_callback_help_documents_every_argument(capsys, name):
    import docstring_parser

    import lightning_viz

    cls = getattr(lightning_viz, name)
    code, out, err = run_cli(capsys, ["fit", "--trainer.callbacks.help", f"lightning_viz.{name}"])
    assert code == 0, err
    docs = {p.arg_name: p.description for p in docstring_parser.parse(cls.__doc__ or "").params}
    flat = squash(out)
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self":
            continue
        assert f"--trainer.callbacks.{param.name}" in out, f"{name}.{param.name} missing from the help"
        assert docs.get(param.name), f"{name} docstring has no `Args:` entry for {param.name!r}"
        first_words = squash(" ".join(docs[param.name].split()[:5]))
        assert first_words in flat, f"{name}.{param.name}: its docstring is not shown in the help"


def test_print_config_shows_every_argument_with_its_default(capsys):
    code, out, err = run_cli(capsys, ["fit", "--config", str(QUICKSTART), "--print_config"])
    assert code == 0, err
    config = yaml.safe_load(out)
    import lightning_viz
    from example_projects.digits import DigitsClassifier, DigitsDataModule

    callbacks = config["trainer"]["callbacks"]
    assert [cb["class_path"].rsplit(".", 1)[-1] for cb in callbacks] == CALLBACKS
    for cb in callbacks:
        cls = getattr(lightning_viz, cb["class_path"].rsplit(".", 1)[-1])
        expected = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cb.get("init_args", {})) == expected, cb["class_path"]
    assert callbacks[1]["init_args"]["every_n_steps"] == 10
    assert callbacks[2]["init_args"]["every_n_epochs"] == 1
    assert set(config["model"]["init_args"]) == set(inspect.signature(DigitsClassifier).parameters)
    assert set(config["data"]["init_args"]) == set(inspect.signature(DigitsDataModule).parameters)
    assert config["seed_everything"] == 0
    assert config["trainer"]["max_epochs"] == 5


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--trainer.max_epohcs=3"], "trainer.max_epohcs"),
        (["--model.init_args.chanels=3"], "chanels"),
        (["--model.init_args.activation=gelu"], "gelu"),
        (["--trainer.max_epoch=3"], "trainer.max_epoch"),  # a prefix of max_epochs: no silent abbreviation
        (
            ["--trainer.callbacks+=lightning_viz.WeightHistogramCallback", "--trainer.callbacks.binz=3"],
            "binz",
        ),
    ],
    ids=["trainer-key", "model-key", "bad-choice", "abbreviation", "callback-key"],
)
def test_mistyped_argument_fails_naming_it(capsys, base_config, args, named):
    code, _, err = run_cli(capsys, ["fit", "--config", str(base_config), *args])
    assert code != 0
    assert named in err


def test_unknown_callback_key_in_yaml_fails_naming_it(capsys, base_config, tmp_path):
    bad = write_yaml(
        tmp_path / "bad.yaml",
        """
        trainer:
          callbacks:
            - class_path: lightning_viz.WeightHistogramCallback
              init_args:
                every_n_steps: 5
                binz: 3
        """,
    )
    code, _, err = run_cli(capsys, ["fit", "--config", str(base_config), "--config", str(bad)])
    assert code != 0
    assert "binz" in err and "WeightHistogramCallback" in err


def test_mistyped_threshold_in_yaml_gets_a_did_you_mean(capsys, base_config, tmp_path):
    bad = write_yaml(
        tmp_path / "bad.yaml",
        """
        trainer:
          callbacks:
            - class_path: lightning_viz.TrainingHealthCallback
              init_args:
                thresholds: {exploding_nrom: 100}
        """,
    )
    code, _, err = run_cli(capsys, ["fit", "--config", str(base_config), "--config", str(bad)])
    assert code != 0
    assert "did you mean `exploding_norm` (an argument of lightning_viz.core.health_checks.Thresholds)" in err


def test_partial_thresholds_in_yaml_keep_the_other_defaults(capsys, base_config, tmp_path):
    part = write_yaml(
        tmp_path / "part.yaml",
        """
        trainer:
          callbacks:
            - class_path: lightning_viz.TrainingHealthCallback
              init_args:
                thresholds: {exploding_norm: 100}
        """,
    )
    config = print_config(capsys, "--config", str(base_config), "--config", str(part))
    (health,) = [
        cb for cb in config["trainer"]["callbacks"] if cb["class_path"].endswith("TrainingHealthCallback")
    ]
    thresholds = health["init_args"]["thresholds"]
    assert thresholds["exploding_norm"] == 100 and thresholds["dead_threshold"] == 0.9
    assert len(thresholds) == 12


def test_callback_argument_rejected_by_callback_names_it(capsys, base_config):
    # Typed right but invalid (bins < 2): the callback's own validation, before training starts.
    with pytest.raises(ValueError, match="bins"):
        build_cli(
            [
                "fit",
                "--config",
                str(base_config),
                "--trainer.callbacks+=lightning_viz.WeightHistogramCallback",
                "--trainer.callbacks.bins=1",
            ]
        )


# ------------------------------------------------------------------------------ several --config files


def print_config(capsys, *args: str) -> dict:
    code, out, err = run_cli(capsys, ["fit", *args, "--print_config"])
    assert code == 0, err
    return yaml.safe_load(out)


def callback_names(config: dict) -> list[str]:
    return [cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"] or []]


def test_later_config_sets_trainer_keys_and_keeps_callbacks(capsys, tmp_path):
    ddp = write_yaml(tmp_path / "ddp.yaml", "trainer:\n  accelerator: cpu\n  devices: 2\n  strategy: ddp\n")
    config = print_config(capsys, "--config", str(QUICKSTART), "--config", str(ddp))
    assert (config["trainer"]["devices"], config["trainer"]["strategy"]) == (2, "ddp")
    assert callback_names(config) == CALLBACKS


def test_later_config_callbacks_list_replaces_plus_key_appends(capsys, base_config, tmp_path):
    item = "- class_path: lightning.pytorch.callbacks.EarlyStopping\n      init_args: {monitor: val_loss}\n"
    replace = write_yaml(tmp_path / "replace.yaml", f"trainer:\n  callbacks:\n    {item}")
    append = write_yaml(tmp_path / "append.yaml", f"trainer:\n  callbacks+:\n    {item}")

    replaced = print_config(capsys, "--config", str(base_config), "--config", str(replace))
    assert callback_names(replaced) == ["EarlyStopping"]

    appended = print_config(capsys, "--config", str(base_config), "--config", str(append))
    assert callback_names(appended) == ["LearningRateMonitor", "EarlyStopping"]

    on_command_line = print_config(
        capsys, "--config", str(base_config), "--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary"
    )
    assert callback_names(on_command_line) == ["LearningRateMonitor", "ModelSummary"]


# ------------------------------------------------------------------------------------------ running


@pytest.mark.slow
def test_fit_prints_one_line_saying_where_the_pictures_are(capsys, tmp_path):
    cli = build_cli(["fit", "--config", str(QUICKSTART), *fast_overrides(tmp_path)])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("lightning-viz:")]
    viz = Path(cli.trainer.log_dir) / "viz"
    assert lines == [f"lightning-viz: pictures are in {viz}; report: {viz / 'report.html'}"]
    assert (viz / "report.html").is_file()
    assert viz.is_dir() and any(viz.iterdir())
    assert viz.is_relative_to(tmp_path)


def test_fit_without_viz_callbacks_turns_on_the_core_ones(capsys, base_config, tmp_path):
    from lightning_viz.cli import DEFAULT_CALLBACKS

    cli = build_cli(["fit", "--config", str(base_config), *fast_overrides(tmp_path), "--trainer.max_steps=1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lightning-viz:")]
    assert "the core ones are on" in lines[0] and lines[-1].startswith("lightning-viz: pictures are in")
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert [n for n in names if n in DEFAULT_CALLBACKS] == list(DEFAULT_CALLBACKS)
    assert "LearningRateMonitor" in names  # the configured ones stay


def test_viz_defaults_false_keeps_only_the_configured_callbacks(capsys, base_config, tmp_path):
    cli = build_cli(
        [
            "fit",
            "--config",
            str(base_config),
            *fast_overrides(tmp_path),
            "--trainer.max_steps=1",
            "--viz_defaults=false",
        ]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lightning-viz:")]
    assert lines == ["lightning-viz: no lightning-viz callback was on (--viz_defaults=false)"]
    from lightning_viz.core.base import VizCallback

    assert not any(isinstance(cb, VizCallback) for cb in cli.trainer.callbacks)


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_run_with_the_callbacks_on(capsys, tmp_path, subcommand):
    limit = {
        "validate": "limit_val_batches",
        "test": "limit_test_batches",
        "predict": "limit_predict_batches",
    }
    cli = build_cli(
        [
            subcommand,
            "--config",
            str(QUICKSTART),
            f"--trainer.{limit[subcommand]}=2",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.state.finished
    if subcommand == "predict":
        predictions = cli.trainer.predict_loop.predictions
        assert predictions and all(p.dtype == torch.int64 for p in predictions)


# -------------------------------------------------------------------------------- the example projects


def test_digits_example_learns_within_three_epochs(tmp_path):
    from lightning.pytorch import Trainer, seed_everything

    from example_projects.digits import DigitsClassifier, DigitsDataModule

    seed_everything(0)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsClassifier(), DigitsDataModule())
    metrics = trainer.callback_metrics
    assert {"train_loss_step", "train_loss_epoch", "train_acc", "val_loss", "val_acc"} <= set(metrics)
    assert metrics["val_acc"] > 0.8, f"val_acc {metrics['val_acc']:.3f} after 3 epochs"


def test_digits_data_are_real_normalised_images_split_deterministically():
    from example_projects.digits import DigitsDataModule

    a, b, other = DigitsDataModule(seed=0), DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    for dm in (a, b, other):
        dm.setup("fit")
    assert len(a.train_set) + len(a.val_set) == 1797
    assert len(a.val_set) == round(1797 * 0.2)
    x, y = a.val_set.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0 and set(y.tolist()) == set(range(10))
    assert torch.equal(x, b.val_set.tensors[0])
    assert not torch.equal(x, other.val_set.tensors[0])
    batch_x, batch_y = next(iter(a.train_dataloader()))
    assert batch_x.shape == (64, 1, 8, 8) and batch_y.shape == (64,)


def test_digits_classifier_any_input_size_and_named_blocks():
    from example_projects.digits import DigitsClassifier

    model = DigitsClassifier(depth=3, input_size=28)
    assert model.example_input_array.shape == (2, 1, 28, 28)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    names = {n for n, _ in model.named_modules()}
    assert {"features.conv1", "features.act1", "features.conv3", "features.act3", "classifier.fc1"} <= names


def _activation_outputs(model, x):
    outputs = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, o, n=n: outputs.__setitem__(n, o.detach()))
        for n, m in model.named_modules()
        if n.startswith("features.act")
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def test_digits_classifier_knobs_plant_the_pathologies():
    from example_projects.digits import DigitsClassifier, DigitsDataModule

    torch.manual_seed(0)
    dm = DigitsDataModule()
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))

    dead = _activation_outputs(DigitsClassifier(init_bias=-5.0), x)
    assert all((o == 0).all() for o in dead.values()), "a very negative bias should kill every ReLU"

    saturated = _activation_outputs(DigitsClassifier(activation="tanh", init_weight_scale=20.0), x)
    assert (saturated["features.act2"].abs() > 0.99).float().mean() > 0.5

    deep = DigitsClassifier(activation="sigmoid", depth=8)
    torch.nn.functional.cross_entropy(deep(x), y).backward()
    first, last = deep.features.conv1.weight.grad.norm(), deep.features.conv8.weight.grad.norm()
    assert first < last * 1e-3, "gradients should vanish towards the input of a deep sigmoid stack"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"depth": 0}, "depth"), ({"activation": "gelu"}, "activation"), ({"optimizer": "lbfgs"}, "optimizer")],
)
def test_digits_classifier_rejects_bad_arguments_naming_them(kwargs, named):
    from example_projects.digits import DigitsClassifier

    with pytest.raises(ValueError, match=f"`{named}`"):
        DigitsClassifier(**kwargs)


def _mnist_message_ok(message: str, data_dir: Path, what: str) -> None:
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert message.startswith(f"MNIST {what}")
    assert str((data_dir / "MNIST" / "raw").resolve()) in message
    assert "configs/quickstart.yaml" in message


def test_mnist_offline_fails_with_one_clear_line(monkeypatch, tmp_path):
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", [UNREACHABLE])
    data_dir = tmp_path / "mnist"
    args = [
        "fit",
        "--config",
        str(MNIST),
        f"--data.init_args.data_dir={data_dir}",
        "--trainer.accelerator=cpu",
    ]
    with pytest.raises(SystemExit) as exit_:
        build_cli(args + fast_overrides(tmp_path))
    _mnist_message_ok(str(exit_.value.code), data_dir, "download failed")


def test_mnist_missing_without_download_says_so(tmp_path):
    from example_projects.mnist import MNISTDataModule

    with pytest.raises(SystemExit) as exit_:
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    _mnist_message_ok(str(exit_.value.code), tmp_path, "data not found")


@pytest.mark.slow
def test_mnist_offline_shows_the_user_no_traceback(tmp_path):
    data_dir = tmp_path / "mnist"
    script = (
        "import torchvision.datasets as d\n"
        f"d.MNIST.mirrors = [{UNREACHABLE!r}]\n"
        "from lightning_viz.cli import main\n"
        f"main(['fit', '--config', {str(MNIST)!r}, '--data.init_args.data_dir={data_dir}',"
        f" '--trainer.accelerator=cpu', '--trainer.default_root_dir={tmp_path}',"
        f" '--trainer.logger.init_args.save_dir={tmp_path}'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    _mnist_message_ok(last, data_dir, "download failed")

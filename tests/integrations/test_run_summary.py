"""The run summary that opens report.html: classes, epochs, steps, wall time, final and best metrics, config.

A real ``lightning-viz fit`` of the quickstart config (LightningCLI saves its config.yaml), checked against
the trainer's state and the curve data the run saved; a run that fails, and one killed between epochs
(its last record), show what was known; the headings read as words and torchmetrics objects are not layers.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch import Callback
from torchmetrics import Metric

from lightning_viz import ReportCallback, WeightHistogramCallback
from lightning_viz.cli import build_cli
from lightning_viz.core import writer
from lightning_viz.report import build_report
from tests.helpers import RandomImages, TinyCNN, make_trainer

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """The quickstart config for 2 short epochs; returns (cli, viz dir, fit wall time in seconds)."""
    tmp = tmp_path_factory.mktemp("summary")
    args = [
        "fit",
        "--config",
        str(QUICKSTART),
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp}",
        f"--trainer.logger.init_args.save_dir={tmp}",
        "--trainer.enable_progress_bar=false",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["lightning-viz"])
        t0 = time.monotonic()
        cli = build_cli(args)
        wall = time.monotonic() - t0
    return cli, Path(cli.trainer.log_dir) / "viz", wall


def page_of(viz: Path) -> str:
    return (viz / "report.html").read_text()


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


def metric_cells(page: str) -> dict[str, list[float]]:
    """metric -> the data-value numbers of its row in the summary's metrics table (final, then best)."""
    rows = re.findall(r'<tr data-metric="([^"]+)">(.*?)</tr>', section(page, "run"))
    return {html.unescape(n): [float(v) for v in re.findall(r'data-value="([^"]+)"', r)] for n, r in rows}


def test_summary_names_the_classes_epochs_steps_and_wall_time(cli_run):
    cli, viz, wall = cli_run
    run = section(page_of(viz), "run")
    assert page_of(viz).index('id="run"') < page_of(viz).index(
        'id="model_summary"'
    )  # the report opens with it
    model, data = type(cli.model), type(cli.datamodule)
    assert f"<code>{model.__module__}.{model.__qualname__}</code>" in run
    assert f"<code>{data.__module__}.{data.__qualname__}</code> (datamodule)" in run
    assert "example_projects.digits" in run and "DigitsClassifier" in run and "DigitsDataModule" in run
    assert f'data-epochs="{cli.trainer.current_epoch}"' in run and cli.trainer.current_epoch == 2
    assert f'data-steps="{cli.trainer.global_step}"' in run and cli.trainer.global_step == 6
    seconds = float(re.search(r'data-seconds="([^"]+)"', run)[1])
    assert 0 < seconds <= wall  # the fit's wall time, within the command's
    assert '<span class="ok">finished</span>' in run
    record = json.loads((viz / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 2 and record["global_step"] == 6


def test_final_and_best_metrics_are_those_of_the_saved_curves(cli_run):
    cli, viz, _ = cli_run
    cells = metric_cells(page_of(viz))
    curves = json.loads((viz / "curves" / "curves.json").read_text())["series"]
    assert set(cells) == set(curves)
    for name, s in curves.items():
        values = s["value"]
        expected = [values[-1]]  # final: the last point
        if s["mode"] is not None:  # best in the direction the curves use
            expected.append(min(values) if s["mode"] == "min" else max(values))
        assert cells[name] == pytest.approx(expected, rel=1e-12), name
    assert curves["val_acc"]["mode"] == "max" and curves["val_loss"]["mode"] == "min"
    assert len(cells["lr-Adam"]) == 1  # a learning rate has no best
    # the final values are what the trainer holds at the end
    for name in ("val_loss", "val_acc", "train_acc"):
        assert cells[name][0] == pytest.approx(float(cli.trainer.callback_metrics[name]), rel=1e-6), name


def test_resolved_config_is_in_a_collapsible_block(cli_run, tmp_path):
    _, viz, _ = cli_run
    config = viz.parent / "config.yaml"
    run = section(page_of(viz), "run")
    block = re.search(
        r'<details class="config"><summary>(.*?)</summary><pre>(.*?)</pre></details>', run, re.S
    )
    assert block and "config.yaml" in block[1]
    assert html.unescape(block[2]) == config.read_text()
    assert json.loads((viz / "run.json").read_text())["config_file"] == str(config)
    # found by its name beside viz when the recorded path is gone (the run directory was moved)
    copy = shutil.copytree(viz.parent, tmp_path / "moved")
    record = json.loads((copy / "viz" / "run.json").read_text())
    (copy / "viz" / "run.json").write_text(json.dumps({**record, "config_file": "elsewhere/config.yaml"}))
    assert html.escape(config.read_text()) in build_report(copy / "viz").read_text()
    # without the config: one line says so
    (copy / "config.yaml").unlink()
    page = build_report(copy / "viz").read_text()
    assert "<details" not in page and "No resolved config was saved with this run" in page


def test_headings_are_words_and_weights_come_before_gradients(cli_run):
    _, viz, _ = cli_run
    page = page_of(viz)
    headings = [re.sub(r"<[^>]+>.*", "", h).strip() for h in re.findall(r"<h3[^>]*>(.*?)</h3>", page)]
    assert "Weight distributions over training" in headings
    assert page.index("Weight distributions over training") < page.index(
        "Gradient distributions over training"
    )
    assert "Multiclass confusion matrix (val_confmat)" in headings
    stems = {p.stem for p in viz.rglob("*.png")} | {
        re.sub(r"_(step|epoch)\d+$", "", p.stem) for p in viz.rglob("*.png")
    }
    for h in headings:
        words = re.sub(r"\(.*?\)", "", h)  # a name in brackets may follow the words
        assert h not in stems and "_" not in words and words.strip(), (
            f"heading {h!r} is a file stem, not words"
        )


def test_torchmetrics_objects_are_not_listed_as_layers(cli_run):
    cli, viz, _ = cli_run
    metrics = {n for n, m in cli.model.named_modules() if isinstance(m, Metric)}
    assert {"train_acc", "val_acc", "val_confmat"} <= metrics
    table = section(page_of(viz), "model_summary")
    listed = {html.unescape(n).replace("\xa0", "") for n in re.findall(r"<tr><td>(.*?)</td>", table)}
    assert listed and not listed & metrics, listed & metrics
    assert "classifier.fc1" in listed  # the layers are still there
    note = re.search(r"torchmetrics objects the model holds \(not layers\): (.*?)</p>", table)[1]
    assert all(name in note for name in metrics)
    summary = json.loads((viz / "model_summary" / "summary.json").read_text())
    assert {r["name"] for r in summary["rows"] if r["metric"]} == metrics  # the summary data says which


class FailsAtStep(TinyCNN):
    def training_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("planted failure at step 5")
        return super().training_step(batch, batch_idx)


class KeepRecordAtEpochStart(Callback):
    """Copies run.json when epoch 1 starts: what a run killed there would leave."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            writer.flush()
            shutil.copy(trainer.log_dir + "/viz/run.json", self.dest)


def test_a_failed_run_shows_what_was_known(tmp_path):
    kept = tmp_path / "kept.json"
    callbacks = [WeightHistogramCallback(every_n_steps=1), ReportCallback(), KeepRecordAtEpochStart(kept)]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3, limit_train_batches=3, limit_val_batches=1)
    with pytest.raises(RuntimeError, match="planted failure"):
        trainer.fit(FailsAtStep(), datamodule=RandomImages(n=48))
    viz = callbacks[1].viz_dir
    record = json.loads((viz / "run.json").read_text())
    assert record["status"] == "failed" and "planted failure at step 5" in record["error"]
    assert (
        record["global_step"] == trainer.global_step == 5 and record["epochs"] == trainer.current_epoch == 1
    )
    assert record["model"] == f"{FailsAtStep.__module__}.FailsAtStep" and record["data_kind"] == "datamodule"
    run = section(page_of(viz), "run")  # the report was built when the run failed
    assert '<span class="finding">failed</span>' in run and "planted failure at step 5" in run
    assert 'data-steps="5"' in run and "Weight distributions over training" in page_of(viz)
    assert "No resolved config was saved with this run" in run  # no LightningCLI here
    # killed at the start of epoch 1: its last record was written when epoch 0 ended
    last = json.loads(kept.read_text())
    assert last["status"] == "running" and last["epochs"] == 1 and last["global_step"] == 3
    assert set(last["metrics"]) >= {"train_loss_epoch", "val_loss", "val_acc"}
    shutil.copy(kept, viz / "run.json")
    run = section(build_report(viz).read_text(), "run")
    assert "did not reach the end of fit" in run and 'data-epochs="1"' in run and 'data-steps="3"' in run
    # no CurvePlotCallback: the final values logged at the last record, no best
    assert metric_cells(build_report(viz).read_text())["val_loss"] == [
        pytest.approx(last["metrics"]["val_loss"])
    ]


def test_without_a_run_record_the_other_files_still_tell(cli_run, tmp_path):
    cli, viz, _ = cli_run
    copy = shutil.copytree(viz.parent, tmp_path / "run")
    (copy / "viz" / "run.json").unlink()
    run = section(build_report(copy / "viz").read_text(), "run")
    assert "no run.json in this directory" in run
    assert "<code>example_projects.digits.DigitsClassifier</code>" in run  # from the saved config
    assert f"step {cli.trainer.global_step - 1}" in run  # the curves' last point

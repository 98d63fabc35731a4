"""Every logger config runs the quickstart, and what each real logger stored is read back.

W&B runs offline (its transaction log and media files are parsed), MLflow uses a local file store read
through ``MlflowClient``, the CSVLogger's files are read with ``csv``, TensorBoard's event files with its own
``EventAccumulator``. No mocks.
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_viz.cli import build_cli
from lightning_viz.core import sinks
from tests.helpers import read_events
from tests.integrations._readers import wandb_history

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LOGGERS = REPO / "configs" / "loggers"


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-viz"])


def run_quickstart(tmp_path: Path, logger: str, *extra: str):
    """The quickstart with ``configs/loggers/<logger>.yaml``, 2 training steps, writing under tmp_path."""
    args = [
        "fit",
        "--config",
        str(QUICKSTART),
        "--config",
        str(LOGGERS / f"{logger}.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    cli = build_cli(args)
    assert cli.trainer.state.finished
    return cli


def viz_pngs(root: Path) -> list[Path]:
    pngs = sorted(root.rglob("viz/*/*.png"))
    assert {p.parent.name for p in pngs} >= {"model_summary", "weight_histogram", "activation_map", "curves"}
    return pngs


def test_tensorboard(tmp_path):
    cli = run_quickstart(tmp_path, "tensorboard", f"--trainer.logger.init_args.save_dir={tmp_path}")
    log_dir = Path(cli.trainer.log_dir)
    viz_pngs(log_dir)
    acc = read_events(log_dir)
    tags = acc.Tags()
    assert any(t.startswith("viz/activation_map") for t in tags["images"]), tags["images"]
    # TensorBoard holds the very PNG written to disk (encoded once, in the render process), with its size
    (event,) = acc.Images("viz/model_summary/parameters")
    png = (log_dir / "viz" / "model_summary" / "summary.png").read_bytes()
    assert event.encoded_image_string == png
    with Image.open(io.BytesIO(png)) as img:
        assert (event.width, event.height) == img.size
    assert any(t.startswith("weights/") for t in tags["histograms"]), tags["histograms"]
    assert "model/total_params" in tags["scalars"]
    assert any("model_summary" in t for t in tags["tensors"]), tags["tensors"]  # the text summary


def test_csv(tmp_path):
    cli = run_quickstart(tmp_path, "csv", f"--trainer.logger.init_args.save_dir={tmp_path}")
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    viz_pngs(log_dir)
    with (log_dir / "metrics.csv").open() as fh:
        header = next(csv.reader(fh))
    assert "model/total_params" in header and any(h.startswith("weight_norm/") for h in header), header
    with (log_dir / "viz" / "weight_histogram" / "statistics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    weights = [r for r in rows if r["tag"].startswith("weights/")]
    assert weights and all(int(r["count"]) > 0 for r in weights)
    # the statistics agree with the model's parameters at step 0 (captured before the first update)
    bias = next(r for r in weights if r["tag"] == "weights/classifier.fc2.bias" and r["step"] == "0")
    assert int(bias["count"]) == 10
    assert float(bias["min"]) <= float(bias["mean"]) <= float(bias["max"])


def test_no_logger_writes_files_only(tmp_path):
    cli = run_quickstart(tmp_path, "none", f"--trainer.default_root_dir={tmp_path}")
    assert cli.trainer.loggers == []
    pngs = viz_pngs(tmp_path)
    assert all(p.is_relative_to(tmp_path / "viz") for p in pngs)


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is an optional extra: pip install 'lightning-viz[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cli = run_quickstart(
        tmp_path,
        "wandb",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning_viz.ActivationHistogramCallback",
        "--trainer.callbacks.every_n_steps=1",
    )
    cli.trainer.logger.experiment.finish()  # close the run so its transaction log is complete
    viz_pngs(tmp_path)

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = wandb_history(run_dir)
    images = {k[: -len("/_type")]: r for r in rows for k, v in r.items() if v == "image-file"}
    hists = {k[: -len("/_type")]: r for r in rows for k, v in r.items() if v == "histogram"}
    assert any(k.startswith("viz/activation_map") for k in images), sorted(images)
    assert any(k.startswith("weights/") for k in hists) and any(k.startswith("gradients/") for k in hists)
    # every picture row carries Lightning's step axis, and its media file is a real PNG of the stated size
    key, row = next((k, r) for k, r in images.items() if k.startswith("viz/model_summary"))
    assert row["trainer/global_step"] == 0
    image = Image.open(run_dir / "files" / row[f"{key}/path"])
    assert image.size == (row[f"{key}/width"], row[f"{key}/height"]) and min(image.size) > 100
    # a native histogram: bins are our power-of-two edges, values the exact counts
    key, row = next((k, r) for k, r in hists.items() if k == "weights/classifier.fc2.bias")
    counts, bins = np.array(row[f"{key}/values"]), np.array(row[f"{key}/bins"])
    assert counts.sum() == 10 and len(bins) == len(counts) + 1
    # the activation histograms reach W&B as native histograms too, with the counts of our own record
    (npz,) = sorted(tmp_path.rglob("activations_evolution_step*.npz"))[-1:]
    with np.load(npz) as z:
        ours = dict(zip(z["features.conv1/steps"].tolist(), z["features.conv1/counts"]))
    key = "activations/features.conv1"
    logged = [r for r in rows if r.get(f"{key}/_type") == "histogram"]
    assert sorted(r["trainer/global_step"] for r in logged) == sorted(ours) == [0, 1]
    for r in logged:
        np.testing.assert_array_equal(np.array(r[f"{key}/values"]), ours[r["trainer/global_step"]])
    assert any("model/total_params" in r for r in rows)
    assert any(v == "html-file" for r in rows for v in r.values())  # the model summary table


def test_mlflow_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'lightning-viz[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    uri = (tmp_path / "mlruns").as_uri()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MLflow 3 prefers a database over a file store
        cli = run_quickstart(tmp_path, "mlflow", f"--trainer.logger.init_args.tracking_uri={uri}")
        viz_pngs(tmp_path)
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(cli.trainer.logger.run_id)
        assert run.data.metrics["model/total_params"] > 0
        assert any(k.startswith("weight_norm/") for k in run.data.metrics)
        top = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "viz" in top and "images" in top, top
        texts = [a.path for a in client.list_artifacts(run.info.run_id, "viz")]
        assert "viz/summary.txt" in texts
        local = Path(client.download_artifacts(run.info.run_id, "images", str(tmp_path / "dl")))
    pngs = sorted(p.name for p in local.glob("*.png"))
    assert any(n.startswith("viz~activation_map") for n in pngs), pngs
    assert any(n.startswith("viz~model_summary") and "step+0+" in n for n in pngs), pngs
    assert min(Image.open(local / pngs[0]).size) > 100


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    """A W&B logger without wandb installed: one warning naming the extra; files and scalars still flow."""
    from lightning.pytorch.loggers import WandbLogger

    class Detached(WandbLogger):  # a real subclass; never started (no run is created)
        def __init__(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.warns(UserWarning, match=r"pip install 'lightning-viz\[wandb\]'"):
        made = sinks.make_sinks([Detached()], tmp_path)
    assert [type(s) for s in made] == [sinks.FileSink, sinks.LoggerSink]


def test_logger_kinds_are_detected_once_by_class():
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    assert sinks.logger_kind(TensorBoardLogger("x")) == "tensorboard"
    assert sinks.logger_kind(CSVLogger("x")) == "csv"
    assert sinks.logger_kind(object()) == "other"

"""``lightning-viz render`` redraws every figure a real run with every callback wrote, from its data alone.

One fit with all the public callbacks (every figure kind: the model summary, weight and gradient
evolution, feature maps and heatmaps, activation statistics, curves, the health figure, a confusion matrix
and a ROC curve); then the data files alone (no PNG) are copied and redrawn: the set of pictures drawn must
equal the set the run wrote, and each redraw must be the picture the run drew.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchmetrics.classification import MulticlassAccuracy, MulticlassROC

import lightning_viz.callbacks as public
from lightning_viz import (
    ActivationHistogramCallback,
    ActivationMapCallback,
    CurvePlotCallback,
    EmbeddingCallback,
    MetricPlotCallback,
    ModelGraphCallback,
    ModelSummaryCallback,
    PredictionGridCallback,
    RankViewCallback,
    ReportCallback,
    SaliencyCallback,
    TrainingHealthCallback,
    WeightHistogramCallback,
    WeightPictureCallback,
)
from lightning_viz.core import writer
from lightning_viz.core.figures import FRAME
from lightning_viz.rerender import main, redraw
from tests.helpers import RandomImages, make_trainer
from tests.integrations.test_metric_plot import WithMetrics

KINDS = {
    "model_summary": {"summary"},
    "weight_histogram": {"weights_evolution", "gradients_evolution"},
    "activation_map": {"maps", "heatmaps", "stats"},
    "curves": {"curves"},
    "training_health": {"health"},
    "metric_plot": {"val_confmat", "val_roc"},
    "rank_view": {"ranks_loss", "ranks_time", "ranks_activations"},
    "activation_histogram": {"activations_evolution", "activation_grad_norms"},
    "weight_picture": {"weights"},
    "prediction_grid": {"predictions"},
    "embedding": {"embedding"},
    "model_graph": {"model_graph"},
    "saliency": {"saliency"},  # needs torchview and Graphviz's dot: both in the dev set-up
}


class EveryKind(WithMetrics):
    """TinyCNN with torchmetrics objects: a confusion matrix and a ROC (from the MetricPlot tests), and an
    accuracy logged as a Metric."""

    def __init__(self) -> None:
        super().__init__()
        self.train_acc = MulticlassAccuracy(num_classes=4)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        x, y = batch
        self.train_acc(self(x), y)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss


def every_callback() -> list:
    return [
        ModelSummaryCallback(),
        ModelGraphCallback(),
        WeightHistogramCallback(every_n_steps=2),
        ActivationMapCallback(every_n_epochs=1, layers=["conv1", "conv2", "fc"], sample_size=4),
        CurvePlotCallback(),
        MetricPlotCallback(metrics=["val_confmat", "val_roc"]),
        TrainingHealthCallback(every_n_steps=2),
        RankViewCallback(every_n_steps=2),
        ActivationHistogramCallback(every_n_steps=2, gradients=True),
        WeightPictureCallback(),
        PredictionGridCallback(sample_size=4, worst_k=3),
        EmbeddingCallback(sample_size=16),
        SaliencyCallback(sample_size=4),
        ReportCallback(),
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-epoch fit with every callback; returns its viz directory."""
    tmp = tmp_path_factory.mktemp("every_callback")
    callbacks = every_callback()
    assert {type(cb).__name__ for cb in callbacks} == set(public.__all__), "a public callback is left out"
    # Drawing must not fall behind so far that a newer cumulative figure replaces a waiting one (its PNG
    # would then never be written, by design, and the run's set of pictures would depend on the machine).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "SUPERSEDE_ABOVE", 10**9)
        trainer = make_trainer(tmp, callbacks, max_epochs=2, limit_train_batches=3, limit_val_batches=2)
        trainer.fit(EveryKind(), datamodule=RandomImages(n=48))
        writer.flush()
    return callbacks[-1].viz_dir


def pngs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def kinds(names: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name in names:
        folder, stem = name.split("/", 1)
        m = FRAME.match(Path(stem).stem)
        out.setdefault(folder, set()).add(m["series"] if m else Path(stem).stem)
    return out


def data_only(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=lambda _, names: [n for n in names if n.endswith((".png", ".html"))])
    assert not pngs(dest)
    return dest


def test_the_run_wrote_every_figure_kind(run):
    assert kinds(pngs(run)) == KINDS


def test_every_picture_is_declared_by_its_callback_and_every_declaration_drawn(run):
    """The declarations (``figures``) that the report and ``render`` read are the figures the callbacks draw:
    each picture's series is declared in its callback's section, and each declared series was drawn."""
    from lightning_viz.core import figures

    sections = {s.folder: s for s in figures.sections()}
    assert set(sections) == set(KINDS)
    for folder, series in kinds(pngs(run)).items():
        for name in series:
            assert any(spec.shows(name) for spec in sections[folder].figures), f"{folder}/{name} undeclared"
    for folder, section in sections.items():
        declared = {spec.series for spec in section.figures} - {"*"}
        assert declared <= KINDS[folder], f"{folder}: declared but never drawn: {declared - KINDS[folder]}"
        for spec in section.figures:
            assert callable(spec.render_function()), spec.render
    # every data file beside a picture is found as that figure's data
    for png in run.rglob("*.png"):
        data = [png.with_suffix(ext) for ext in (".json", ".npz") if png.with_suffix(ext).is_file()]
        if data:
            spec = figures.spec_for_data(data[0].name, png.parent.name)
            assert spec is not None and spec.shows(
                kinds({png.relative_to(run).as_posix()})[png.parent.name].pop()
            )


def test_render_redraws_exactly_the_pictures_the_run_wrote(run, tmp_path):
    copy = data_only(run, tmp_path / "viz")
    result = redraw(copy)
    assert result["failed"] == []
    drawn = {Path(p).relative_to(copy).as_posix() for p in result["drawn"]}
    assert drawn == pngs(run)  # equal: every picture has a redraw, and render draws nothing else
    assert pngs(copy) == pngs(run)
    for name in sorted(drawn):  # the same picture, not just a file of that name
        a = np.asarray(Image.open(run / name).convert("RGB"))
        b = np.asarray(Image.open(copy / name).convert("RGB"))
        assert a.shape == b.shape, name
        assert (a != b).any(-1).mean() < 1e-3, f"{name}: the redraw differs from the run's picture"


def test_metric_plot_record_rebuilds_the_metric(run):
    with np.load(run / "metric_plot" / "val_roc_epoch001.npz") as z:
        assert str(z["metric_class"]) == "torchmetrics.classification.roc.MulticlassROC"
        assert str(z["name"]) == "val_roc" and int(z["epoch"]) == 1
        assert {"value_0", "value_1", "value_2"} <= set(z.files)  # fpr, tpr, thresholds


def test_render_command_redraws_the_confusion_matrices(run, tmp_path, capsys):
    copy = data_only(run, tmp_path / "viz")
    assert main([str(copy / "metric_plot")]) == 0
    assert pngs(copy) == {
        f"metric_plot/{name}_epoch{e:03d}.png" for name in ("val_confmat", "val_roc") for e in (0, 1)
    }
    assert "redrew 4 figure(s)" in capsys.readouterr().out


def test_render_in_worker_processes_draws_the_same(run, tmp_path):
    copy = data_only(run, tmp_path / "viz")
    result = redraw(copy, jobs=2)  # spawned processes (the default for many files on 4+ CPUs)
    assert result["failed"] == []
    assert {Path(p).relative_to(copy).as_posix() for p in result["drawn"]} == pngs(run)
    a = np.asarray(Image.open(run / "metric_plot" / "val_confmat_epoch001.png").convert("RGB"))
    b = np.asarray(Image.open(copy / "metric_plot" / "val_confmat_epoch001.png").convert("RGB"))
    np.testing.assert_array_equal(a, b)


def test_metric_record_round_trips_a_nested_value(tmp_path):
    import torch
    from torchmetrics.classification import BinaryPrecisionRecallCurve

    from lightning_viz.render._figure import close_figure
    from lightning_viz.render.metrics import from_record, metric_record, render_metric

    g = torch.Generator().manual_seed(0)
    roc = MulticlassROC(num_classes=3)  # no thresholds: a tuple of lists of tensors of different lengths
    roc.update(torch.rand(20, 3, generator=g).softmax(1), torch.randint(0, 3, (20,), generator=g))
    pr = BinaryPrecisionRecallCurve(thresholds=5)
    pr.update(torch.rand(20, generator=g), torch.randint(0, 2, (20,), generator=g))
    for metric in (roc, pr):
        value = metric.compute()
        np.savez(tmp_path / "m.npz", **metric_record(metric, value, "metrics.curve", 3))
        with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
            data = from_record({k: z[k] for k in z.files}, "ignored", -1)
        assert type(data["metric"]) is type(metric) and (data["name"], data["epoch"]) == ("metrics.curve", 3)
        assert type(data["value"]) is type(value) and len(data["value"]) == len(value)
        for got, want in zip(data["value"], value):
            assert type(got) is type(want)
            for g_, w_ in zip(got, want) if isinstance(want, list) else [(got, want)]:
                torch.testing.assert_close(g_, w_, equal_nan=True)
        close_figure(render_metric(data))

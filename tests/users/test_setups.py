"""The Trainer settings users really train with, one small case each (issue 14).

Every case fits a model of ``tests/users/models.py`` for a few seconds with the four core callbacks and
TrainingHealthCallback at their defaults, except for two knobs that make captures happen in a run of a few
steps: ``log_every_n_steps=1`` on the Trainer (``make_trainer``) and ``every_n_steps=2`` on
WeightHistogramCallback (default 50). :func:`check` asserts what every case must hold: the fit completes; no
hook is left on the model and no figure is open; each callback wrote its PNGs; no lightning-viz warning
unless the case is about one; histogram totals equal numel; every logged metric has a curve; no activation
statistic is NaN for a layer that ran, and no NaN/Inf health finding; TensorBoard gets the pictures in step
order. Each case then checks the numbers it is about.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import BackboneFinetuning, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.tuner import Tuner

from lightning_viz import (
    ActivationMapCallback,
    CurvePlotCallback,
    ModelSummaryCallback,
    RankViewCallback,
    TrainingHealthCallback,
    WeightHistogramCallback,
)
from lightning_viz.callbacks.rank_view import FIELDS
from lightning_viz.core import renderer, writer
from lightning_viz.core.hooks import hook_count
from lightning_viz.core.sharding import clean_name
from lightning_viz.core.warn import VizWarning
from lightning_viz.render import open_figure_count
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events
from tests.users import models as m

HEALTH = r"^TrainingHealthCallback: "
PNGS = {  # callback -> file patterns, each of which must match at least one PNG
    ModelSummaryCallback: ("summary.png",),
    WeightHistogramCallback: ("weights_evolution_step*.png", "gradients_evolution_step*.png"),
    ActivationMapCallback: ("stats.png", "*_step*.png"),  # maps_stepN or heatmaps_stepN
    CurvePlotCallback: ("curves_epoch*.png",),
    TrainingHealthCallback: ("health_step*.png",),
}


class Recorder(Callback):
    """Keeps the ``activation_stats`` records the callbacks publish, the gradient norms at the hook where
    WeightHistogramCallback captures gradients (before clipping), and the number of validation runs."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.grad_norms: dict[int, dict[str, float]] = {}
        self.validations = 0

    def on_viz_record(self, trainer, source, kind, step, payload):
        if kind == "activation_stats":
            self.records.append(payload)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        norms = self.grad_norms.setdefault(trainer.global_step, {})
        for n, p in pl_module.named_parameters():
            if p.grad is not None:
                norms.setdefault(clean_name(n), float(p.grad.double().norm()))

    def on_validation_end(self, trainer, pl_module):
        self.validations += not trainer.sanity_checking


def core_callbacks() -> list[Callback]:
    # every_n_steps=2 instead of 50, so that a run of 4-8 steps has captures; all else at the defaults
    return [
        ModelSummaryCallback(),
        WeightHistogramCallback(every_n_steps=2),
        ActivationMapCallback(),
        CurvePlotCallback(),
        TrainingHealthCallback(),
        Recorder(),
    ]


@dataclass
class Run:
    trainer: Trainer
    model: torch.nn.Module
    warnings: list[str] = field(default_factory=list)

    def cb(self, kind: type) -> Callback:
        return next(c for c in self.trainer.callbacks if isinstance(c, kind))

    def viz(self, kind: type) -> Path:
        return Path(self.cb(kind).viz_dir)


@contextmanager
def viz_warnings() -> Iterator[list[str]]:
    """The messages of the lightning-viz warnings raised in the block (after it ends, figures flushed)."""
    out: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield out
    writer.flush()
    out += [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def fit(tmp_path, model, data=None, *, trainer=None, extra=(), stage="fit", ckpt_path=None, **kwargs) -> Run:
    """``trainer.<stage>(model, data)`` with the core callbacks (and ``extra`` after them). One epoch of 4
    batches unless a case asks for more (``max_epochs``): drawing the figures is most of a case's time."""
    seed_everything(0)
    kwargs.setdefault("max_epochs", 1)
    trainer = trainer or make_trainer(tmp_path, [*core_callbacks(), *extra], **kwargs)
    more = {"ckpt_path": ckpt_path} if ckpt_path else {}
    with viz_warnings() as caught:
        getattr(trainer, stage)(model, **({"datamodule": data} if data is not None else {}), **more)
    return Run(trainer, model, caught)


def check(run: Run, *, allow: tuple[str, ...] = (), outputs: bool = True) -> None:
    """What every case asserts (see the module docstring); ``allow``: regexes of expected warnings."""
    trainer, model = run.trainer, run.model
    assert trainer.state.finished, trainer.state
    assert hook_count(model) == 0, "a hook was left on the model"
    assert open_figure_count() == 0 and renderer.get_renderer().child_stats().get("open_figures", 0) == 0
    unexpected = [w for w in run.warnings if not any(re.search(a, w) for a in allow)]
    assert not unexpected, f"unexpected lightning-viz warnings: {unexpected}"
    if not outputs:
        return
    for kind, patterns in PNGS.items():
        for pattern in patterns:
            assert list(run.viz(kind).glob(pattern)), f"{kind.__name__} wrote no {pattern} in {run.viz(kind)}"
    check_histogram_totals(run.cb(WeightHistogramCallback), model)
    data = json.loads((run.viz(CurvePlotCallback) / "curves.json").read_text())
    drawn = {n for panel in data["panels"] for n in panel["series"]}
    assert set(trainer.logged_metrics) - drawn == set(), f"logged metrics without a curve (drawn: {drawn})"
    check_activation_stats(run)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            check_image_order(Path(logger.log_dir))


def check_histogram_totals(hist: WeightHistogramCallback, model: torch.nn.Module) -> None:
    numel = {clean_name(n): p.numel() for n, p in model.named_parameters()}
    assert hist._history["weights"], "no weight histogram was captured"
    for sel, series in hist._history.items():
        for name, s in series.items():
            totals = s.arrays()["counts"].sum(axis=1) + s.arrays()["nonfinite"]
            assert (totals == numel[name]).all(), f"{sel}/{name}: totals {totals} != numel {numel[name]}"


def check_activation_stats(run: Run) -> None:
    """A statistic is a number, or the layer is marked as not run at that capture: never a bare NaN."""
    act = run.cb(ActivationMapCallback)
    assert act.history, "no activation statistics were recorded"
    for layer, h in act.history.items():
        ran = h.get("ran", [True] * len(h["step"]))
        for stat in ("mean", "std", "dead_fraction"):
            for i, v in enumerate(h[stat]):
                assert not ran[i] or (v is not None and math.isfinite(v)), f"{layer} {stat}[{i}] = {v}"
    findings = run.cb(TrainingHealthCallback).findings
    assert not [f for f in findings if f["check"] == "nonfinite"], findings


def check_image_order(log_dir: Path) -> None:
    """Pictures reach TensorBoard in step order: per tag, the image events' steps never go down (read raw:
    the EventAccumulator would purge out-of-order events)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: dict[str, list[int]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.HasField("image") or v.metadata.plugin_data.plugin_name == "images":
                    steps.setdefault(v.tag, []).append(event.step)
    assert steps, f"no image reached TensorBoard in {log_dir}"
    for tag, s in steps.items():
        assert s == sorted(s), f"images of {tag!r} arrive out of step order: {s}"


def last_stats(run: Run, layer: str) -> dict[str, float]:
    h = run.cb(ActivationMapCallback).history[layer]
    return {k: h[k][-1] for k in ("mean", "dead_fraction")}


def tb_scalar(run: Run, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in read_events(run.trainer.logger.log_dir).Scalars(tag)}


def steps_of(series) -> list[int]:
    return series.arrays()["steps"].tolist()


# ---------------------------------------------------------------------- the settings
def test_manual_optimization_with_two_optimizers(tmp_path):
    run = fit(tmp_path, m.GAN(), RandomImages())  # 4 batches x (generator step, discriminator step)
    check(run)
    grads = run.cb(WeightHistogramCallback)._history["gradients"]
    for net in ("generator", "discriminator"):
        assert any(n.startswith(f"{net}.") for n in grads), f"no {net} gradient histogram: {sorted(grads)}"
    tags = read_events(run.trainer.logger.log_dir).Tags()["histograms"]
    assert any(t.startswith("gradients/discriminator.") for t in tags), tags


def test_accumulate_grad_batches(tmp_path):
    run = fit(tmp_path, TinyCNN(), RandomImages(), max_epochs=2, accumulate_grad_batches=2)  # 2 steps/epoch
    check(run)
    probe = run.cb(Recorder).grad_norms
    assert sorted(probe) == [0, 1, 2, 3]
    steps = [e.step for e in read_events(run.trainer.logger.log_dir).Histograms("gradients/conv1.weight")]
    assert steps == [0, 2]  # optimizer steps, not batches
    for step in steps:  # the accumulated gradient, as the optimizer uses it
        assert tb_scalar(run, "grad_norm/conv1.weight")[step] == pytest.approx(
            probe[step]["conv1.weight"], 1e-5
        )


def test_gradient_clipping(tmp_path):
    run = fit(tmp_path, TinyCNN(), RandomImages(), gradient_clip_val=1e-3)
    check(run)
    probe, recorded = run.cb(Recorder).grad_norms, tb_scalar(run, "grad_norm/fc.weight")
    assert sorted(recorded) == [0, 2]
    for step, value in recorded.items():  # captured before clipping: the norm that clipping then cut
        assert value == pytest.approx(probe[step]["fc.weight"], rel=1e-5) and value > 1e-3


def test_bf16_mixed(tmp_path):
    run = fit(tmp_path, TinyCNN(), RandomImages(), precision="bf16-mixed")
    check(run)
    assert run.cb(ActivationMapCallback).history["conv1"]["step"] == [4]


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile (dynamo) unsupported")
def test_torch_compile_with_a_validation_loop(tmp_path):
    torch._dynamo.reset()
    model = TinyCNN()
    run = fit(tmp_path, torch.compile(model, backend="eager"), RandomImages(), num_sanity_val_steps=0)
    torch._dynamo.reset()
    run.model = model
    check(run)
    summary = json.loads((run.viz(ModelSummaryCallback) / "summary.json").read_text())
    assert summary["totals"]["total_params"] == sum(p.numel() for p in model.parameters())
    assert summary["input_shape"] and any(r["output_shape"] for r in summary["rows"]), summary["notes"]
    assert list(run.viz(ActivationMapCallback).glob("maps_step*.png"))
    # the statistics of conv1 are those of act1 (its ReLU) on the sample, the first 8 validation images
    with torch.no_grad():
        ref = F.relu(model.conv1(RandomImages().x[:8]))
    assert last_stats(run, "conv1")["mean"] == pytest.approx(float(ref.mean()), rel=1e-4)
    assert last_stats(run, "conv1")["dead_fraction"] == pytest.approx(float((ref == 0).double().mean()))


def test_fast_dev_run(tmp_path):
    run = fit(tmp_path, TinyCNN(), RandomImages(), fast_dev_run=True)
    check(run)
    assert run.trainer.global_step == 1


def test_no_validation_loop(tmp_path):
    run = fit(tmp_path, m.TrainOnlyCNN())
    check(run)
    assert run.cb(ActivationMapCallback).sample_indices == list(range(8))  # from the training set


def test_val_check_interval_below_one_with_max_steps(tmp_path):
    run = fit(tmp_path, m.Regressor(), m.Signals(), max_epochs=2, max_steps=6, val_check_interval=0.5)
    check(run)  # includes: `val_mae`, which no default panel names, has a curve
    history = run.cb(CurvePlotCallback).history
    assert run.trainer.global_step == 6 and run.cb(Recorder).validations == 3
    assert len(history["val_loss"]) == len(history["val_mae"]) == 3
    assert [p[0] for p in history["train_loss"]] == list(range(6))


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_validate_test_predict_alone(tmp_path, stage):
    run = fit(tmp_path, m.EvalCNN(), m.ImagesAllStages(), stage=stage)
    check(run, outputs=False)  # nothing trains, so no figure is promised; nothing may break or warn


def test_two_validation_dataloaders(tmp_path):
    run = fit(tmp_path, m.TwoValLoaderCNN(), m.TwoValLoaders())
    check(run)
    curves = run.cb(CurvePlotCallback)
    panels = json.loads((curves.viz_dir / "curves.json").read_text())["panels"]
    for name in ("val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"):
        assert [p[1] for p in curves.history.get(name, [])] == [0], f"{name}: {sorted(curves.history)}"
        assert any(name in p["series"] for p in panels), name


def _masked_conv1(model, data):  # what conv1 passes on (through F.relu) on the sample
    x, mask = data.columns["x"][:8], data.columns["mask"][:8]
    return "conv1", F.relu(model.conv1(x * mask))


@pytest.mark.parametrize(
    "model, data, reference",
    [
        (m.MaskedCNN, m.MaskedImages, _masked_conv1),
        (m.TokenCNN, lambda: m.Tokens(as_dict=True), None),
        (m.LengthCNN, m.LengthBatches, lambda model, data: ("conv", F.relu(model.conv(data.x[:8])))),
    ],
    ids=["dict-batch-keyword-only-mask", "dict-batch-by-parameter-names", "tuple-example-input"],
)
def test_dict_batches_and_keyword_forwards(tmp_path, model, data, reference):
    model, data = model(), data()
    run = fit(tmp_path, model, data)
    check(run)
    summary = json.loads((run.viz(ModelSummaryCallback) / "summary.json").read_text())
    assert summary["input_shape"] and summary["totals"]["mult_adds"], summary["notes"]
    if reference is not None:  # the capture fed what the batch holds (the mask too), as forward takes it
        with torch.no_grad():
            layer, ref = reference(model, data)
        assert last_stats(run, layer)["mean"] == pytest.approx(float(ref.mean()), rel=1e-4)


def test_early_stopping_then_resume_from_last_ckpt(tmp_path):
    ckpt = tmp_path / "ckpt"
    stop = EarlyStopping("val_loss", stopping_threshold=1e9)  # stops at the first validation
    saver = ModelCheckpoint(dirpath=ckpt, save_last=True)
    first = fit(
        tmp_path / "a",
        TinyCNN(),
        RandomImages(),
        extra=[saver, stop],
        max_epochs=3,
        enable_checkpointing=True,
    )
    check(first)
    assert first.trainer.global_step == 4 and stop.stopped_epoch == 0
    resumed = fit(tmp_path / "b", TinyCNN(), RandomImages(), max_epochs=2, ckpt_path=str(ckpt / "last.ckpt"))
    check(resumed)
    assert resumed.trainer.global_step == 8
    points = [p[0] for p in resumed.cb(CurvePlotCallback).history["train_loss_step"]]
    assert points == list(range(8))  # the first run's points, then the resumed ones: no gap, no duplicate
    assert steps_of(resumed.cb(WeightHistogramCallback)._history["weights"]["conv1.weight"]) == [0, 2, 4, 6]
    assert resumed.cb(ActivationMapCallback).history["conv1"]["step"] == [4, 8]


def test_backbone_finetuning(tmp_path):
    unfreeze = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    run = fit(tmp_path, m.FinetuneCNN(), RandomImages(), extra=[unfreeze], max_epochs=2)
    check(run)
    grads = run.cb(WeightHistogramCallback)._history["gradients"]
    assert steps_of(grads["head.2.weight"]) == [0, 2, 4, 6]
    for name in ("backbone.0.weight", "backbone.2.bias"):  # tracked from the epoch it unfreezes (step 4 on)
        assert name in grads and steps_of(grads[name]) == [4, 6], name
    summary = (run.viz(ModelSummaryCallback) / "summary.json").read_text()  # at fit start: frozen
    frozen = [f"backbone.{n}" for n, _ in m.FinetuneCNN().backbone.named_parameters()]
    assert all(f'"{n}"' in summary for n in frozen), f"summary.json does not list the frozen {frozen}"


@pytest.mark.distributed
@pytest.mark.timeout(150)  # a hang fails the test; the spawned processes are daemons
def test_ddp_spawn_on_two_cpu_processes(tmp_path, monkeypatch):
    # In this process (a subprocess would import torch and Lightning a third time, ~15 s on 2 cores);
    # the launcher picks the port and sets MASTER_* here: monkeypatch puts the environment back.
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seed_everything(0)
    callbacks = [m.SpawnProbe(str(tmp_path)), *core_callbacks()]
    callbacks[2] = WeightHistogramCallback(every_n_steps=1)  # 2 steps per rank: capture both
    trainer = Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyCNN(), RandomImages())
    result = json.loads((tmp_path / "result.json").read_text())  # written by rank 0 at teardown
    assert result["world_size"] == 2 and result["global_step"] == 2
    assert result["hooks"] == 0 and result["open_figures"] == 0
    assert result["viz_warnings"] == []
    assert result["totals"], "no histogram was captured"
    for tag, totals in result["totals"].items():
        assert set(totals) == {result["numel"][tag.split("/", 1)[1]]}, tag
    log_dir = Path(result["log_dir"])
    for kind, patterns in PNGS.items():
        for pattern in patterns:
            assert list((log_dir / "viz" / kind.viz_name).glob(pattern)), f"{kind.__name__}: no {pattern}"
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1, "not rank 0 alone wrote events"
    check_image_order(log_dir)


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_logger_false_and_csv_logger(tmp_path, logger):
    run = fit(
        tmp_path, TinyCNN(), RandomImages(), logger=CSVLogger(tmp_path, "csv") if logger == "csv" else False
    )
    check(run)
    viz = run.viz(CurvePlotCallback)
    if logger == "none":
        assert viz.is_relative_to(tmp_path / "viz"), viz
        return
    log_dir = Path(run.trainer.log_dir)
    assert viz.is_relative_to(log_dir), viz
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "model/total_params" in header and "weight_norm/conv1.weight" in header, header


def test_attention_model(tmp_path):
    # a second ActivationMapCallback asks for out_proj by name, which nn.MultiheadAttention never calls
    asked = ActivationMapCallback(layers=["attn.out_proj", "fc"], output_dir=str(tmp_path / "asked"))
    run = fit(tmp_path, m.AttentionClassifier(), m.Tokens(), extra=[asked])
    check(run)  # includes: no NaN/Inf health finding
    assert math.isfinite(last_stats(run, "fc")["mean"])
    for record in run.cb(Recorder).records:  # out_proj is "not run" wherever it appears, never NaN alone
        assert record.get("attn.out_proj", {"ran": False}).get("ran") is False, record.get("attn.out_proj")
    assert asked.history["attn.out_proj"].get("ran") == [False], asked.history["attn.out_proj"]
    assert asked.history["fc"]["ran"] == [True] and list((tmp_path / "asked").glob("stats.png"))


def test_gru_model_with_a_frozen_embedding(tmp_path):
    run = fit(tmp_path, m.GRUClassifier(), m.Tokens())
    check(run)
    assert "embed.weight" not in run.cb(WeightHistogramCallback)._history["gradients"]
    for kind, stem in ((ModelSummaryCallback, "summary"), (TrainingHealthCallback, "health_summary")):
        text = (run.viz(kind) / f"{stem}.json").read_text()
        assert '"embed.weight"' in text, f"{stem}.json does not list the frozen parameter embed.weight"


def test_tuner_lr_find_then_fit(tmp_path):
    seed_everything(0)
    model, data = TinyCNN(), RandomImages()
    trainer = make_trainer(tmp_path, core_callbacks(), max_epochs=1)
    with viz_warnings() as caught:
        Tuner(trainer).lr_find(model, datamodule=data, num_training=8, early_stop_threshold=None)
        trainer.fit(model, data)
    run = Run(trainer, model, caught)
    check(run)
    assert trainer.global_step == 4
    # the search's steps left nothing in the histories: the fit's own steps, once each
    assert [p[0] for p in run.cb(CurvePlotCallback).history["train_loss_step"]] == [0, 1, 2, 3]
    assert steps_of(run.cb(WeightHistogramCallback)._history["weights"]["conv1.weight"]) == [0, 2]


def test_rich_progress_bar(tmp_path):
    trainer = Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        max_epochs=1,
        callbacks=[RichProgressBar(), *core_callbacks()],
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    check(fit(tmp_path, TinyCNN(), RandomImages(), trainer=trainer))


# ---------------------------------------------------------------------- a planted dead layer
@pytest.mark.parametrize("functional_dead", [True, False], ids=["dead-F.relu", "dead-ReLU-module"])
def test_planted_dead_layer(tmp_path, functional_dead):
    run = fit(tmp_path, m.PlantedDeadCNN(functional_dead), RandomImages())
    check(run, allow=(HEALTH,))  # the dead layer starves the layers before it of gradient: findings expected
    dead, healthy = last_stats(run, "conv2"), last_stats(run, "conv1")
    assert dead["dead_fraction"] > 0.99, dead  # ReLU(conv2) is all zeros
    assert 0.05 < healthy["dead_fraction"] < 0.5, healthy  # about 30% after the ReLU, 0% before it
    record = run.cb(Recorder).records[-1]  # the `activation_stats` data agree
    assert record["conv2"]["dead_fraction"] > 0.99 and 0.05 < record["conv1"]["dead_fraction"] < 0.5
    if not functional_dead:
        assert any("dead units" in w and "act2" in w for w in run.warnings), run.warnings


def test_a_fit_of_ones_own_script_says_where_the_pictures_are(tmp_path, caplog):
    """Outside the lightning-viz command (a user's script, a Ray Train worker) the fit ends with one line
    naming the folder: <log_dir>/viz for the callbacks at their default folder, a custom output_dir as is."""
    custom = tmp_path / "mine"
    cbs = [WeightHistogramCallback(every_n_steps=2), CurvePlotCallback(output_dir=str(custom))]
    trainer = make_trainer(tmp_path, cbs, max_epochs=1, limit_train_batches=4, limit_val_batches=1)
    log = logging.getLogger("lightning.pytorch")  # Lightning's console logger (does not propagate)
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    try:
        trainer.fit(TinyCNN(), datamodule=RandomImages(n=32, batch_size=8))
    finally:
        log.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if "pictures are in" in r.getMessage()]
    viz = Path(trainer.log_dir) / "viz"
    assert lines == [f"lightning-viz: pictures are in {viz}, {custom}"], lines
    assert any(viz.rglob("*.png")) and any(custom.rglob("*.png"))


class CriticAfterBackward(LightningModule):
    """Dict batches, manual optimization: the classifier steps first; the critic, the model's last layer
    with parameters, runs only after the classifier's backward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        self.critic = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        opt_net, opt_critic = self.optimizers()
        out = self.net(batch["features"])
        loss = F.cross_entropy(out, batch["target"])
        opt_net.zero_grad()
        self.manual_backward(loss)
        opt_net.step()
        critic = self.critic(out.detach()).pow(2).mean()
        opt_critic.zero_grad()
        self.manual_backward(critic)
        opt_critic.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), 0.1), torch.optim.SGD(self.critic.parameters(), 0.1)


class OutputProbe(Callback):
    """The first output of two modules in each batch, recorded by hooks of its own: the independent value."""

    def __init__(self, model: LightningModule) -> None:
        self.seen: dict[int, dict[str, tuple[float, float]]] = {}
        self.batch = -1
        for name in ("net.0", "critic"):
            model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, inputs, output):
            out = output.detach().double()
            self.seen.setdefault(self.batch, {}).setdefault(name, (float(out.mean()), float(out.std())))

        return hook

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = batch_idx


def test_rank_view_on_dict_batches_with_two_manual_optimizers(tmp_path):
    """One process: the first layer (net.0) and the last layer with parameters (critic, run after the first
    backward pass) are recorded at every logging step, equal to hooks of the test's own; the loss is the
    first backward's."""
    g = torch.Generator().manual_seed(0)
    data = m.DictDataset(
        features=torch.randn(48, 10, generator=g), target=torch.randint(0, 3, (48,), generator=g)
    )
    model = CriticAfterBackward()
    probe = OutputProbe(model)
    cb = RankViewCallback(every_n_steps=2)
    trainer = make_trainer(tmp_path, [probe, cb], max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VizWarning)
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    assert cb.steps == [0, 4, 8]  # both optimizers count: two global steps per batch, every second batch due
    names = list(FIELDS)
    for step, rows in zip(cb.steps, cb.rows):
        batch = step // 2
        for key, module in (("first", "net.0"), ("last", "critic")):
            mean, std = probe.seen[batch][module]
            got = rows[0, names.index(f"{key}_mean")], rows[0, names.index(f"{key}_std")]
            np.testing.assert_allclose(got, (mean, std), rtol=1e-5, err_msg=f"{key} at step {step}")
        x = data.columns["features"][batch * 8 : batch * 8 + 8]
        np.testing.assert_allclose(rows[0, names.index("input_std")], float(x.std()), rtol=1e-5)

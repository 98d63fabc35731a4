"""CurvePlotCallback in a real Trainer: the history equals what was logged, smoothing, best, resume."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.core.warn import VizWarning
from lightning_viz.render import close_figure
from lightning_viz.render.curves import render_curves
from tests.helpers import make_trainer, read_events

BATCHES = 4  # training batches per epoch
VAL_ACC = [0.3, 0.7, 0.5, 0.6]  # val_acc of each epoch: the best (max) is epoch 1


def train_value(step: int) -> float:
    """The train_loss logged at optimizer step ``step`` (unique minimum, not at the end)."""
    return 3.0 + math.sin(1.3 * step)


class KnownLogger(LightningModule):
    """Logs known numbers: train_loss per step (and its epoch mean), val_acc per epoch."""

    def __init__(self, two_groups: bool = False, schedule: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(4, 1)
        self.b = nn.Linear(4, 1)
        self.two_groups = two_groups
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.log("train_loss", torch.tensor(train_value(self.global_step)), on_step=True, on_epoch=True)
        return (self.a(x) ** 2).mean() + (self.b(x) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_acc", torch.tensor(VAL_ACC[self.current_epoch]))

    def configure_optimizers(self):
        groups = (
            [{"params": self.a.parameters(), "lr": 0.1}, {"params": self.b.parameters(), "lr": 0.02}]
            if self.two_groups
            else self.parameters()
        )
        opt = torch.optim.SGD(groups, lr=0.1)
        if not self.schedule:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4 * BATCHES, 4)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)


def expected_history(epochs: int) -> dict[str, list[list[float]]]:
    """What KnownLogger logs, at the steps Lightning's loggers use."""
    steps = range(epochs * BATCHES)
    ends = [(e + 1) * BATCHES - 1 for e in range(epochs)]
    return {
        "train_loss_step": [[k, k // BATCHES, train_value(k)] for k in steps],
        "train_loss_epoch": [
            [ends[e], e, sum(train_value(k) for k in range(e * BATCHES, (e + 1) * BATCHES)) / BATCHES]
            for e in range(epochs)
        ],
        "val_acc": [[ends[e], e, VAL_ACC[e]] for e in range(epochs)],
        "lr-SGD": [[k, k // BATCHES, 0.1] for k in steps],
    }


def assert_history(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, points in expected.items():
        assert [p[:2] for p in got[name]] == [p[:2] for p in points], name
        assert [p[2] for p in got[name]] == pytest.approx([p[2] for p in points], rel=1e-6), name


def fit(tmp_path, cb, epochs=2, model=None, ckpt_path=None, extra=(), **kwargs):
    trainer = make_trainer(tmp_path, [cb, *extra], max_epochs=epochs, **kwargs)
    trainer.fit(model or KnownLogger(), ckpt_path=ckpt_path)
    return trainer


def test_history_equals_what_was_logged_and_what_tensorboard_got(tmp_path):
    cb = CurvePlotCallback()
    trainer = fit(tmp_path, cb, epochs=2)
    assert_history(cb.history, expected_history(2))  # nothing from the sanity check, no duplicates

    # The same points (step and value) as Lightning's own TensorBoard logging.
    events = read_events(trainer.logger.log_dir)
    for name in ("train_loss_step", "train_loss_epoch", "val_acc"):
        tb = [(e.step, e.value) for e in events.Scalars(name)]
        ours = [(int(p[0]), p[2]) for p in cb.history[name]]
        assert [s for s, _ in tb] == [s for s, _ in ours], name
        assert [v for _, v in tb] == pytest.approx([v for _, v in ours], rel=1e-6), name

    out = Path(trainer.log_dir) / "viz" / "curves"
    for epoch in (0, 1):
        with Image.open(out / f"curves_epoch{epoch:03d}.png") as img:
            assert img.size[0] > 200
    saved = json.loads((out / "curves.json").read_text())
    assert saved["series"]["val_acc"]["value"] == pytest.approx(VAL_ACC[:2])
    assert [p["title"] for p in saved["panels"]] == ["loss", "accuracy", "learning rate"]
    assert len(events.Images("viz/curves")) == 2


def test_every_n_steps_records_only_those_steps(tmp_path):
    cb = CurvePlotCallback(every_n_steps=3)
    fit(tmp_path, cb, epochs=2)
    # 8 optimizer steps: 0, 3 and 6 are due (the same schedule as every callback), each with its own value
    assert [p[0] for p in cb.history["train_loss_step"]] == [0, 3, 6]
    assert [p[2] for p in cb.history["train_loss_step"]] == pytest.approx([train_value(s) for s in (0, 3, 6)])
    assert [p[0] for p in cb.history["lr-SGD"]] == [0, 3, 6]
    assert [p[0] for p in cb.history["val_acc"]] == [3, 7]  # epoch-level values are not thinned


class PendingProbe(Callback):
    """How many values CurvePlotCallback holds unflushed (tensors that may sit on the device) at each batch
    start, after its own hook has run (listed after it)."""

    def __init__(self, cb: CurvePlotCallback) -> None:
        self.cb = cb
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sizes.append(len(self.cb._pending))


def test_values_waiting_for_the_host_stay_one_due_step_worth_in_a_long_epoch(tmp_path):
    # 64 batches in one epoch, due every 2: the values of a due step reach the history at the next due step,
    # so what waits never grows with the epoch (on a GPU: device memory that grew until the epoch ended)
    cb = CurvePlotCallback(every_n_steps=2)
    probe = PendingProbe(cb)
    model = KnownLogger()
    model.train_dataloader = lambda: DataLoader(TensorDataset(torch.randn(4 * 64, 4)), batch_size=4)
    fit(tmp_path, cb, epochs=1, model=model, extra=[probe])
    assert len(probe.sizes) == 64
    assert max(probe.sizes) <= 3, probe.sizes  # train_loss_step, lr-SGD (and nothing older)
    assert [p[0] for p in cb.history["train_loss_step"]] == list(range(0, 64, 2))
    assert [p[2] for p in cb.history["train_loss_step"]] == pytest.approx(
        [train_value(s) for s in range(0, 64, 2)]
    )


class LrRecorder(Callback):
    """Independent record of each param group's lr when each batch starts (the lr its step uses)."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_learning_rates_equal_the_optimizers(tmp_path):
    cb, rec = CurvePlotCallback(), LrRecorder()
    fit(tmp_path, cb, epochs=2, model=KnownLogger(two_groups=True, schedule=True), extra=[rec])
    assert {"lr-SGD/pg1", "lr-SGD/pg2"} <= set(cb.history)
    assert [p[2] for p in cb.history["lr-SGD/pg1"]] == pytest.approx([lr[0] for lr in rec.lrs])
    assert [p[2] for p in cb.history["lr-SGD/pg2"]] == pytest.approx([lr[1] for lr in rec.lrs])
    assert cb.history["lr-SGD/pg1"][1][2] == pytest.approx(0.05)  # the schedule halved it after step 0


def _line(ax, label):
    return next(line for line in ax.lines if line.get_label() == label)


def test_smoothing_and_best_point_in_the_figure(tmp_path):
    cb = CurvePlotCallback(smoothing=0.6)
    # val_acc is a plain tensor: its direction comes from the checkpoint that monitors it
    best_acc = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max")
    fit(tmp_path, cb, epochs=3, extra=[best_acc], enable_checkpointing=True)
    data = cb.plot_data()
    fig = render_curves(data)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert set(axes) == {"loss", "accuracy", "learning rate"}
        raw = [train_value(k) for k in range(3 * BATCHES)]
        hand, s = [], raw[0]
        for v in raw:
            s = 0.6 * s + 0.4 * v
            hand.append(s)
        best = min(range(len(raw)), key=raw.__getitem__)
        smoothed = _line(axes["loss"], f"train_loss_step (EMA 0.6); min {raw[best]:.4g} at step {best}")
        assert list(smoothed.get_ydata()) == pytest.approx(hand, rel=1e-6)
        assert list(smoothed.get_xdata()) == list(range(3 * BATCHES))
        stars = [
            (float(ln.get_xdata()[0]), float(ln.get_ydata()[0]))
            for ln in axes["loss"].lines
            if ln.get_marker() == "*"
        ]
        assert (best, pytest.approx(raw[best])) in stars
        assert f"{raw[best]:.4g}" in [t.get_text() for t in axes["loss"].texts]
        # Epoch-level series and learning rates are not smoothed; no "best" learning rate.
        val = _line(axes["accuracy"], f"val_acc; max 0.7 at step {2 * BATCHES - 1}")
        assert list(val.get_ydata()) == pytest.approx(VAL_ACC[:3])
        assert [t.get_text() for t in axes["accuracy"].texts] == ["0.7"]
        assert [ln.get_label() for ln in axes["learning rate"].lines] == ["lr-SGD"]
        assert not axes["learning rate"].texts
    finally:
        close_figure(fig)


def test_x_axis_epoch(tmp_path):
    cb = CurvePlotCallback(x_axis="epoch", mode={"val_*": "min"})
    fit(tmp_path, cb, epochs=2)
    fig = render_curves(cb.plot_data())
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert axes["loss"].get_xlabel() == "epoch"
        assert list(_line(axes["accuracy"], "val_acc; min 0.3 at epoch 0").get_xdata()) == [
            1.0,
            2.0,
        ]  # mode override
        low = min(train_value(k) for k in range(2 * BATCHES))  # at step 4, in epoch 1
        step_x = list(_line(axes["loss"], f"train_loss_step; min {low:.4g} at epoch 1").get_xdata())
        assert step_x == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    finally:
        close_figure(fig)


def test_resume_continues_the_curves_without_gap_or_duplicate(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    first = CurvePlotCallback()
    fit(
        tmp_path / "a",
        first,
        epochs=2,
        extra=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        enable_checkpointing=True,
    )
    assert_history(first.history, expected_history(2))

    resumed = CurvePlotCallback()
    fit(tmp_path / "b", resumed, epochs=4, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert_history(resumed.history, expected_history(4))


def test_missing_state_warns_and_starts_empty():
    cb = CurvePlotCallback()
    with pytest.warns(VizWarning, match="no curve history"):
        cb.load_state_dict({})
    assert cb.history == {}
    cb.load_state_dict({"history": {"x": [[0, 0, 1.5], [0, 0, 2.5]]}})
    assert cb.history == {"x": [[0, 0, 2.5]]}  # a repeated point replaces, never duplicates
    assert CurvePlotCallback().load_state_dict(cb.state_dict()) is None


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"smoothing": 1.0}, "smoothing"),
        ({"smoothing": -0.1}, "smoothing"),
        ({"smoothing": "0.5"}, "smoothing"),
        ({"x_axis": "time"}, "x_axis"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"panels": {"loss": []}}, "panels"),
        ({"panels": {"loss": "*loss*"}}, "panels"),
        ({"mode": {"val_acc": "largest"}}, "mode"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}"):
        CurvePlotCallback(**kwargs)


# ---------------------------------------------------------------------------- models this file did not see
VAL_LOSS = {0: [0.9, 0.4, 0.6], 1: [2.0, 2.5, 1.5]}  # per validation dataloader, per epoch


class TwoValLoaders(KnownLogger):
    """Two validation dataloaders, each logging a known val_loss (Lightning names them .../dataloader_idx_N)."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", torch.tensor(VAL_LOSS[dataloader_idx][self.current_epoch]))

    def val_dataloader(self):
        return [DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4) for _ in range(2)]


def test_two_validation_dataloaders_are_both_drawn(tmp_path):
    cb = CurvePlotCallback()
    trainer = fit(tmp_path, cb, epochs=3, model=TwoValLoaders())
    ends = [(e + 1) * BATCHES - 1 for e in range(3)]
    events = read_events(trainer.logger.log_dir)
    for i in (0, 1):
        name = f"val_loss/dataloader_idx_{i}"
        assert [p[0] for p in cb.history[name]] == ends
        assert [p[2] for p in cb.history[name]] == pytest.approx(VAL_LOSS[i])
        assert [(e.step, pytest.approx(e.value)) for e in events.Scalars(name)] == list(
            zip(ends, VAL_LOSS[i])
        )
    data = cb.plot_data()
    (loss,) = [p for p in data["panels"] if p["title"] == "loss"]
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(loss["series"])
    fig = render_curves(data)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        # the best of each is its own minimum: epoch 1 for loader 0, epoch 2 for loader 1
        _line(axes["loss"], f"val_loss/dataloader_idx_0; min 0.4 at step {ends[1]}")
        _line(axes["loss"], f"val_loss/dataloader_idx_1; min 1.5 at step {ends[2]}")
    finally:
        close_figure(fig)


MAE_OFFSET = [0.9, 0.3, 0.6]  # |prediction - target| of every validation example, per epoch
SCORE = [0.5, 0.2, 0.4]  # a plain tensor that a ModelCheckpoint(mode="max") monitors
RATIO = [0.1, 0.7, 0.3]  # a plain tensor nothing gives a direction to


class Regression(LightningModule):
    """A regression model: val_mae from a torchmetrics MeanAbsoluteError object over predictions that miss
    by a known amount, train_mae (epoch level) likewise, and two plain tensors."""

    def __init__(self) -> None:
        super().__init__()
        import torchmetrics

        self.net = nn.Linear(4, 1)
        self.train_mae = torchmetrics.MeanAbsoluteError()
        self.val_mae = torchmetrics.MeanAbsoluteError()
        self.val_preds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(1), y)
        self.log("train_loss", loss)
        self.train_mae(y + 1.0, y)
        self.log("train_mae", self.train_mae, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        _, y = batch
        sign = torch.where(torch.arange(len(y)) % 2 == 0, 1.0, -1.0)
        pred = y + sign * MAE_OFFSET[self.current_epoch]
        self.val_preds.append((pred, y))
        self.val_mae(pred, y)
        self.log("val_mae", self.val_mae)
        self.log("val_score", torch.tensor(SCORE[self.current_epoch]))
        self.log("val_ratio", torch.tensor(RATIO[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, generator=g)), 4)

    def val_dataloader(self):
        g = torch.Generator().manual_seed(1)
        return DataLoader(TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, generator=g)), 4)


def _stars(ax):
    return [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in ax.lines if ln.get_marker() == "*"]


def test_regression_metrics_are_drawn_with_the_best_their_direction_gives(tmp_path):
    import numpy as np

    cb = CurvePlotCallback()
    score_ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_score", mode="max")
    model = Regression()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, cb, epochs=3, model=model, extra=[score_ckpt], enable_checkpointing=True)
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]

    # val_mae equals numpy's mean |prediction - target| over each epoch's validation predictions
    per_epoch = [model.val_preds[2 * e : 2 * e + 2] for e in range(1, 4)]  # [0:2] is the sanity check
    mae = [np.mean([np.abs((p - y).numpy()) for p, y in batches]) for batches in per_epoch]
    assert mae == pytest.approx(MAE_OFFSET)
    assert [p[2] for p in cb.history["val_mae"]] == pytest.approx(mae)
    assert cb.direction("val_mae") == ("min", "torchmetrics")
    assert cb.direction("train_mae") == ("min", "torchmetrics")
    assert cb.direction("val_score") == ("max", "ModelCheckpoint")
    assert cb.direction("val_ratio") == (None, "unknown")
    assert cb.direction("train_loss") == ("min", "loss")
    assert CurvePlotCallback(mode={"val_*": "max"}).direction("val_mae") == ("max", "mode")

    data = cb.plot_data()
    panels = {p["title"]: p["series"] for p in data["panels"]}
    assert panels == {
        "loss": ["train_loss"],
        "learning rate": ["lr-SGD"],
        "mae": ["train_mae", "val_mae"],
        "score": ["val_score"],
        "ratio": ["val_ratio"],
    }
    ends = [(e + 1) * BATCHES - 1 for e in range(3)]
    fig = render_curves(data)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 2  # a 3-column grid: two rows
        _line(axes["mae"], f"val_mae; min 0.3 at step {ends[1]}")  # its best is its lowest, not its highest
        assert (ends[1], pytest.approx(0.3)) in _stars(axes["mae"])
        _line(axes["score"], f"val_score; max 0.5 at step {ends[0]}")
        assert _stars(axes["score"]) == [(ends[0], pytest.approx(0.5))]
        _line(axes["ratio"], "val_ratio; direction unknown")  # no guess: no best point
        assert not _stars(axes["ratio"]) and not axes["ratio"].texts
    finally:
        close_figure(fig)
    png = Path(trainer.log_dir) / "viz" / "curves" / "curves_epoch002.png"
    with Image.open(png) as img:
        assert img.size[0] > img.size[1] > 400


class Stages(KnownLogger):
    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.tensor(1.0))

    def predict_step(self, batch, batch_idx):
        return self.a(batch[0])


def test_validate_test_predict_and_fast_dev_run_do_not_break_it(tmp_path):
    """Other Trainer entry points record nothing and warn of nothing; fast_dev_run draws its one epoch."""
    import torchmetrics

    cb = CurvePlotCallback()
    model = Stages()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [cb])
        trainer.validate(model)
        trainer.test(model, dataloaders=model.val_dataloader())
        trainer.predict(model, dataloaders=model.val_dataloader())
        assert cb.history == {}
        quick = CurvePlotCallback()
        make_trainer(tmp_path / "quick", [quick], fast_dev_run=True).fit(Stages())
    assert not [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert {"train_loss_step", "train_loss_epoch", "val_acc", "lr-SGD"} <= set(quick.history)
    assert (quick.viz_dir / "curves_epoch000.png").exists()
    assert torchmetrics.MeanAbsoluteError.higher_is_better is False  # what the regression test relies on


def test_a_checkpoint_keeping_the_worse_end_of_a_torchmetric_is_reported(tmp_path):
    cb = CurvePlotCallback()
    wrong = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_mae", mode="max")
    with pytest.warns(VizWarning, match=r"ModelCheckpoint\(monitor='val_mae', mode='max'\).*set mode='min'"):
        fit(tmp_path, cb, epochs=1, model=Regression(), extra=[wrong], enable_checkpointing=True)
    assert cb.direction("val_mae") == ("min", "torchmetrics")


def _panel_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "match no logged metric" in str(w.message)]


def test_a_right_learning_rate_pattern_is_not_blamed_before_a_logging_step(tmp_path):
    # Epochs of 4 steps, recording every 10: the first epoch ends before any learning rate is recorded.
    panels = {"loss": ["*loss*"], "learning rate": ["lr*"]}
    cb = CurvePlotCallback(panels=panels, every_n_steps=10)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(tmp_path, cb, epochs=3)
    assert not _panel_warnings(record)
    assert "lr-SGD" in cb.history  # recorded at step 9, in the third epoch


def test_a_pattern_that_matches_nothing_is_named_once_logging_steps_have_passed(tmp_path):
    panels = {"loss": ["*loss*"], "accuracy": ["*accuracy*"]}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(tmp_path, CurvePlotCallback(panels=panels, every_n_steps=10), epochs=3)
    (message,) = _panel_warnings(record)
    assert "accuracy: '*accuracy*'" in message and "loss" not in message.split("Logged metrics")[0]

"""The one schedule, across every callback that captures on steps: one table, one expected set of steps.

Each row is a Trainer setup and each column a callback; the steps a callback captured are read from what it
gives the user (its scalars in the logger, the curves' history), and the expected steps come from the rule
in ``lightning_viz/core/schedule.py``, written out by hand for each setup.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lightning_viz import (
    ActivationMapCallback,
    CurvePlotCallback,
    TrainingHealthCallback,
    WeightHistogramCallback,
)
from lightning_viz.core.schedule import Schedule
from tests.callbacks.test_weight_histogram_optimizers import TinyGAN, gan_data
from tests.helpers import RandomImages, TinyCNN


class Recorder(Logger):
    """A real Lightning logger that keeps every logged scalar in memory: name -> steps."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, list[int]] = defaultdict(list)

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key in metrics:
            self.steps[key].append(int(step if step is not None else -1))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def short_trainer(tmp_path, callbacks: list, logger: Logger | None = None, **kwargs: Any) -> Trainer:
    """One CPU epoch, no checkpoint, progress bar or sanity check; ``kwargs`` override the Trainer's."""
    return Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        callbacks=callbacks,
        logger=logger if logger is not None else Recorder(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **{"log_every_n_steps": 1, **kwargs},
    )


def logged(prefix: str):
    def read(cb, logger: Recorder) -> list[int]:
        return sorted({s for k, steps in logger.steps.items() if k.startswith(prefix) for s in steps})

    return read


def curve_steps(cb: CurvePlotCallback, logger: Recorder) -> list[int]:
    lr = [name for name in cb.history if name.startswith("lr-")]
    return [int(p[0]) for p in cb.history[lr[0]]] if lr else []


class Gan(TinyGAN):
    """TinyGAN with a forward (the discriminator), so that the activation capture can feed it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)


# callback -> (how to build it with every_n_steps=every, how to read the steps it captured)
CALLBACKS = {
    "weight_histogram": (
        lambda every, **kw: WeightHistogramCallback(every_n_steps=every, **kw),
        logged("weight_norm/"),
    ),
    "activation_map": (
        lambda every, **kw: ActivationMapCallback(
            every_n_steps=every, every_n_epochs=None, sample_size=4, **kw
        ),
        logged("activation/"),
    ),
    "curve_plot": (lambda every, **kw: CurvePlotCallback(every_n_steps=every, **kw), curve_steps),
    "training_health": (
        lambda every, **kw: TrainingHealthCallback(every_n_steps=every, **kw),
        logged("health/grad_norm/"),
    ),
}

AUTO = {"model": TinyCNN, "data": lambda: RandomImages(n=64, batch_size=8)}  # 8 batches an epoch
GAN = {"model": Gan, "data": gan_data}  # 8 batches, each: generator step, then discriminator step

# (setup, every_n_steps, Trainer arguments, expected steps per callback)
TABLE = [
    # 8 optimizer steps: 0, 3 and 6 are due, in every callback
    ("automatic", 3, {}, {key: [0, 3, 6] for key in CALLBACKS}),
    # the Trainer's log_every_n_steps
    ("automatic", "log_every_n_steps", {"log_every_n_steps": 4}, {key: [0, 4] for key in CALLBACKS}),
    # 4 optimizer steps of 2 batches: steps 0 and 2, each captured once (the labels are optimizer steps)
    ("automatic", 2, {"accumulate_grad_batches": 2}, {key: [0, 2] for key in CALLBACKS}),
    # each optimizer counts its own steps: the generator's 0, 3, 6 are global steps 0, 6, 12, the
    # discriminator's 1, 7, 13; a batch is due when one optimizer's next step is (batches 0, 3, 6); the
    # curves are labelled with the step Lightning's loggers use (batches that stepped)
    (
        "manual, two optimizers",
        3,
        {},
        {
            "weight_histogram": [0, 1, 6, 7, 12, 13],
            "activation_map": [0, 6, 12],
            "curve_plot": [0, 3, 6],
            "training_health": [0, 1, 6, 7, 12, 13],
        },
    ),
    # off: no step is captured; what else is on says so (the weight histograms need an epoch schedule
    # then: captured at the epoch's last optimizer step, 7; the activation maps with both schedules off
    # capture once, at the end of training)
    (
        "automatic",
        None,
        {},
        {"weight_histogram": [7], "activation_map": [8], "curve_plot": [], "training_health": []},
    ),
]


@pytest.mark.parametrize("name", list(CALLBACKS))
@pytest.mark.parametrize(("setup", "every", "trainer_args", "expected"), TABLE)
def test_every_callback_captures_the_same_steps(tmp_path, name, setup, every, trainer_args, expected):
    make, read = CALLBACKS[name]
    case = GAN if setup.startswith("manual") else AUTO
    if name == "activation_map" and case is GAN:
        cb = make(every, sample_from="train", layers=["discriminator.0"])
    elif name == "weight_histogram" and every is None:
        cb = make(every, every_n_epochs=1)
    else:
        cb = make(every)
    logger = Recorder()
    trainer = short_trainer(tmp_path, [cb], logger, **trainer_args)
    trainer.fit(case["model"](), case["data"]())
    assert read(cb, logger) == expected[name], f"{name} under {setup}, every_n_steps={every!r}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            0,
            "`every_n_steps` must be an integer >= 1, 'log_every_n_steps' (the Trainer's) or null (off); got 0",
        ),
        ("trainer", "got 'trainer'"),
        (True, "got True"),
    ],
)
def test_bad_every_n_steps_is_one_line_for_every_callback(value, message):
    for make, _ in CALLBACKS.values():
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            make(value)
        assert type(make(1)).__name__ in str(err.value)  # the callback's name leads the line


def test_epoch_schedule_counts_from_one():
    class T:  # the two Trainer attributes the epoch rule reads
        sanity_checking = False
        current_epoch = 0

    schedule, trainer = Schedule(None, 2), T()
    due = []
    for epoch in range(6):
        trainer.current_epoch = epoch
        due.append(schedule.epoch_due(trainer))  # type: ignore[arg-type]
    assert due == [False, True, False, True, False, True]  # the 2nd, 4th and 6th epochs


def test_schedule_state_round_trips_the_optimizer_counts():
    schedule = Schedule(3)
    schedule.opt_steps = {0: 5, 1: 4}
    restored = Schedule(3)
    restored.load_state_dict(torch.load(_saved(schedule.state_dict()), weights_only=True))
    assert restored.opt_steps == {0: 5, 1: 4}


def _saved(state: dict[str, Any]):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    ("histogram_every", "uses_records", "latest"), [(50, False, 6), (2, True, 6), (1, True, 7)]
)
def test_health_checks_reuse_histogram_records_only_when_they_come_on_every_examined_step(
    tmp_path, histogram_every, uses_records, latest
):
    """TrainingHealthCallback examines steps 0, 2, 4, 6: a WeightHistogramCallback every 50 steps publishes
    step 0 only, so the health callback computes its own gradient norms (they would be stale otherwise)."""
    health = TrainingHealthCallback(every_n_steps=2)
    hist = WeightHistogramCallback(every_n_steps=histogram_every)
    logger = Recorder()
    trainer = short_trainer(tmp_path, [hist, health], logger)
    trainer.fit(TinyCNN(), RandomImages(n=64, batch_size=8))
    assert health._own_histograms is not uses_records
    # 8 steps: the gradient norms the health figure shows are the latest: of step 6 (examined), or of
    # step 7 when the records come on every step
    assert health.figure_data()["grad_step"] == latest
    if not uses_records:  # its own gradient norms go to the loggers on every examined step
        assert logged("health/grad_norm/")(health, logger) == [0, 2, 4, 6]


def test_health_losses_are_labelled_with_the_step_their_batch_belongs_to(tmp_path):
    """Under gradient accumulation the two batches of a step carry its label (0, 0, 1, 1, ...), never -1."""
    health = TrainingHealthCallback(every_n_steps=1)
    trainer = short_trainer(tmp_path, [health], Recorder(), accumulate_grad_batches=2)
    trainer.fit(TinyCNN(), RandomImages(n=64, batch_size=8))  # 8 batches, 4 optimizer steps
    assert health.figure_data()["loss_steps"] == [0, 0, 1, 1, 2, 2, 3, 3]

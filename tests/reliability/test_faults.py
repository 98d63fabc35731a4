"""Faults survived: unwritable output, a raising logger, a failing training loop (figures still flushed)."""

from __future__ import annotations

import os
import signal
import time
import warnings

import numpy as np
import pytest
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image

from lightning_viz.callbacks import weight_histogram as wh_module
from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events


def fit_recording(trainer, model, data=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data or RandomImages(n=32))
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def test_unwritable_output_dir_warns_once_and_tensorboard_still_receives(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    hist = WeightHistogramCallback(every_n_steps=1, bins=8, log="weights", output_dir=str(blocker / "wh"))
    acts = ActivationMapCallback(sample_size=4, output_dir=str(blocker / "am"))
    trainer = make_trainer(tmp_path, [hist, acts], max_epochs=2)
    ours = fit_recording(trainer, TinyCNN())
    assert trainer.state.finished and trainer.global_step == 4
    assert len(ours) == 2, ours  # one per callback (each has its own directory)
    assert all("cannot write to the output directory" in m and "NotADirectoryError" in m for m in ours)
    assert "TensorBoardLogger" in ours[0]
    acc = read_events(trainer.logger.log_dir)
    assert [e.step for e in acc.Histograms("weights/conv1.weight")] == [0, 1, 2, 3]
    assert [e.step for e in acc.Images("viz/activation_map/maps")] == [2, 4]
    assert "viz/weight_histogram/weights_evolution" in acc.Tags()["images"]
    assert blocker.is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_warns_once(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        hist = WeightHistogramCallback(every_n_steps=2, output_dir=str(ro / "wh"))
        trainer = make_trainer(tmp_path, [hist], max_epochs=1)
        ours = fit_recording(trainer, TinyCNN())
    finally:
        ro.chmod(0o700)
    assert trainer.state.finished and len(ours) == 1 and "PermissionError" in ours[0]


class ImageUploadFails(Logger):
    """A logger whose image upload raises (a network error, a full quota); its scalars work."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "upload"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def log_image(self, key, images, step=None):
        raise ConnectionError("image upload failed")


def test_a_raising_logger_warns_once_and_the_other_sinks_still_receive(tmp_path):
    broken = ImageUploadFails()
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    hist = WeightHistogramCallback(every_n_steps=1, bins=8, log="weights")
    acts = ActivationMapCallback(sample_size=4)
    trainer = make_trainer(tmp_path, [hist, acts], max_epochs=2, logger=[tb, broken])
    ours = fit_recording(trainer, TinyCNN())
    assert trainer.state.finished and trainer.global_step == 4
    failures = [m for m in ours if "ImageUploadFails" in m]
    # one warning per callback whose figures it refused, none per figure
    assert sorted(m.split(":")[0] for m in failures) == ["ActivationMapCallback", "WeightHistogramCallback"]
    assert all("image upload failed" in m for m in failures)
    acc = read_events(tb.log_dir)
    assert [e.step for e in acc.Images("viz/activation_map/maps")] == [2, 4]
    assert sorted(p.name for p in acts.viz_dir.glob("maps_*.png")) == [
        "maps_step000002.png",
        "maps_step000004.png",
    ]
    # the broken logger's other method still received the scalars
    keys = {k for m in broken.metrics for k in m}
    assert "weight_norm/conv1.weight" in keys and "activation/conv1/mean" in keys


class FailsAtStep(TinyCNN):
    def __init__(self, step: int, error: type[BaseException]) -> None:
        super().__init__()
        self.fail_step, self.error = step, error

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_step:
            raise self.error(f"failure at step {self.global_step}")
        return super().training_step(batch, batch_idx)


def slow_evolution(monkeypatch):
    real = wh_module.render_evolution

    def slow(data, *args, **kwargs):
        time.sleep(0.8)  # a figure still being drawn when the loop fails
        return real(data, *args, **kwargs)

    monkeypatch.setattr(wh_module, "render_evolution", slow)


def check_png(path):
    with Image.open(path) as img:
        img.verify()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_training_loop_flushes_pending_figures(tmp_path, monkeypatch, error):
    slow_evolution(monkeypatch)
    hist = WeightHistogramCallback(every_n_steps=1, bins=8, log="weights", figure_every_n_epochs=1)
    curves = CurvePlotCallback()
    trainer = make_trainer(tmp_path, [hist, curves], max_epochs=3)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit if error is KeyboardInterrupt else error):
            trainer.fit(FailsAtStep(6, error), RandomImages(n=64))  # 4 steps per epoch
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a KeyboardInterrupt
    # on disk when fit returns: the figure queued at the end of epoch 0, and the one drawn at the failure
    # with every snapshot recorded before it (steps 0..5)
    for name in ("weights_evolution_step000004", "weights_evolution_step000006"):
        check_png(hist.viz_dir / f"{name}.png")
    with np.load(hist.viz_dir / "weights_evolution_step000006.npz") as z:
        assert z["conv1.weight/steps"].tolist() == [0, 1, 2, 3, 4, 5]
    check_png(curves.viz_dir / "curves_epoch001.png")


def test_a_failure_is_quoted_in_one_short_line():
    """What a visualisation failure quotes of its error: the type and the first line, cut at 200 characters
    (torch appends its whole list of backends to some messages, TorchScript whole graphs)."""
    from lightning_viz.core.warn import short_error

    long = NotImplementedError(
        "Could not run 'aten::mean.dim' with arguments from the 'NestedTensorCPU' "
        "backend." + " x" * 300 + "\nCPU: registered at ...\nMeta: registered at ..."
    )
    line = short_error(long)
    assert "\n" not in line and len(line) <= len("NotImplementedError: ") + 203
    assert line.startswith("NotImplementedError: Could not run 'aten::mean.dim'") and line.endswith("...")
    assert short_error(ValueError("bad value")) == "ValueError: bad value"

"""``precision="16-mixed"`` with a GradScaler, on the CPU and on CUDA: the gradient statistics that
WeightHistogramCallback records (histograms, min, max, sum of squares, norms) equal those of the unscaled
gradients, with ``torch.optim.Adam(fused=True)`` (which unscales inside ``step()``) and without.

The reference is the raw gradient read at the optimizer hook, divided by the scaler's scale when the scaler
had not unscaled it yet, counted by ``numpy.histogram`` on the logged edges (moved here from
``tests/callbacks/test_weight_histogram_optimizers.py``, whose model and recorders it uses; that file also
compares the fused and unfused runs bin for bin on the CPU).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from tests.callbacks.test_weight_histogram_optimizers import (
    AdamRegressor,
    ScaledGradRecorder,
    check_histograms,
    gan_data,
    viz_warnings,
)
from tests.gpu.devices import DEVICES, device_trainer, trained_on
from tests.helpers import read_events

LOGGED = (0, 3, 6)  # every_n_steps=3 over gan_data()'s 8 batches


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused-adam"])
@pytest.mark.parametrize("device", DEVICES)
def test_16_mixed_gradient_statistics_are_those_of_the_unscaled_gradients(tmp_path, device, fused):
    torch.manual_seed(0)
    rec = ScaledGradRecorder()
    cb = WeightHistogramCallback(every_n_steps=3, bins=32, log="gradients")
    # a smaller initial scale than the default, so that the first steps do not overflow this model's backward
    plugin = MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device, init_scale=2.0**10))
    trainer = device_trainer(tmp_path, device, [rec, cb], max_epochs=1, plugins=[plugin])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(AdamRegressor(fused), gan_data())
    assert viz_warnings(caught) == []
    assert trained_on(trainer) == {device}
    # Lightning unscales before the hook unless the optimizer unscales in step() (fused)
    assert rec.unscaled[0] is (not fused) and rec.scale[0] == 2.0**10
    acc = read_events(trainer.logger.log_dir)
    for name in rec.raw[0]:
        expected = {
            s: rec.raw[s][name] if rec.unscaled[s] else rec.raw[s][name] / np.float32(rec.scale[s])
            for s in LOGGED
        }
        check_histograms(acc, f"gradients/{name}", expected)
        norms = [e.value for e in acc.Scalars(f"grad_norm/{name}")]
        want = [np.linalg.norm(expected[s].astype(np.float64)) for s in LOGGED]
        np.testing.assert_allclose(norms, want, rtol=1e-5, err_msg=f"grad_norm/{name} on {device}")
        if fused:  # what the hook saw was 1024 times the gradient: the statistics are not of that
            assert np.linalg.norm(rec.raw[0][name]) == pytest.approx(2.0**10 * want[0], rel=1e-5)

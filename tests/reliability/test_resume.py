"""Resume: state round-trips through real checkpoints; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_viz.callbacks.activation_map import ActivationMapCallback
from lightning_viz.callbacks.curve_plot import CurvePlotCallback
from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events

pytestmark = pytest.mark.filterwarnings(
    "ignore:Be aware that when using `ckpt_path`", "ignore:Checkpoint directory .* exists"
)


def callbacks(tmp=None):
    main = [
        CurvePlotCallback(),
        WeightHistogramCallback(every_n_steps=3, bins=16, figure_every_n_epochs=10),
        ActivationMapCallback(sample_size=4, every_n_epochs=1),
    ]
    if tmp is None:
        return main
    # second instances of two classes, told apart by `output_dir` (their state_key)
    return [
        *main,
        WeightHistogramCallback(
            every_n_steps=2, bins=8, log="weights", figure_every_n_epochs=10, output_dir=str(tmp / "wb")
        ),
        CurvePlotCallback(every_n_steps=4, output_dir=str(tmp / "cb")),
    ]


def fit(tmp, epochs, ckpt_path=None, save=False):
    seed_everything(11)
    cbs = callbacks(tmp.parent)
    extra = [ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True)] if save else []
    trainer = make_trainer(tmp, cbs + extra, max_epochs=epochs, enable_checkpointing=save)
    trainer.fit(TinyCNN(), RandomImages(), ckpt_path=ckpt_path)
    return trainer, cbs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    whole = fit(tmp / "whole", 2)
    fit(tmp / "first", 1, save=True)
    resumed = fit(tmp / "second", 2, ckpt_path=str(tmp / "first" / "ckpt" / "last.ckpt"))
    return whole, resumed, tmp / "first" / "ckpt" / "last.ckpt"


def test_resumed_curves_equal_the_uninterrupted_run(runs):
    (_, (whole, *_)), (_trainer, (resumed, *_)), _ = runs
    a, b = whole.plot_data()["series"], resumed.plot_data()["series"]
    assert sorted(a) == sorted(b) and "train_loss_step" in a and "val_loss" in a
    for name in a:
        assert b[name]["step"] == a[name]["step"], name
        assert b[name]["epoch"] == a[name]["epoch"], name
        np.testing.assert_allclose(b[name]["value"], a[name]["value"], rtol=1e-5, err_msg=name)
        points = list(zip(b[name]["step"], b[name]["epoch"]))
        assert len(points) == len(set(points)), f"duplicated point in {name}"
    # 4 steps per epoch, logged every step: no gap across the resume at step 4
    assert a["train_loss_step"]["step"] == list(range(8))
    assert a["val_loss"]["epoch"] == [0, 1]
    # the figure data written by the resumed run shows the whole run
    saved = json.loads((resumed.viz_dir / "curves.json").read_text())
    assert saved["series"]["train_loss_step"]["step"] == list(range(8))
    assert saved["figure"] == "curves_epoch001"


def test_resumed_histogram_history_equals_the_uninterrupted_run(runs):
    (_, (_, whole, *_)), (trainer, (_, resumed, *_)), _ = runs
    for sel in ("weights", "gradients"):
        a, b = whole.evolution_data(sel)["params"], resumed.evolution_data(sel)["params"]
        assert [p["name"] for p in a] == [p["name"] for p in b]
        for pa, pb in zip(a, b):
            assert pb["steps"].tolist() == pa["steps"].tolist() == [0, 3, 6]
            np.testing.assert_array_equal(pb["edges"], pa["edges"])
            np.testing.assert_array_equal(pb["counts"], pa["counts"])
    with np.load(resumed.viz_dir / "weights_evolution_step000008.npz") as z:
        assert z["conv1.weight/steps"].tolist() == [0, 3, 6]
    # the resumed process captured only the steps after the checkpoint at step 4 (no duplicate in
    # TensorBoard): step 6 here, steps 4 and 6 for the second instance (every 2 steps) sharing the logger
    steps = [e.step for e in read_events(trainer.logger.log_dir).Histograms("weights/conv1.weight")]
    assert sorted(steps) == [4, 6, 6]


def test_resumed_activation_history_equals_the_uninterrupted_run(runs):
    (_, (_, _, whole, *_)), (_, (_, _, resumed, *_)), _ = runs
    assert resumed.sample_indices == whole.sample_indices == [0, 1, 2, 3]
    for layer, hist in whole.history.items():
        assert resumed.history[layer]["step"] == hist["step"] == [4, 8]
        np.testing.assert_allclose(resumed.history[layer]["mean"], hist["mean"], rtol=1e-5)


def test_two_instances_of_one_class_keep_separate_state(runs):
    (_, whole), (_, resumed), ckpt = runs
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    keys = [cb.state_key for cb in whole]
    assert len(set(keys)) == len(keys) and all(k in saved for k in keys)
    for cbs in (whole, resumed):
        first, second = cbs[1], cbs[3]
        assert first.evolution_data("weights")["params"][0]["steps"].tolist() == [0, 3, 6]
        assert second.evolution_data("weights")["params"][0]["steps"].tolist() == [0, 2, 4, 6]
        assert second.evolution_data("gradients")["params"] == []
        assert [p[0] for p in cbs[0].history["train_loss_step"]] == list(range(8))
        assert [p[0] for p in cbs[4].history["train_loss_step"]] == [
            0,
            4,
        ]  # steps 0, N, 2N: also after the resume


def _viz_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, VizWarning)]


def test_checkpoint_without_lightning_viz_loads_with_a_warning(runs, tmp_path):
    checkpoint = torch.load(runs[2], weights_only=False)
    checkpoint["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items() if "Checkpoint" in str(k)}
    torch.save(checkpoint, tmp_path / "plain.ckpt")  # as written by a run without lightning-viz
    cbs = callbacks()
    trainer = make_trainer(tmp_path, cbs, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages(), ckpt_path=str(tmp_path / "plain.ckpt"))
    assert trainer.state.finished and trainer.global_step == 8
    ours = [m for m in _viz_warnings(caught) if "has no state" in m]
    assert sorted(m.split(":")[0] for m in ours) == sorted(type(c).__name__ for c in cbs)
    assert cbs[1].evolution_data("weights")["params"][0]["steps"].tolist() == [6]  # afresh from step 4


def test_checkpoint_with_an_older_state_layout_loads_with_a_warning(runs, tmp_path):
    cbs = callbacks()
    checkpoint = torch.load(runs[2], weights_only=False)
    states = checkpoint["callbacks"]
    curve, hist, act = (states[cb.state_key] for cb in cbs)
    states[cbs[0].state_key] = {"points": curve["history"]}  # an older layout: other keys
    hist["version"] = 0  # an older version of the histogram state
    del hist["history"]["weights"]["conv1.weight"]["k"]  # one broken series
    for h in act["history"].values():  # before non-finite counts were kept
        h.pop("nonfinite")
    path = tmp_path / "old.ckpt"
    torch.save(checkpoint, path)

    resumed = callbacks()
    trainer = make_trainer(tmp_path / "b", resumed, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages(), ckpt_path=str(path))
    assert trainer.state.finished and trainer.global_step == 8
    ours = _viz_warnings(caught)
    assert any("no curve history" in m for m in ours)
    assert any("version 0" in m for m in ours) and any("weights/conv1.weight" in m for m in ours)
    names = [p["name"] for p in resumed[1].evolution_data("weights")["params"]]
    assert names[0] == "conv1.bias" and "conv1.weight" in names  # the broken one started afresh
    assert resumed[2].history["conv1"]["nonfinite"] == [0, 0]
    assert resumed[2].history["conv1"]["step"] == [4, 8]


def test_state_key_is_made_once_per_run_and_follows_the_arguments(tmp_path):
    """Lightning reads state_key at every hook: it is cached, and a changed argument shows after setup."""
    cb = WeightHistogramCallback(output_dir=str(tmp_path / "a"), log="weights")
    assert cb.state_key == "WeightHistogramCallback" + repr(
        {"output_dir": str(tmp_path / "a"), "log": "weights", "layers": None}
    )
    assert cb.state_key is cb.state_key  # the same string object: not made again
    cb.output_dir = str(tmp_path / "b")
    trainer = make_trainer(tmp_path, callbacks=[cb])
    cb.setup(trainer, TinyCNN(), "fit")
    assert str(tmp_path / "b") in cb.state_key

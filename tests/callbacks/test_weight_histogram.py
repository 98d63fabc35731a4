"""WeightHistogramCallback in a real CPU Trainer, checked against independent numpy/torch computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from lightning_viz.callbacks.weight_histogram import WeightHistogramCallback
from lightning_viz.core import stats
from lightning_viz.core.warn import VizWarning
from tests.helpers import RandomImages, TinyCNN, make_trainer, read_events

PARAMS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
STEPS_PER_EPOCH = 4  # RandomImages(n=64, batch_size=16)


class Recorder(Callback):
    """Independent copies of parameters and gradients at the same hook, at the given global steps."""

    def __init__(self, steps) -> None:
        self.steps = set(steps)
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.grads: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step in self.steps:
            self.weights[step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            self.grads[step] = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()}


def tb_edges(hist) -> np.ndarray:
    """Full bin edges from TensorBoard's upper bucket limits (the bins are uniform)."""
    limits = np.asarray(hist.bucket_limit)
    return np.concatenate([[limits[0] - (limits[1] - limits[0])], limits])


def assert_histograms_match(
    acc, tag: str, recorded: dict[int, dict[str, torch.Tensor]], name: str, bins: int
):
    events = acc.Histograms(tag)
    assert [e.step for e in events] == sorted(recorded)
    for event in events:
        h = event.histogram_value
        x = recorded[event.step][name].double().numpy().ravel()
        edges = tb_edges(h)
        assert len(h.bucket) == bins
        assert edges[0] <= x.min() and x.max() <= edges[-1]
        np.testing.assert_array_equal(np.asarray(h.bucket), np.histogram(x, bins=edges)[0])
        assert (h.num, h.min, h.max) == (x.size, x.min(), x.max())
        assert h.sum == pytest.approx(x.sum(), rel=1e-5, abs=1e-6)
        assert h.sum_squares == pytest.approx(np.sum(x**2), rel=1e-5)


def test_histograms_norms_and_figures_match_independent_computation(tmp_path):
    rec = Recorder([0, 3, 6])
    cb = WeightHistogramCallback(every_n_steps=3, bins=16, figure_every_n_epochs=10)
    trainer = make_trainer(tmp_path, [rec, cb], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages())
    assert sorted(rec.weights) == [0, 3, 6]

    acc = read_events(trainer.logger.log_dir)
    tags = acc.Tags()
    assert sorted(tags["histograms"]) == sorted(
        [f"weights/{p}" for p in PARAMS] + [f"gradients/{p}" for p in PARAMS]
    )
    for name in PARAMS:
        assert_histograms_match(acc, f"weights/{name}", rec.weights, name, 16)
        assert_histograms_match(acc, f"gradients/{name}", rec.grads, name, 16)
        for prefix, recorded in (("weight_norm", rec.weights), ("grad_norm", rec.grads)):
            events = acc.Scalars(f"{prefix}/{name}")
            assert [e.step for e in events] == [0, 3, 6]
            expected = [float(torch.linalg.vector_norm(recorded[e.step][name].double())) for e in events]
            np.testing.assert_allclose([e.value for e in events], expected, rtol=1e-5)
    assert not [t for t in tags["scalars"] if t.startswith("nonfinite/")]
    assert set(tags["images"]) == {
        "viz/weight_histogram/weights_evolution",
        "viz/weight_histogram/gradients_evolution",
    }

    out = cb.viz_dir
    for sel, recorded in (("weights", rec.weights), ("gradients", rec.grads)):
        stem = out / f"{sel}_evolution_step{2 * STEPS_PER_EPOCH:06d}"
        with Image.open(stem.with_suffix(".png")) as im:
            im.verify()
        with np.load(stem.with_suffix(".npz")) as z:
            assert list(z["parameters"]) == PARAMS
            for name in PARAMS:
                np.testing.assert_array_equal(z[f"{name}/steps"], [0, 3, 6])
                for j, step in enumerate((0, 3, 6)):
                    x = recorded[step][name].double().numpy().ravel()
                    np.testing.assert_array_equal(
                        z[f"{name}/counts"][j], np.histogram(x, bins=z[f"{name}/edges"][j])[0]
                    )
                np.testing.assert_array_equal(z[f"{name}/nonfinite"], [0, 0, 0])


def test_layer_patterns_epoch_schedule_and_gradient_only(tmp_path):
    rec = Recorder([3, 7])  # the last optimizer step of each epoch
    cb = WeightHistogramCallback(
        every_n_steps=None, every_n_epochs=1, layers=["conv*"], log="gradients", bins=8, log_norms=False
    )
    trainer = make_trainer(tmp_path, [rec, cb], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages())
    acc = read_events(trainer.logger.log_dir)
    conv = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert sorted(acc.Tags()["histograms"]) == sorted(f"gradients/{p}" for p in conv)
    assert not [t for t in acc.Tags()["scalars"] if "norm/" in t]
    for name in conv:
        assert_histograms_match(acc, f"gradients/{name}", rec.grads, name, 8)  # steps 3 and 7
    files = sorted(p.name for p in cb.viz_dir.iterdir())
    assert files == [f"gradients_evolution_step{s:06d}.{ext}" for s in (4, 8) for ext in ("npz", "png")]


@pytest.mark.parametrize(
    ("every_n_steps", "every_n_epochs", "max_steps", "expected"),
    [
        (3, None, -1, [0, 3, 6]),
        (4, 1, -1, [0, 3, 4, 7]),  # 0 and 4 by step; 3 and 7, the last step of each epoch, by epoch
        (1, 1, -1, list(range(8))),  # both schedules hit steps 3 and 7: captured once
        (None, 2, -1, [7]),
        (None, 1, 6, [3, 6]),  # stopped mid-epoch by max_steps: captured at the epoch end instead
    ],
)
def test_one_capture_per_logging_step_and_nothing_in_between(
    tmp_path, monkeypatch, every_n_steps, every_n_epochs, max_steps, expected
):
    calls: list[int] = []
    real = stats.histogram_set
    trainer = None

    def counting(tensors, names, bins, **kwargs):
        calls.append(trainer.global_step)
        return real(tensors, names, bins, **kwargs)

    monkeypatch.setattr(stats, "histogram_set", counting)
    cb = WeightHistogramCallback(
        every_n_steps=every_n_steps, every_n_epochs=every_n_epochs, log="weights", figure_every_n_epochs=5
    )
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, max_steps=max_steps)
    trainer.fit(TinyCNN(), RandomImages())
    assert calls == expected
    acc = read_events(trainer.logger.log_dir)
    assert [e.step for e in acc.Histograms("weights/fc.weight")] == expected


def test_nonfinite_weights_are_counted_and_finite_values_still_histogrammed(tmp_path):
    class PoisonBias(Callback):
        def on_fit_start(self, trainer, pl_module):
            with torch.no_grad():
                pl_module.fc.bias[1] = math.nan

    rec = Recorder([0, 2])
    cb = WeightHistogramCallback(every_n_steps=2, bins=8, layers=["fc"], figure_every_n_epochs=5)
    trainer = make_trainer(tmp_path, [PoisonBias(), rec, cb], max_epochs=1)
    trainer.fit(TinyCNN(), RandomImages())
    acc = read_events(trainer.logger.log_dir)
    # the NaN spreads through the loss: count it independently at each step
    expected = {s: int((~torch.isfinite(w["fc.bias"])).sum()) for s, w in rec.weights.items()}
    assert expected[0] == 1 and expected[2] == 4
    assert [(e.step, e.value) for e in acc.Scalars("nonfinite/weights/fc.bias")] == [(0, 1.0), (2, 4.0)]
    events = acc.Histograms("weights/fc.bias")
    assert [e.step for e in events] == [0]  # at step 2 no finite value is left to histogram
    x = rec.weights[0]["fc.bias"].double().numpy()
    h = events[0].histogram_value
    assert h.num == 3
    np.testing.assert_array_equal(h.bucket, np.histogram(x[np.isfinite(x)], bins=tb_edges(h))[0])
    with np.load(cb.viz_dir / f"weights_evolution_step{STEPS_PER_EPOCH:06d}.npz") as z:
        np.testing.assert_array_equal(z["fc.bias/nonfinite"], [1, 4])
        np.testing.assert_array_equal(z["fc.bias/counts"].sum(axis=1), [3, 0])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bins": 1}, "`bins` must be an integer >= 2; got 1"),
        (
            {"every_n_steps": 0},
            "`every_n_steps` must be an integer >= 1, 'log_every_n_steps' (the Trainer's) or null (off); got 0",
        ),
        ({"every_n_steps": None, "every_n_epochs": None}, "every_n_steps=None"),
        ({"every_n_epochs": 0}, "`every_n_epochs` must be an integer >= 1 or null (off); got 0"),
        ({"log": "all"}, "`log` must be one of ['weights', 'gradients', 'both']; got 'all'"),
        ({"max_history": 1}, "`max_history` must be an integer >= 2; got 1"),
        ({"layers": []}, "`layers` must be null"),
        ({"layers": "conv*"}, "`layers` must be null"),
    ],
)
def test_bad_arguments_rejected_at_construction(kwargs, needle):
    with pytest.raises(ValueError) as err:
        WeightHistogramCallback(**kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("pattern", ["nope*", "act1"])  # act1 exists but owns no parameters
def test_layer_pattern_matching_nothing_fails_before_training(tmp_path, pattern):
    cb = WeightHistogramCallback(every_n_steps=1, layers=["conv*", pattern])
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(ValueError) as err:
        trainer.fit(TinyCNN(), RandomImages())
    msg = str(err.value)
    assert "`layers`" in msg and repr(pattern) in msg and "closest" in msg
    assert any(n in msg for n in ("conv1", "conv2", "fc"))
    assert trainer.global_step == 0


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_continues_history(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = WeightHistogramCallback(every_n_steps=2, bins=8, log="weights", figure_every_n_epochs=5)
    trainer = make_trainer(tmp_path, [first, ckpt], max_epochs=1, enable_checkpointing=True)
    trainer.fit(TinyCNN(), RandomImages())
    assert first.evolution_data("weights")["params"][0]["steps"].tolist() == [0, 2]

    second = WeightHistogramCallback(every_n_steps=2, bins=8, log="weights", figure_every_n_epochs=5)
    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [second, again], max_epochs=2, enable_checkpointing=True)
    trainer.fit(TinyCNN(), RandomImages(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    before, after = first.evolution_data("weights"), second.evolution_data("weights")
    for p0, p1 in zip(before["params"], after["params"]):
        assert p1["steps"].tolist() == [0, 2, 4, 6]
        np.testing.assert_array_equal(p1["counts"][:2], p0["counts"])
        np.testing.assert_array_equal(p1["edges"][:2], p0["edges"])
    with np.load(second.viz_dir / "weights_evolution_step000008.npz") as z:
        np.testing.assert_array_equal(z["conv2.weight/steps"], [0, 2, 4, 6])
    # only steps 4 and 6 were captured by the resumed run
    acc = read_events(trainer.logger.log_dir)
    assert [e.step for e in acc.Histograms("weights/conv2.weight")] == [4, 6]


def test_state_dict_round_trip_through_torch_save(tmp_path):
    cb = WeightHistogramCallback(every_n_steps=1, bins=8, max_history=5, figure_every_n_epochs=5)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(TinyCNN(), RandomImages())
    torch.save(cb.state_dict(), tmp_path / "state.pt")
    clone = WeightHistogramCallback(every_n_steps=1, bins=8, max_history=5)
    clone.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for sel in ("weights", "gradients"):
        a, b = cb.evolution_data(sel), clone.evolution_data(sel)
        assert [p["name"] for p in a["params"]] == [p["name"] for p in b["params"]] == PARAMS
        for pa, pb in zip(a["params"], b["params"]):
            for key in ("steps", "edges", "counts", "nonfinite"):
                np.testing.assert_array_equal(pa[key], pb[key])
            # 8 captures thinned to at most 5, evenly, keeping the first and the latest
            assert pa["steps"].tolist() == [0, 2, 4, 6, 7]
    assert clone.state_dict()["last_step"] == 7


def test_longer_saved_history_is_thinned_into_the_usual_buffers():
    """A checkpoint saved with a larger ``max_history`` loads thinned, into buffers of the current size."""
    n = 40
    saved = {
        "steps": torch.arange(n) * 10,
        "index": torch.arange(n),
        "k": torch.full((n,), -4),
        "w": torch.full((n,), 0.125, dtype=torch.float64),
        "counts": torch.arange(n * 8).reshape(n, 8),
        "nonfinite": torch.zeros(n, dtype=torch.int64),
        "seen": n,
        "stride": 1,
    }
    cb = WeightHistogramCallback(bins=8, max_history=6)
    cb.load_state_dict({"version": 1, "bins": 8, "last_step": 390, "history": {"weights": {"a": saved}}})
    (a,) = cb.evolution_data("weights")["params"]
    assert len(a["steps"]) <= 6 and a["steps"][0] == 0 and a["steps"][-1] == 390
    np.testing.assert_array_equal(a["counts"], saved["counts"].numpy()[a["steps"] // 10])
    assert cb._history["weights"]["a"].capacity == 7
    again = WeightHistogramCallback(bins=8, max_history=6)
    again.load_state_dict(cb.state_dict())  # round trip
    np.testing.assert_array_equal(again.evolution_data("weights")["params"][0]["counts"], a["counts"])

    # the compact form sent to the render process draws the same picture as the full one
    from lightning_viz.render._figure import close_figure, to_rgba
    from lightning_viz.render.histograms import render_evolution

    compact = cb.evolution_data("weights", compact=True)
    assert "edges" not in compact["params"][0] and compact["params"][0]["counts"].dtype == np.int32
    pictures = []
    for data in (cb.evolution_data("weights"), compact):
        fig = render_evolution(data)
        pictures.append(to_rgba(fig))
        close_figure(fig)
    np.testing.assert_array_equal(pictures[0], pictures[1])


def test_load_state_dict_tolerates_old_or_broken_state():
    cb = WeightHistogramCallback(bins=8)
    with pytest.warns(VizWarning, match="no history"):
        cb.load_state_dict({"last_step": 3})
    assert cb.evolution_data("weights")["params"] == []

    good = {
        "steps": torch.tensor([0, 5]),
        "index": torch.tensor([0, 1]),
        "k": torch.tensor([-4, -4]),
        "w": torch.tensor([0.125, 0.125], dtype=torch.float64),
        "counts": torch.ones(2, 8, dtype=torch.int64),
        "nonfinite": torch.tensor([0, 2]),
        "seen": 2,
        "stride": 1,
    }
    broken = {key: v for key, v in good.items() if key != "k"}
    state = {"version": 0, "bins": 8, "last_step": 5, "history": {"weights": {"a": good, "b": broken}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.load_state_dict(state)
    messages = [str(w.message) for w in caught if issubclass(w.category, VizWarning)]
    assert any("version 0" in m for m in messages) and any("weights/b" in m for m in messages)
    (a,) = cb.evolution_data("weights")["params"]
    assert a["name"] == "a" and a["steps"].tolist() == [0, 5] and a["nonfinite"].tolist() == [0, 2]
    np.testing.assert_array_equal(a["edges"][0], (np.arange(9) - 4) * 0.125)

    other_bins = WeightHistogramCallback(bins=16)
    with pytest.warns(VizWarning, match="bins=8"):
        other_bins.load_state_dict(state)
    assert other_bins.evolution_data("weights")["params"] == []


def test_failure_inside_capture_warns_once_and_training_completes(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom in histogram_set")

    monkeypatch.setattr(stats, "histogram_set", boom)
    cb = WeightHistogramCallback(every_n_steps=1)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages())
    viz = [w for w in caught if issubclass(w.category, VizWarning)]
    assert len(viz) == 1
    msg = str(viz[0].message)
    assert "WeightHistogramCallback" in msg and "boom in histogram_set" in msg and "step 0" in msg
    assert trainer.state.finished and trainer.global_step == 2 * STEPS_PER_EPOCH


def test_collective_failure_flag_skips_the_step_with_one_warning(tmp_path, monkeypatch):
    real = stats.histogram_set
    monkeypatch.setattr(stats, "histogram_set", lambda *a, **k: (real(*a, **k)[0], True))
    cb = WeightHistogramCallback(every_n_steps=2, log="weights")
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyCNN(), RandomImages())
    viz = [w for w in caught if issubclass(w.category, VizWarning)]
    assert len(viz) == 1 and "failed on some rank" in str(viz[0].message)
    assert not read_events(trainer.logger.log_dir).Tags()["histograms"]
    assert trainer.state.finished

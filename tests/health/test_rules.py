"""TrainingHealthCallback's rules and ledger, without a Trainer or a model: reduced numbers in, findings out.

Every expected number is worked out here independently (numpy or plain arithmetic), and each threshold is
probed from both sides: just over it is flagged, at or just under it is not.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_viz.callbacks.training_health import CHECKS
from lightning_viz.core import health_rules as rules
from lightning_viz.core.activation_stats import NSUMS, output_sums
from lightning_viz.core.forward_sums import CLAIMED
from lightning_viz.core.health_checks import Thresholds
from lightning_viz.core.health_ledger import MAX_LOSS_POINTS, HealthLedger
from lightning_viz.core.health_rules import Finding

ALL = CHECKS  # every check the callback offers
TH = Thresholds()


def hset(names, nonfinite, norms, numel):
    """A HistogramSet's fields the ledger reads, as the reduce phase gives them (numpy arrays)."""
    return SimpleNamespace(
        names=list(names), nonfinite=np.asarray(nonfinite), norm=np.asarray(norms), numel=np.asarray(numel)
    )


def ledger(checks=ALL, **thresholds) -> HealthLedger:
    return HealthLedger(Thresholds.of(thresholds or None), checks, "train_loss")


def entry(layer, dead=None, saturated=None, nonfinite=0, values=100, tensor="output of act, ReLU"):
    return {
        "layer": layer,
        "tensor": tensor,
        "dead": dead,
        "saturated": saturated,
        "nonfinite": nonfinite,
        "values": values,
    }


def ratio(before: np.ndarray, after: np.ndarray) -> float:
    """||W_after - W_before|| / ||W_before||, the way a user would write it (NaN: no scale to compare)."""
    scale = float(np.linalg.norm(before))
    return float(np.linalg.norm(after - before)) / scale if scale > 0 else math.nan


# ---------------------------------------------------------------------------------------- thresholds


def test_thresholds_of_none_a_partial_mapping_and_bad_names():
    assert Thresholds.of(None) == Thresholds()
    th = Thresholds.of({"dead_threshold": 0.8})
    assert th.dead_threshold == 0.8
    assert th == Thresholds(dead_threshold=0.8)  # the others keep their defaults
    assert th.exploding_norm == Thresholds().exploding_norm == 1e3
    with pytest.raises(
        ValueError, match=r"^`thresholds` has no \['dead_treshold'\]; valid: \['dead_threshold'"
    ):
        Thresholds.of({"dead_treshold": 0.8})
    with pytest.raises(ValueError, match=r"^`thresholds` must be a mapping .*; got 0\.8"):
        Thresholds.of(0.8)
    with pytest.raises(ValueError, match=r"`thresholds.dead_threshold` must be in \(0, 1.0\]; got 1.5"):
        Thresholds.of({"dead_threshold": 1.5})


# ---------------------------------------------------------------------------------------- the rules


def test_nonfinite_parameters_name_the_first_parameter_of_weights_and_of_gradients():
    counts = {
        "weights": [("conv.weight", 0), ("conv.bias", 0), ("fc.weight", 7)],
        "gradients": [("conv.weight", 0), ("conv.bias", 3), ("fc.weight", 12)],
    }
    found = rules.nonfinite_parameters(5, counts)
    assert [(f.check, f.layer, f.step, f.value, f.key) for f in found] == [
        ("nonfinite", "fc.weight", 5, 7, "weights:fc.weight"),
        ("nonfinite", "conv.bias", 5, 3, "gradients:conv.bias"),  # the first in model order, not the largest
    ]
    assert found[0].detail == "7 NaN/Inf values in its weight (the first parameter affected in model order)"
    assert found[1].origin_why == "its gradients hold NaN/Inf"
    clean = {sel: [(n, 0) for n, _ in v] for sel, v in counts.items()}
    assert rules.nonfinite_parameters(5, clean) == []


def test_gradient_findings_explode_above_the_norm_not_at_it():
    grads = [("a.weight", 1000.0), ("a.bias", 1000.5), ("b.weight", 3.0)]
    ndim = {"a.weight": 2, "a.bias": 1, "b.weight": 2}
    found, _ = rules.gradient_findings(4, grads, ndim, TH, ALL, first_total=None)
    exploding = [f for f in found if f.check == "exploding_gradients"]
    # 1000.0 is not above the 1e3 threshold; 1000.5 is (biases are judged for exploding too)
    assert [(f.layer, f.step, f.value, f.limit) for f in exploding] == [("a.bias", 4, 1000.5, 1e3)]
    assert exploding[0].detail == "gradient norm 1e+03 > 1e+03"
    found, _ = rules.gradient_findings(
        4, grads, ndim, TH, [c for c in ALL if c != "exploding_gradients"], None
    )
    assert [f for f in found if f.check == "exploding_gradients"] == []


def test_gradient_findings_explode_on_growth_of_the_total_norm_since_the_first_check():
    first = 0.01
    # every norm is below exploding_norm; the total norm is sqrt(6^2 + 8^2) = 10 = 1000 x first
    at_limit = [("fc1.weight", 6.0), ("fc2.weight", 8.0)]
    over = [("fc1.weight", 6.0), ("fc2.weight", 8.01)]
    found, _ = rules.gradient_findings(9, at_limit, {}, TH, ["exploding_gradients"], first)
    assert found == []  # exactly 1000x is not above the growth threshold
    found, _ = rules.gradient_findings(9, over, {}, TH, ["exploding_gradients"], first)
    growth = math.hypot(6.0, 8.01) / first
    assert [(f.check, f.layer, f.step, f.limit) for f in found] == [
        ("exploding_gradients", "fc1.weight", 9, 1e3)
    ]
    assert found[0].value == pytest.approx(growth)
    assert found[0].detail == f"the total gradient norm grew {growth:.3g}x since the first check"
    assert (
        rules.gradient_findings(9, over, {}, TH, ["exploding_gradients"], None)[0] == []
    )  # no reference yet


def test_gradient_findings_vanish_against_the_deepest_weight_biases_not_judged():
    grads = [("conv.weight", 1.9e-3), ("conv.bias", 1e-12), ("mid.weight", 2.1e-3), ("fc.weight", 2.0)]
    ndim = {"conv.weight": 4, "conv.bias": 1, "mid.weight": 2, "fc.weight": 2}
    found, scalars = rules.gradient_findings(3, grads, ndim, TH, ALL, first_total=None)
    # ratios to fc.weight: conv 9.5e-4 (< 1e-3: vanishing), mid 1.05e-3 (not); the tiny bias is no weight
    assert [(f.check, f.layer) for f in found] == [("vanishing_gradients", "conv.weight")]
    assert found[0].value == pytest.approx(1.9e-3 / 2.0)
    assert found[0].limit == 1e-3
    assert found[0].detail == "its gradient norm is 9.50e-04 x that of fc.weight (threshold 1e-03)"
    assert scalars == {"health/grad_norm_ratio": pytest.approx(1.9e-3 / 2.0)}
    # vanishing not asked for: neither the finding nor its scalar
    assert rules.gradient_findings(3, grads, ndim, TH, ["exploding_gradients"], None) == ([], {})


def test_update_findings_tiny_and_too_large_and_a_zero_start_weight_is_never_too_large():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 5))
    direction = rng.normal(size=w.shape)
    direction *= np.linalg.norm(w) / np.linalg.norm(direction)  # ||direction|| == ||w||
    steps = {"tiny.weight": 5e-7, "ok.weight": 1e-3, "edge.weight": 0.5, "big.weight": 0.6, "cls": 0.9}
    names = list(steps)
    ratios = [ratio(w, w + s * direction) for s in steps.values()] + [math.nan]
    names.append("zero.weight")  # W_before == 0: no ratio
    np.testing.assert_allclose(ratios[:-1], list(steps.values()), rtol=1e-9)
    found, scalars = rules.update_findings(7, names, ratios, TH, zero_start={"cls"})
    assert [(f.check, f.layer, f.step) for f in found] == [
        ("tiny_updates", "tiny.weight", 7),
        ("large_updates", "big.weight", 7),  # 0.5 (edge.weight) is not above 0.5; cls started at zero
    ]
    assert found[0].value == pytest.approx(5e-7) and found[0].limit == 1e-6
    assert found[1].value == pytest.approx(0.6) and found[1].limit == 0.5
    assert found[1].detail == (
        "one optimizer step changed it by 6.00e-01 of its norm (threshold 5e-01; about 1e-3 is healthy)"
    )
    assert set(scalars) == {f"health/update_ratio/{n}" for n in names[:-1]}  # no scalar for NaN
    assert scalars["health/update_ratio/cls"] == pytest.approx(0.9)
    # without the zero start, cls is too large
    found, _ = rules.update_findings(7, names, ratios, TH, zero_start=set())
    assert [f.layer for f in found if f.check == "large_updates"] == ["big.weight", "cls"]


def test_loss_findings_first_spike_against_the_median_of_the_prior_window():
    th = Thresholds(spike_window=4)
    history = [1.0, 2.0, 3.0, 2.5]
    steps, values = [10, 11, 12], [2.0, 13.0, 20.0]
    found, scalars = rules.loss_findings("train_loss", history, steps, values, th, ALL)
    med = float(np.median([2.0, 3.0, 2.5, 2.0]))  # the 4 losses before step 11: 2.25; 5 x 2.25 = 11.25
    assert [(f.check, f.layer, f.step, f.limit) for f in found] == [("loss_spike", "train_loss", 11, 5.0)]
    assert found[0].value == pytest.approx(13.0 / med)  # step 12 is a spike too: only the first is reported
    assert found[0].detail == f"13 is {13.0 / med:.3g}x the median of the previous 4 steps"
    # the scalar: the last loss over the median of the window before these losses
    assert scalars == {"health/loss_to_median": pytest.approx(20.0 / np.median(history))}
    # 11.2 is under 5 x 2.25: no spike
    assert rules.loss_findings("train_loss", history, steps, [2.0, 11.2, 2.0], th, ALL)[0] == []


def test_loss_findings_a_nonfinite_loss_names_its_step():
    found, scalars = rules.loss_findings(
        "train_loss", [1.0, 1.0], [3, 4, 5], [1.0, math.inf, math.nan], TH, ALL
    )
    assert [(f.check, f.layer, f.step, f.value) for f in found] == [("nonfinite", "train_loss", 4, math.inf)]
    assert found[0].detail == "the loss is inf"
    assert found[0].origin_why == "the loss was inf at step 4"
    assert scalars == {}  # fewer than 3 prior losses, and the last loss is NaN
    assert rules.loss_findings("train_loss", [1.0], [3], [1.0], TH, ALL) == ([], {})


def test_plateau_finding_below_the_tolerance_not_above():
    means = [2.0, 1.0, 1.0, 0.9995, 1.0]  # best before the last 3 epochs 1.0, best of them 0.9995
    found, scalars = rules.plateau_finding("train_loss", 50, means, TH)
    gain = (1.0 - 0.9995) / 1.0
    assert [(f.check, f.layer, f.step, f.limit) for f in found] == [("loss_plateau", "train_loss", 50, 1e-3)]
    assert found[0].value == pytest.approx(gain)
    assert found[0].detail == "the epoch-mean loss improved by 0.05% over the last 3 epochs (tolerance 0.10%)"
    assert scalars == {"health/loss_improvement": pytest.approx(gain)}
    found, scalars = rules.plateau_finding("train_loss", 50, [2.0, 1.0, 1.0, 0.9989, 1.0], TH)
    assert found == [] and scalars == {"health/loss_improvement": pytest.approx(0.0011)}  # just over
    assert rules.plateau_finding("train_loss", 50, [2.0, 1.0, 0.5], TH) == ([], {})  # too few epochs


def test_activation_findings_dead_saturated_and_first_nonfinite_layer():
    entries = [
        entry("fc1", dead=0.9, tensor="output of act1, ReLU"),  # at the threshold: dead (>=)
        entry("fc2", dead=0.89, tensor="after F.relu"),  # just under: not dead
        entry("fc3", dead=0.0, saturated=0.5, tensor="output of act3, Tanh"),  # at the threshold: saturated
        entry("fc4", dead=0.0, saturated=0.49),
        entry("fc5", nonfinite=4, values=96, tensor="output"),
        entry("fc6", nonfinite=100, values=0),  # a later layer: not the first
    ]
    found, scalars = rules.activation_findings(8, entries, TH, ALL)
    assert [(f.check, f.layer, f.step, f.value, f.limit, f.tensor) for f in found] == [
        ("dead_units", "fc1", 8, 0.9, 0.9, "output of act1, ReLU"),
        ("saturation", "fc3", 8, 0.5, 0.5, "output of act3, Tanh"),
        ("nonfinite", "fc5", 8, 4, 0.0, "output"),
    ]
    assert found[0].detail == "90.0% of the values it passes on are exactly zero (threshold 90%)"
    assert found[1].detail == "50.0% of the values it passes on are at its bounds (threshold 50%)"
    assert found[2].detail == "4 NaN/Inf values in the tensor it passes on (first layer in model order)"
    assert found[2].key == "activations:fc5"
    assert scalars == {
        "health/dead_fraction/fc1": 0.9,
        "health/dead_fraction/fc2": 0.89,
        "health/dead_fraction/fc3": 0.0,
        "health/saturated_fraction/fc3": 0.5,
        "health/dead_fraction/fc4": 0.0,
        "health/saturated_fraction/fc4": 0.49,
    }
    # a layer whose every value is NaN/Inf says so; checks not asked for give nothing
    found, _ = rules.activation_findings(8, entries[5:], TH, ["nonfinite"])
    assert found[0].detail.startswith("every value of the batch is NaN/Inf in the tensor it passes on")
    assert rules.activation_findings(8, entries, TH, ["loss_spike"])[0] == []


def test_shown_activation_saturation_when_bounded_else_dead_fraction():
    assert rules.shown_activation(entry("a", dead=0.1, saturated=0.7)) == ("saturated_fraction", 0.7)
    assert rules.shown_activation(entry("a", dead=0.4)) == ("dead_fraction", 0.4)
    assert rules.shown_activation(entry("a")) is None  # a raw output: nothing to show
    assert rules.shown_activation(entry("a", dead=math.nan)) is None


def test_hooked_entries_from_the_sums_of_real_tensors():
    g = torch.Generator().manual_seed(0)
    relu = torch.relu(torch.randn(64, 32, generator=g, dtype=torch.float64) - 1.0)
    tanh = torch.tanh(3 * torch.randn(64, 32, generator=g, dtype=torch.float64))
    raw = torch.randn(16, 8, generator=g, dtype=torch.float64)
    raw[0, :3] = math.nan
    blind = torch.randn(10, generator=g, dtype=torch.float64)
    level = 0.99
    rows = {
        "fc1": (output_sums(relu, None, level), (1, 0, 0)),
        "fc2": (output_sums(tanh, (-1.0, 1.0), level), (1, 1, 0)),
        "head": (output_sums(raw, None, level), (0, 0, 0)),
        "fc3": (output_sums(blind, None, level), (1, 0, 1)),  # functional code after it unknown
        "unused": (torch.zeros(NSUMS, dtype=torch.float64), (1, 0, 0)),  # did not run
        "act": (torch.zeros(NSUMS, dtype=torch.float64), (1, 0, 0)),  # measured as a weight layer's
    }
    meta = {"fc1": "output of act1, ReLU", "fc2": "after F.tanh", "act": CLAIMED}
    names = list(rows)
    entries, not_run, unknown = rules.hooked_entries(
        names, [r.tolist() for r, _ in rows.values()], [list(fl) for _, fl in rows.values()], meta
    )
    assert not_run == ["unused"]  # "act" is claimed by its weight layer: no "did not run" for it
    assert unknown == ["fc3"]
    by = {e["layer"]: e for e in entries}
    assert list(by) == ["fc1", "fc2", "head", "fc3"]
    assert by["fc1"]["tensor"] == "output of act1, ReLU" and by["head"]["tensor"] == "output"
    assert by["fc1"]["dead"] == pytest.approx(float((relu.numpy() == 0).mean()))
    assert by["fc1"]["saturated"] is None
    assert by["fc2"]["saturated"] == pytest.approx(float((np.abs(tanh.numpy()) >= level).mean()))
    assert 0.3 < by["fc2"]["saturated"] < 0.9  # the tanh of 3 x N(0, 1) does saturate, not all of it
    assert by["head"]["dead"] is None and by["head"]["saturated"] is None  # no non-linearity after it
    assert (by["head"]["nonfinite"], by["head"]["values"]) == (3, 16 * 8 - 3)
    assert by["fc3"]["dead"] == 0.0 and by["fc3"]["saturated"] is None


def test_origin_finding_names_the_module_or_the_batch():
    f = rules.origin_finding(6, "encoder.fc2", "Linear", 12, False, "the loss was nan at step 6", None)
    assert (f.check, f.layer, f.step, f.value, f.key) == ("nonfinite", "encoder.fc2", 6, 12, "origin")
    assert f.detail == (
        "first non-finite output in the forward pass: encoder.fc2 (Linear): its inputs are finite, its output "
        "holds 12 NaN/Inf values (the loss was nan at step 6)"
    )
    f = rules.origin_finding(6, None, "", 5, False, "activations hold NaN/Inf", None)
    assert (
        f.layer == "batch" and f.detail == "the input batch holds 5 NaN/Inf values (activations hold NaN/Inf)"
    )
    assert rules.origin_finding(6, "", "Model", 1, False, "x", None).layer == "forward"
    f = rules.origin_finding(20, "fc", "Linear", 4, True, "its weights hold NaN/Inf", 17)
    assert "its own parameters already hold NaN/Inf" in f.detail
    assert "(the loss first at step 17)" in f.detail and "`nonfinite_every_step: true`" in f.detail
    assert "the loss first" not in rules.origin_finding(20, "fc", "Linear", 4, True, "w", None).detail


# ---------------------------------------------------------------------------------------- the ledger


def test_add_keeps_each_finding_once_per_check_and_key_and_builds_the_message():
    led = ledger()
    f = Finding("dead_units", "fc1", 4, 0.95, 0.9, "95.0% of the values ...", tensor="output of act1, ReLU")
    record = led.add(f, epoch=1)
    assert record == {
        "check": "dead_units",
        "pathology": "dead units",
        "layer": "fc1",
        "tensor": "output of act1, ReLU",
        "step": 4,
        "epoch": 1,
        "value": 0.95,
        "threshold": 0.9,
        "message": "TrainingHealthCallback: dead units: fc1 (output of act1, ReLU) at step 4: 95.0% of the values ....",
    }
    assert led.add(Finding("dead_units", "fc1", 9, 1.0, 0.9, "again"), epoch=2) is None  # same check, layer
    assert led.add(Finding("saturation", "fc1", 9, 0.6, 0.5, "s"), epoch=2) is not None  # another check
    # nonfinite weights and gradients of one parameter are keyed apart; a message without a tensor
    w = led.add(Finding("nonfinite", "fc.weight", 5, 2, 0.0, "w", key="weights:fc.weight"), 0)
    assert w["message"] == "TrainingHealthCallback: non-finite values: fc.weight at step 5: w."
    assert led.add(Finding("nonfinite", "fc.weight", 5, 2, 0.0, "g", key="gradients:fc.weight"), 0)
    assert led.add(Finding("nonfinite", "fc.weight", 6, 2, 0.0, "g", key="gradients:fc.weight"), 0) is None
    assert [(r["check"], r["step"]) for r in led.findings] == [
        ("dead_units", 4),
        ("saturation", 9),
        ("nonfinite", 5),
        ("nonfinite", 5),
    ]


def test_histograms_a_nonfinite_gradient_is_an_infinite_norm_and_own_adds_grad_norm_scalars():
    led = ledger()
    led.trained(0, [("fc1.weight", 20, 2, True), ("fc1.bias", 4, 1, True), ("fc2.weight", 8, 2, True)])
    names = ["weights/fc1.weight", "weights/fc1.bias", "weights/fc2.weight"]
    names += ["gradients/fc1.weight", "gradients/fc1.bias", "gradients/fc2.weight"]
    nonfinite = [0, 0, 0, 0, 2, 0]
    norms = [1.0, 1.0, 1.0, 0.5, math.nan, 0.25]
    numel = [20, 4, 8, 20, 4, 8]
    found, scalars = led.histograms(
        3, hset(names, nonfinite, norms, numel), scaler=False, manual=False, own=True
    )
    assert [(f.check, f.layer, f.key) for f in found] == [
        ("nonfinite", "fc1.bias", "gradients:fc1.bias"),
        ("exploding_gradients", "fc1.bias", None),  # inf > exploding_norm
    ]
    assert found[1].value == math.inf
    assert found[1].detail == "gradient norm inf > 1e+03"
    assert scalars == {
        "health/nonfinite/gradients/fc1.bias": 2.0,
        "health/grad_norm/fc1.weight": 0.5,
        "health/grad_norm/fc1.bias": math.inf,
        "health/grad_norm/fc2.weight": 0.25,
        "health/grad_norm_ratio": 2.0,  # 0.5 / 0.25: the bias is no weight
    }
    assert led.skipped == 0
    # the same record from WeightHistogramCallback (own=False): it logs the norms itself
    _, scalars = ledger().histograms(
        3, hset(names, nonfinite, norms, numel), scaler=False, manual=False, own=False
    )
    assert not any(k.startswith("health/grad_norm/") for k in scalars)


def test_histograms_under_a_gradscaler_a_skipped_step_is_counted_and_its_gradients_not_judged():
    led = ledger()
    names = ["weights/fc.weight", "gradients/fc.weight", "gradients/out.weight"]
    found, scalars = led.histograms(
        2, hset(names, [0, 5, 0], [1.0, math.nan, 0.1], [8, 8, 8]), scaler=True, manual=False, own=True
    )
    assert found == [] and led.skipped == 1
    assert scalars == {}  # an expected skip: no NaN/Inf scalar, no gradient norm
    assert led.figure_data()["grad_norms"] == {} and led.summary()["gradscaler_skipped_steps"] == 1
    assert "GradScaler steps skipped (NaN/Inf gradients, expected): 1 examined" in led.summary_text()
    # weights holding NaN/Inf are a finding even under a scaler
    found, _ = led.histograms(
        3, hset(names, [1, 5, 0], [1.0, math.nan, 0.1], [8, 8, 8]), scaler=True, manual=False, own=True
    )
    assert [(f.layer, f.key) for f in found] == [("fc.weight", "weights:fc.weight")] and led.skipped == 2
    # without a scaler the same NaN gradient is a finding
    found, _ = ledger().histograms(
        2, hset(names, [0, 5, 0], [1.0, math.nan, 0.1], [8, 8, 8]), scaler=False, manual=False, own=True
    )
    assert ("nonfinite", "gradients:fc.weight") in [(f.check, f.key) for f in found]


def test_histograms_growth_is_judged_against_the_first_total_norm():
    led = ledger()
    names = ["gradients/a.weight", "gradients/b.weight"]
    first = math.hypot(0.003, 0.004)  # 0.005
    led.histograms(0, hset(names, [0, 0], [0.003, 0.004], [4, 4]), scaler=False, manual=False, own=True)
    found, _ = led.histograms(
        10, hset(names, [0, 0], [3.0, 4.0], [4, 4]), scaler=False, manual=False, own=True
    )
    assert found == []  # 5.0 / 0.005 = 1000: not above
    found, _ = led.histograms(
        20, hset(names, [0, 0], [3.0, 4.1], [4, 4]), scaler=False, manual=False, own=True
    )
    assert [(f.check, f.layer, f.step) for f in found] == [("exploding_gradients", "a.weight", 20)]
    assert found[0].value == pytest.approx(math.hypot(3.0, 4.1) / first)
    data = led.figure_data()
    assert data["grad_step"] == 20 and data["grad_norms"] == {"a.weight": 3.0, "b.weight": 4.1}
    assert data["vanishing_below"] == pytest.approx(1e-3 * 4.1)  # the threshold times the deepest weight


def test_histograms_manual_keeps_the_gradient_norms_of_the_other_optimizers():
    gen, disc = ["gradients/gen.weight"], ["gradients/disc.weight"]
    led = ledger()
    led.histograms(4, hset(gen, [0], [0.7], [9]), scaler=False, manual=True, own=True)
    led.histograms(5, hset(disc, [0], [0.2], [9]), scaler=False, manual=True, own=True)
    assert led.figure_data()["grad_norms"] == {"gen.weight": 0.7, "disc.weight": 0.2}
    assert led.figure_data()["grad_step"] == 5
    led = ledger()  # automatic optimization: each record replaces the last
    led.histograms(4, hset(gen, [0], [0.7], [9]), scaler=False, manual=False, own=True)
    led.histograms(5, hset(disc, [0], [0.2], [9]), scaler=False, manual=False, own=True)
    assert led.figure_data()["grad_norms"] == {"disc.weight": 0.2}


def test_updates_a_weight_first_seen_at_zero_is_never_too_large():
    led = ledger()
    pos_before, w_before = np.zeros((3, 4)), np.full((3, 4), 2.0)
    pos_after, w_after = pos_before + 0.1, w_before + 0.01
    first = [ratio(pos_before, pos_after), ratio(w_before, w_after)]
    assert math.isnan(first[0]) and first[1] == pytest.approx(0.005)
    assert led.updates(0, ["pos_embed", "fc.weight"], first) == (
        [],
        {"health/update_ratio/fc.weight": first[1]},
    )
    # the next step: the embedding now changes by 100% of its norm, fc.weight by 80%
    second = [ratio(pos_after, pos_after * 2), ratio(w_after, w_after * 1.8)]
    found, scalars = led.updates(1, ["pos_embed", "fc.weight"], second)
    assert [(f.check, f.layer, f.step) for f in found] == [("large_updates", "fc.weight", 1)]
    assert found[0].value == pytest.approx(0.8)
    assert scalars["health/update_ratio/pos_embed"] == pytest.approx(1.0)
    assert led.figure_data()["update_ratios"] == pytest.approx({"pos_embed": 1.0, "fc.weight": 0.8})
    # a weight first seen with a finite ratio is judged, even after a later NaN
    led.updates(2, ["fc.weight"], [math.nan])
    assert [f.layer for f in led.updates(3, ["fc.weight"], [0.9])[0]] == ["fc.weight"]
    assert ledger(checks=["dead_units"]).updates(0, ["fc.weight"], [0.9]) == ([], {})  # check off


def test_a_gradscaler_skip_at_the_first_examination_does_not_silence_large_updates():
    led = ledger()
    b = float(np.sum(np.full(8, 0.5) ** 2))  # W_before is not zero

    def exam(step, d):
        return SimpleNamespace(
            step=step,
            meta=([], {}, ["fc.weight"], []),
            values={"upd": torch.tensor([[b, d]], dtype=torch.float64)},
        )

    assert led.examination(exam(0, 0.0), scaler=True)[0] == []  # step 0 skipped by the scaler
    found = led.examination(exam(1, b), scaler=True)[0]  # step 1: ||dW|| = ||W||: ratio 1.0 > 0.5
    assert [(f.check, f.layer) for f in found] == [("large_updates", "fc.weight")]


def test_losses_thinning_beyond_max_loss_points_keeps_the_last_spike_window_values():
    led = ledger(spike_window=7)
    n = MAX_LOSS_POINTS + 1
    steps, values = list(range(n)), [1.0 + (i % 5) / 10 for i in range(n)]
    found, _ = led.losses(steps, values)
    assert found == []
    kept = list(range(0, n - 7, 2)) + list(range(n - 7, n))  # every other older step, then the window
    assert led.loss_steps == kept
    assert led.loss_steps[-7:] == steps[-7:] and led.loss_values[-7:] == values[-7:]
    assert len(led.loss_values) == len(led.loss_steps) < MAX_LOSS_POINTS
    # the epoch mean is of every loss, not of the thinned curve
    led.epoch_end(n)
    assert led.epoch_losses == [pytest.approx(float(np.mean(values)))]
    # the window of the next spike check is intact: the median of the last 7 losses
    med = float(np.median(values[-7:]))
    found, _ = led.losses([n], [5.0 * med + 0.01])
    assert [(f.check, f.step) for f in found] == [("loss_spike", n)]
    assert found[0].value == pytest.approx((5.0 * med + 0.01) / med)
    assert led.losses([n + 1], [5.0 * med - 0.01])[0] == []


def test_thinning_with_a_spike_window_longer_than_the_curve_keeps_each_step_once():
    led = ledger(spike_window=MAX_LOSS_POINTS + 1000)
    n = MAX_LOSS_POINTS + 1
    led.losses(list(range(n)), [1.0] * n)
    steps = led.loss_steps
    assert len(steps) == len(set(steps)) and steps == sorted(steps)  # each step once, in order
    assert len(led.loss_values) <= n


def test_epoch_end_finds_a_plateau_once_from_the_epoch_means():
    led = ledger()
    epochs = [[2.5, 1.5], [1.0, 1.0], [1.2, 0.8], [0.9995, 0.9995], [1.1, 0.9]]  # means 2, 1, 1, 0.9995, 1
    found_at = []
    for e, losses in enumerate(epochs):
        led.losses([2 * e, 2 * e + 1], losses)
        found, scalars = led.epoch_end(2 * e + 1)
        found_at += [(f.step, f.value) for f in found]
    assert led.epoch_losses == pytest.approx([np.mean(x) for x in epochs])
    assert found_at == [(9, pytest.approx(5e-4))]
    assert scalars == {"health/loss_improvement": pytest.approx(5e-4)}
    # a NaN step loss leaves the epoch mean of the finite ones
    led.losses([10, 11], [math.nan, 3.0])
    led.epoch_end(11)
    assert led.epoch_losses[-1] == 3.0


def test_activations_own_hooks_track_not_run_per_step_records_note_it_once():
    own = ledger()
    own.activations(1, [entry("fc1", dead=0.2)], not_run=["fc2"], unknown=["fc3"], own=True)
    own.activations(5, [entry("fc1", dead=0.3)], not_run=["fc2", "fc4"], own=True)
    assert own.not_run == {"fc2": 5, "fc4": 5}  # the latest step it did not run at
    own.activations(6, [entry("fc2", dead=0.1)], not_run=[], own=True)  # fc2 ran: no longer "not run"
    assert own.figure_data()["not_run"] == ["fc4"]
    assert own.notes["saturation"].startswith("not checked for ['fc3']: the functional code after them")
    assert own.figure_data()["activations"] == {"fc1": ["dead_fraction", 0.3], "fc2": ["dead_fraction", 0.1]}

    rec = ledger()
    rec.activations(1, [entry("fc1", dead=0.2)], not_run=["fc2"], unknown=["fc3"], own=False)
    rec.activations(5, [entry("fc2", dead=0.2)], not_run=["fc2"], unknown=["fc9"], own=False)
    assert rec.not_run == {"fc2": 1}  # noted once, at the first step; a record's "ran" does not clear it
    assert rec.notes["saturation"] == (
        "not checked for ['fc3'] (ActivationMapCallback records): they pass their outputs through "
        "functional code whose bounds are unknown"
    )
    assert "saturation" not in ledger(checks=["dead_units"]).activations(1, [], unknown=["x"], own=True)[1]
    off = ledger(checks=["dead_units"])
    off.activations(1, [], unknown=["fc3"], own=True)
    assert off.notes == {}  # saturation not checked at all: nothing to note
    found, _ = own.activations(7, [entry("fc1", dead=0.95)], own=True)
    assert [(f.check, f.layer, f.step) for f in found] == [("dead_units", "fc1", 7)]


def test_no_loss_is_true_only_the_first_time_and_never_once_losses_exist():
    led = ledger()
    assert led.no_loss() is True
    assert led.unavailable == {"loss": "`monitor` 'train_loss' is not logged at step level"}
    assert led.no_loss() is False
    with_loss = ledger()
    with_loss.losses([0], [1.0])
    assert with_loss.no_loss() is False and with_loss.unavailable == {}


def test_trained_lists_frozen_parameters_and_those_that_started_later():
    led = ledger()
    backbone = [("backbone.weight", 300, 2, False), ("backbone.bias", 10, 1, False)]
    led.trained(0, [*backbone, ("head.weight", 50, 2, True), ("head.bias", 5, 1, False)])
    assert led.frozen == {"backbone.weight": 300, "backbone.bias": 10, "head.bias": 5}
    assert led.started_later() == {}
    led.trained(
        40,
        [
            ("backbone.weight", 300, 2, True),
            ("backbone.bias", 10, 1, False),
            ("head.weight", 50, 2, True),
            ("head.bias", 5, 1, False),
        ],
    )
    led.trained(
        80,
        [(n, c, d, True) for n, c, d, _ in backbone]
        + [("head.weight", 50, 2, True), ("head.bias", 5, 1, False)],
    )
    assert led.started_later() == {"backbone.weight": 40, "backbone.bias": 80}  # head.weight trained from 0
    assert led.frozen == {"head.bias": 5}
    assert led.figure_data()["frozen"] == {"tensors": 1, "values": 5, "names": ["head.bias"]}
    assert led.ndim == {"backbone.weight": 2, "backbone.bias": 1, "head.weight": 2, "head.bias": 1}
    text = led.summary_text()
    assert "started training later: at step 40: 1 tensors: backbone.weight" in text
    assert "parameters that do not train: 1 tensors, 5 values: head.bias (5)" in text


def test_figure_data_and_summary_show_the_findings_and_what_was_not_seen():
    led = ledger()
    led.add(Finding("dead_units", "fc2", 3, 0.95, 0.9, "d"), epoch=0)
    led.add(Finding("dead_units", "fc1", 3, 0.97, 0.9, "d"), epoch=0)
    led.add(Finding("vanishing_gradients", "fc1.weight", 3, 1e-5, 1e-3, "v"), epoch=0)
    led.no_activations("no activation to hook")
    led.losses([0, 1], [2.0, 1.5])
    data = led.figure_data()
    assert data["flagged"] == {"dead_units": ["fc1", "fc2"], "vanishing_gradients": ["fc1.weight"]}
    assert [f["layer"] for f in data["findings"]] == ["fc2", "fc1", "fc1.weight"]
    assert data["loss_steps"] == [0, 1] and data["loss_values"] == [2.0, 1.5]
    assert data["thresholds"] == Thresholds().as_dict()
    summary = led.summary()
    assert summary["unavailable"] == {
        "dead_units": "no activation to hook",
        "saturation": "no activation to hook",
    }
    first = summary["findings"][0]["message"]
    assert first == "TrainingHealthCallback: dead units: fc2 at step 3: d."
    assert summary["gradscaler_skipped_steps"] == 0 and summary["thresholds"]["dead_threshold"] == 0.9
    text = led.summary_text()
    assert text.startswith("training health: 3 finding(s)\n")
    assert "unavailable: dead_units: no activation to hook" in text
    assert "no problem found" in ledger().summary_text()


def test_state_dict_round_trip_does_not_warn_again_and_keeps_the_epoch_means():
    led = ledger()
    led.trained(0, [("backbone.weight", 30, 2, False), ("head.weight", 5, 2, True)])
    led.add(Finding("nonfinite", "fc.weight", 5, 2, 0.0, "g", key="gradients:fc.weight"), 0)
    led.add(Finding("loss_plateau", "train_loss", 9, 1e-4, 1e-3, "p"), 1)
    led.origin = {"layer": "fc", "step": 5}
    led.losses([0, 1], [2.0, 4.0])
    led.epoch_end(1)
    new = ledger()
    new.load_state_dict(led.state_dict())
    assert new.findings == led.findings
    assert new.epoch_losses == [3.0]
    assert new.origin == {"layer": "fc", "step": 5}
    assert new.follows() == " (follows from the first non-finite output in the forward pass: fc at step 5)"
    assert new.add(Finding("nonfinite", "fc.weight", 7, 2, 0.0, "g", key="gradients:fc.weight"), 2) is None
    assert new.add(Finding("nonfinite", "fc.weight", 7, 2, 0.0, "w", key="weights:fc.weight"), 2) is not None
    new.trained(60, [("backbone.weight", 30, 2, True), ("head.weight", 5, 2, True)])
    assert new.started_later() == {"backbone.weight": 60}  # frozen at the start of the run, not of the resume
    # an older state without "flagged": the findings' (check, layer) are the once-only keys
    old = ledger()
    old.load_state_dict({"findings": led.findings})
    assert old.add(Finding("loss_plateau", "train_loss", 20, 0.0, 1e-3, "p"), 3) is None
    assert old.frozen_at_start is None  # no "trains_since": learnt again from the next examination

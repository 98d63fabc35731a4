"""The arithmetic of each health check, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_viz.callbacks.training_health import TrainingHealthCallback
from lightning_viz.core.health_checks import (
    Thresholds,
    activation_flags,
    depth_ratios,
    first_nonfinite,
    functional_activation,
    loss_spikes,
    plateau_improvement,
    update_ratio,
)
from lightning_viz.render import close_figure
from lightning_viz.render.health import BAD_COLOUR, OK_COLOUR, render_health


def test_activation_flags_dead_after_any_nonlinearity_saturated_with_known_bounds():
    def entry(layer, dead, saturated):
        return {
            "layer": layer,
            "tensor": "t",
            "dead": dead,
            "saturated": saturated,
            "nonfinite": 0,
            "values": 9,
        }

    entries = [
        entry("a", 0.95, None),  # after a ReLU: 95% zeros >= 0.9: dead
        entry("b", 0.5, None),  # after a ReLU: half zeros is normal
        entry("c", 0.0, 0.6),  # after a tanh: 60% at the bounds >= 0.5
        entry("d", 0.99, 0.1),  # after a tanh: 99% exact zeros (its inputs are zero): dead too
        entry("e", None, None),  # a raw Conv2d output (no non-linearity after it): no check applies
        entry("f", math.nan, math.nan),  # nothing finite to judge
    ]
    assert activation_flags(entries, dead=0.9, saturated=0.5) == [
        ("dead_units", "a", 0.95),
        ("saturation", "c", 0.6),
        ("dead_units", "d", 0.99),
    ]
    assert activation_flags(entries, dead=0.995, saturated=0.7) == []


def test_functional_activation_from_autograd_nodes():
    assert functional_activation(
        ["ConvolutionBackward0", "ReluBackward0", "MaxPool2DWithIndicesBackward0"]
    ) == (
        "relu",
        None,
    )
    assert functional_activation(["AddmmBackward0", "TanhBackward0"]) == ("tanh", (-1.0, 1.0))
    assert functional_activation(["ViewBackward0"]) is None


def test_depth_ratios_divide_by_the_deepest_layer():
    np.testing.assert_allclose(depth_ratios([1e-6, 1e-3, 2.0]), [5e-7, 5e-4, 1.0])
    assert np.isnan(depth_ratios([1.0, 0.0])).all()  # the deepest gradient is zero: no ratio
    assert np.isnan(depth_ratios([1.0, np.inf])).all()  # ... or infinite (exploded): nothing vanishes
    assert depth_ratios([]).size == 0


def test_update_ratio_is_the_norm_of_the_change_over_the_norm_of_the_weights():
    before = np.array([3.0, 4.0])  # W = [3, 4]: ||W||^2 = 25
    after = np.array([3.0, 4.03])  # dW = [0, 0.03]: ||dW|| = 0.03
    ratio = update_ratio(np.array([np.sum(before**2)]), np.array([np.sum((after - before) ** 2)]))
    np.testing.assert_allclose(ratio, [0.03 / 5.0])
    assert np.isnan(update_ratio(np.array([0.0]), np.array([1.0]))[0])


def test_loss_spikes_against_the_running_median():
    history = [1.0, 2.0, 3.0]  # median 2
    # 4.0 <= 5 x 2 joins the window -> [2, 3, 4]; 16.0 > 5 x 3 is a spike and stays out of the window;
    # 9.9 <= 5 x 3 is not.
    assert loss_spikes(history, [4.0, 16.0, 9.9], factor=5.0, window=3) == [1]
    assert loss_spikes(history, [10.0], factor=5.0, window=3) == []  # equal to 5 x median: not above
    assert loss_spikes([1.0, 1.0], [100.0], factor=5.0, window=20) == []  # fewer than 3 earlier values
    assert loss_spikes([1.0, 1.0, 1.0], [math.nan, 6.0], factor=5.0, window=3) == [1]  # NaN skipped


def test_plateau_improvement_over_patience_epochs():
    assert plateau_improvement([2.0, 1.0], patience=3) is None  # too few epochs
    # best before the last 3 epochs: 1.0; best of the last 3: 0.9995 -> 0.05% improvement
    assert plateau_improvement([2.0, 1.0, 1.0, 0.9995, 1.0], patience=3) == pytest.approx(5e-4)
    assert plateau_improvement([2.0, 1.0, 0.5, 0.25], patience=2) == pytest.approx(0.75)


def test_first_nonfinite_in_layer_order():
    assert first_nonfinite(["a", "b", "c"], [0, 3, 5]) == ("b", 3)
    assert first_nonfinite(["a"], [0]) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"thresholds": {"dead_threshold": 1.5}},
            r"`thresholds.dead_threshold` must be in \(0, 1.0\]; got 1.5",
        ),
        (
            {"thresholds": {"tiny_update_ratio": 0}},
            r"`thresholds.tiny_update_ratio` must be a number > 0; got 0",
        ),
        ({"thresholds": {"spike_window": 0}}, r"`thresholds.spike_window` must be an integer >= 1; got 0"),
        (
            {"thresholds": {"spike_windw": 5}},
            r"`thresholds` has no \['spike_windw'\]; valid: \['dead_threshold'",
        ),
        (
            {"thresholds": Thresholds(plateau_tolerance="x")},
            "`thresholds.plateau_tolerance` must be a number",
        ),
        ({"checks": ["dead"]}, "checks"),
        ({"every_n_steps": 0}, "every_n_steps"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        TrainingHealthCallback(**kwargs)
    assert str(err.value).startswith("TrainingHealthCallback: ")  # one line that names the callback


def test_thresholds_are_one_typed_group_partial_mappings_keep_the_defaults():
    cb = TrainingHealthCallback(thresholds={"exploding_norm": 100, "plateau_patience": 5})
    assert cb.thresholds == Thresholds(exploding_norm=100, plateau_patience=5)
    assert cb.thresholds.dead_threshold == Thresholds().dead_threshold == 0.9
    assert TrainingHealthCallback(thresholds=Thresholds(spike_factor=3.0)).thresholds.spike_factor == 3.0
    assert TrainingHealthCallback().thresholds == Thresholds()


def test_render_marks_flagged_layers_in_red():
    data = {
        "grad_norms": {"conv1.weight": 1e-7, "fc.weight": 1.0},
        "grad_step": 10,
        "update_ratios": {"conv1.weight": 1e-3, "fc.weight": 2e-3},
        "activations": {"act1": ["dead_fraction", 1.0], "act2": ["saturated_fraction", 0.2]},
        "loss_steps": [0, 1, 2],
        "loss_values": [2.3, 2.2, math.nan],
        "findings": [{"check": "dead_units", "pathology": "dead units", "layer": "act1", "step": 0}],
        "flagged": {"vanishing_gradients": ["conv1.weight"], "dead_units": ["act1"]},
        "thresholds": TrainingHealthCallback().thresholds.as_dict(),
    }
    fig = render_health(data)
    try:
        grad_ax, upd_ax, act_ax, _ = fig.axes[:4]
        import matplotlib.colors as mc

        def colours(ax):
            return [mc.to_hex(p.get_facecolor()) for p in ax.patches]

        assert colours(grad_ax) == [BAD_COLOUR, OK_COLOUR]
        assert colours(upd_ax) == [OK_COLOUR, OK_COLOUR]
        assert colours(act_ax) == [BAD_COLOUR, OK_COLOUR]
        assert (
            "1. step 0: dead units: act1" in [t.get_text() for t in fig.axes[3].texts if not t.get_gid()][-1]
        )
    finally:
        close_figure(fig)


def test_loss_of_several_batches_a_step_is_drawn_as_points_and_the_steps_mean():
    """Under gradient accumulation two losses share a step: one line through both would zig-zag."""
    data = {"loss_steps": [0, 0, 1, 1, 2], "loss_values": [2.0, 1.0, 0.5, 1.5, math.nan], "findings": []}
    fig = render_health(data)
    try:
        lines = {line.get_label(): line for line in fig.axes[3].get_lines() if not line.get_gid()}
        mean = lines["mean over the step's batches"]
        assert list(mean.get_xdata()) == [0, 1] and list(mean.get_ydata()) == [1.5, 1.0]
        assert list(lines["loss of a batch"].get_ydata()) == [2.0, 1.0, 0.5, 1.5]
    finally:
        close_figure(fig)
    fig = render_health({**data, "loss_steps": [0, 1, 2, 3, 4]})  # one loss a step: the line itself
    try:
        assert [line.get_label() for line in fig.axes[3].get_lines() if not line.get_gid()] == ["loss"]
    finally:
        close_figure(fig)


def test_state_round_trip_keeps_findings_and_their_once_only_keys():
    cb = TrainingHealthCallback()
    cb.ledger.findings = [{"check": "nonfinite", "layer": "fc.weight", "step": 3, "message": "m"}]
    cb.ledger.flagged = {("nonfinite", "gradients:fc.weight")}
    cb.ledger.epoch_losses = [2.0, 1.0]
    new = TrainingHealthCallback()
    new.load_state_dict(cb.state_dict())
    assert new.findings == cb.findings
    assert new.ledger.flagged == {("nonfinite", "gradients:fc.weight")}
    assert new.ledger.epoch_losses == [2.0, 1.0]

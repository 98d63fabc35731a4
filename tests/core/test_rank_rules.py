"""The per-rank findings (lightning_viz.core.rank_rules) on gathered rows made by hand."""

from __future__ import annotations

import math

import numpy as np

from lightning_viz.callbacks.rank_view import FIELDS
from lightning_viz.core.rank_rules import findings, stragglers


def rows(world: int, **columns) -> np.ndarray:
    """``[world, fields]`` rows: ordinary values, the given columns replaced (one value per rank)."""
    base = {"loss": 1.0, "data_s": 0.001, "forward_s": 0.02, "step_s": 0.05, "input_mean": 0.0}
    base |= {"input_std": 1.0, "first_mean": 0.1, "first_std": 0.5, "last_mean": 0.0, "last_std": 1.0}
    base |= {"weights": 12.5}
    out = np.array([[base[f] for f in FIELDS] for _ in range(world)], dtype=np.float64)
    for name, values in columns.items():
        out[:, FIELDS.index(name)] = values
    return out


def kinds(found):
    return sorted((f["kind"], f["rank"]) for f in found)


def test_even_ranks_find_nothing():
    history = [rows(4) for _ in range(6)]
    assert findings(FIELDS, history, 50, ratio=1.5, replicas=True) == []


def test_a_straggler_needs_three_of_the_last_five_steps_and_five_milliseconds():
    slow = rows(2, forward_s=[0.02, 0.08])
    assert stragglers(FIELDS, [slow, slow], 1.5) == {}  # two steps: not yet
    got = stragglers(FIELDS, [rows(2), slow, rows(2), slow, slow], 1.5)
    # before the gradient sync: the wait for the batch plus the forward pass, (1 + 80) ms against (1 + 20) ms
    assert list(got) == [1] and got[1]["times"] == 3 and math.isclose(got[1]["ratio"], 0.081 / 0.021)
    tiny = rows(2, forward_s=[0.0001, 0.001])  # 10x, but under a millisecond: timer noise
    assert stragglers(FIELDS, [tiny] * 5, 1.5) == {}
    data = rows(3, data_s=[0.001, 0.001, 0.2])  # a slow loader shows before the forward pass
    assert kinds(findings(FIELDS, [data] * 3, 9, ratio=1.5, replicas=True)) == [("straggler", 2)]


def test_bad_data_on_one_rank():
    nan_loss = rows(3, loss=[1.0, math.nan, 1.1])
    assert kinds(findings(FIELDS, [nan_loss], 3, ratio=1.5, replicas=True)) == [("nonfinite_loss", 1)]
    all_nan = rows(2, loss=[math.nan, math.nan])  # every rank: the model's own problem, not a rank's
    assert findings(FIELDS, [all_nan], 3, ratio=1.5, replicas=True) == []
    scale = rows(4, input_std=[1.0, 1.1, 0.9, 255.0])
    assert kinds(findings(FIELDS, [scale], 3, ratio=1.5, replicas=True)) == [("input_scale", 3)]
    two = findings(FIELDS, [rows(2, input_std=[1.0, 255.0])], 3, ratio=1.5, replicas=True)
    assert kinds(two) == [("input_scale", None)] and "1 on rank 0, 255 on rank 1" in two[0]["message"]


def test_replicas_compared_exactly_and_only_when_replicated():
    differ = rows(3, weights=[12.5, 12.5, np.nextafter(12.5, 13.0)])
    assert kinds(findings(FIELDS, [differ], 7, ratio=1.5, replicas=True)) == [("replica", 2)]
    assert findings(FIELDS, [differ], 7, ratio=1.5, replicas=False) == []  # sharded: not compared
    assert findings(FIELDS, [rows(1)], 7, ratio=1.5, replicas=True) == []  # one rank: nothing to compare

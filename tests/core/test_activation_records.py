"""The records a figure of ActivationMapCallback is drawn from: channel rules, caps, notes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_viz.core.activation_records import feature_record, heatmap_record


@pytest.mark.parametrize("order", ["mean_activation", "variance", "first"])
def test_channel_rules(order):
    a = torch.zeros(2, 5, 3, 3)
    a[1, 0] = 0.5  # mean 0.5, variance 0
    a[1, 1, 0, 0] = 9.0  # mean 1.0, largest variance
    a[1, 3] = 2.0  # mean 2.0, variance 0
    a[1, 4] = torch.arange(9.0).reshape(3, 3)  # mean 4.0, variance 6.67
    rec = feature_record("c", nn.Conv2d(1, 5, 1), a, 1, 3, order)
    expected = {"mean_activation": [4, 3, 1], "variance": [1, 4, 0], "first": [0, 1, 2]}[order]
    assert rec["channels"].tolist() == expected
    np.testing.assert_array_equal(rec["maps"], a[1, expected].numpy())
    assert rec["total_channels"] == 5 and rec["kind"] == "Conv2d"


def test_heatmap_records_are_capped():
    a = torch.randn(80, 300)
    rec = heatmap_record("fc", nn.Linear(3, 300), a, 0, 4, "first")
    assert rec["values"].shape == (64, 128)
    assert rec["note"] == "64 of 80 rows, first 128 of 300 columns"
    seq = torch.randn(4, 7, 5)
    rec = heatmap_record("rnn", nn.Identity(), seq, 2, 4, "first")
    np.testing.assert_array_equal(rec["values"], seq[2].numpy())
    conv1d = torch.randn(4, 6, 10)
    conv1d[1, 5] += 10
    rec = heatmap_record("c1", nn.Conv1d(1, 6, 1), conv1d, 1, 2, "mean_activation")
    assert rec["values"].shape == (2, 10)
    # channels x positions, each row labelled with its real channel number
    assert rec["rows"] == "channel (example 1)" and rec["cols"] == "position"
    assert rec["row_ticks"][0] == 5 and len(rec["row_ticks"]) == 2
    np.testing.assert_array_equal(rec["values"], conv1d[1, rec["row_ticks"]].numpy())
    assert rec["note"] == "2 of 6 channels, highest mean"

"""Atomic file writes: no temporary left behind, and a failed write keeps the old file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_viz.core.files import atomic_write_bytes, atomic_write_json


def test_atomic_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": np.arange(3), "nan": float("nan")})
    assert json.loads(target.read_text().replace("NaN", "null")) == {"x": [0, 1, 2], "nan": None}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]

"""Every test in tests/gpu is marked ``gpu``: what ``make gpu-check`` runs (``pytest -m gpu`` selects them)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: tests/gpu, run by `make gpu-check` (CUDA variants skip without CUDA)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.gpu)

"""Which device NCCL collectives run on (#19 item 5): the strategy's root device, never blindly
``torch.cuda.current_device()``, which a launcher such as Ray Train leaves at ``cuda:0`` on every worker.

NCCL and CUDA cannot run on this machine, so the process group's backend is stood in for; the device choice
itself runs as it is. Real gloo collectives are in tests/distributed."""

from __future__ import annotations

import pytest
import torch

from lightning_viz.core import distributed


@pytest.fixture
def nccl(monkeypatch):
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "nccl")

    def current_device() -> int:
        raise AssertionError("torch.cuda.current_device() asked although the root device is known")

    monkeypatch.setattr(torch.cuda, "current_device", current_device)
    yield
    distributed.use_root_device(None)


def test_nccl_collectives_run_on_the_strategy_root_device(nccl):
    distributed.use_root_device(torch.device("cuda", 3))
    assert distributed.collective_device() == torch.device("cuda", 3)
    ref = torch.zeros(1, device="meta")
    assert distributed.collective_device(ref) == torch.device("cuda", 3)


def test_without_a_root_device_a_cuda_reference_tensor_decides(nccl, monkeypatch):
    class FakeCuda:  # a tensor on cuda:2 (no CUDA here): only its device is read
        device = torch.device("cuda", 2)

    assert distributed.collective_device(FakeCuda()) == torch.device("cuda", 2)  # type: ignore[arg-type]


def test_a_cpu_root_device_is_not_used_for_nccl(nccl, monkeypatch):
    distributed.use_root_device(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed.collective_device() == torch.device("cuda", 1)


def test_gloo_follows_the_tensors():
    assert distributed.collective_device() == torch.device("cpu")
    assert distributed.collective_device(torch.zeros(1)) == torch.device("cpu")

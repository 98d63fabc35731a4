"""Lightning's ``FSDPStrategy`` (torch FSDP1): histograms and parameter counts are those of the full parameters.

Real multi-process gloo jobs (``tests/distributed/fsdp1_worker.py``), each in a subprocess under a timeout.
Lightning 2.6 refuses ``FSDPStrategy`` on the CPU, so these jobs run it through ``CPUFSDPStrategy``, a
subclass that lifts only the CUDA-only spots (the accelerator check, ``device_id=None`` on the CPU, the
device mesh built on ``"cuda"``); see its docstring. The tests marked for 2 GPUs run ``FSDPStrategy`` itself.

Every histogram at the probed steps is checked against ``numpy.histogram`` of the full parameter (or
gradient), gathered independently by FSDP's own ``summon_full_params`` (or an ``all_gather`` of the padded
shards of a ``FlatParameter``'s gradient), on the same edges; the model summary against the unwrapped model.
Also covered: ``configs/fsdp1.yaml`` composed with the quickstart, and raw torch FSDP1 models wrapped before
lightning-viz could note them (``tests/distributed/fsdp1_index_worker.py``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.distributed.test_distributed import (
    assert_no_duplicate_events,
    clean_env,
    edges_of,
    results,
    run_job,
    run_quickstart_with,
    run_two,
    tb_histograms,
    viz_files,
)
from tests.helpers import TinyCNN, read_events

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "distributed" / "fsdp1_worker.py"
TIMEOUT = 240


def run_fsdp1(tmp: Path, name: str, **spec) -> Path:
    return run_job(
        tmp, WORKER, name=name, **{"callbacks": ["summary", "weights"], "every_n_steps": 2, **spec}
    )


def unwrapped_counts(n_classes: int) -> tuple[int, dict[str, int]]:
    """Parameter count of the same model without FSDP, in total and per top-level block."""
    blocks: dict[str, int] = defaultdict(int)
    for name, p in TinyCNN(n_classes=n_classes).named_parameters():
        blocks[name.split(".", 1)[0]] += p.numel()
    return sum(blocks.values()), dict(blocks)


def check_histograms(out: Path, steps: list[int]) -> int:
    """Each weight and gradient histogram at ``steps`` equals numpy on the full values; returns the count."""
    hists = tb_histograms(out)
    checked = 0
    for step in steps:
        full = dict(np.load(out / f"params_rank0_step{step:06d}.npz"))
        logged = {tag for tag, events in hists.items() if any(e.step == step for e in events)}
        assert logged == set(full), f"step {step}: logged {sorted(logged)}, parameters {sorted(full)}"
        for tag, values in full.items():
            events = [e for e in hists[tag] if e.step == step]
            assert len(events) == 1, f"{tag} at step {step}: {len(events)} events (duplicate or missing)"
            h = events[0].histogram_value
            expected, _ = np.histogram(values.astype(np.float64).ravel(), bins=edges_of(h))
            assert h.num == values.size, f"{tag} step {step}: total {h.num}, full numel {values.size}"
            assert np.array_equal(np.asarray(h.bucket, dtype=np.int64), expected), f"{tag} step {step}"
            checked += 1
    return checked


def check_job(out: Path, world_size: int, steps: list[int], summary: bool, n_classes: int) -> int:
    """Histograms exact, summary of the full model, every output once, same collectives on every rank."""
    res = results(out)
    assert sorted(res) == list(range(world_size)), res
    assert all(r["root"] == "FullyShardedDataParallel" for r in res.values()), res
    assert all(r["collectives"] == res[0]["collectives"] for r in res.values())
    checked = check_histograms(out, steps)
    assert_no_duplicate_events(out / "tb" / "version_0")
    files = viz_files(out)
    assert len(files) == len(set(files))
    summaries = list(out.rglob("model_summary/summary.json"))
    assert len(summaries) == int(summary), summaries
    if summary:
        total, blocks = unwrapped_counts(n_classes)
        data = json.loads(summaries[0].read_text())
        assert data["totals"]["total_params"] == total
        assert data["totals"]["trainable_params"] == total
        assert {b["name"]: b["trainable"] + b["frozen"] for b in data["blocks"]} == blocks
        assert sum(f.endswith("model_summary/summary.txt") for f in files) == 1, files
    return checked


# (sharding strategy, use_orig_params, one FSDP unit per layer, callbacks, histograms per step)
JOBS = {
    # Lightning's default use_orig_params=True; each layer's unit split across the 2 ranks, so that some
    # parameters are cut in two and some have no element on a rank.
    "full_shard_per_layer": ("FULL_SHARD", True, True, ["weights"], 12),
    "full_shard": ("FULL_SHARD", True, False, ["summary", "weights"], 12),
    "shard_grad_op": ("SHARD_GRAD_OP", True, True, ["weights"], 12),
    "no_shard": ("NO_SHARD", True, False, ["summary", "weights"], 12),  # replicas: counted once
    # One FlatParameter of an odd number of elements: rank 1's shard ends with padding.
    "flat_param": ("FULL_SHARD", False, False, ["summary", "weights"], 2),
}


@pytest.mark.parametrize("job", list(JOBS))
def test_histograms_and_summary_are_of_the_full_parameters(tmp_path, job):
    sharding, orig, per_layer, callbacks, per_step = JOBS[job]
    out = run_fsdp1(
        tmp_path,
        job,
        sharding_strategy=sharding,
        use_orig_params=orig,
        auto_wrap=per_layer,
        callbacks=callbacks,
        n_classes=5,
        probe_steps=[0, 2],
    )
    assert check_job(out, 2, [0, 2], "summary" in callbacks, 5) == 2 * per_step


def test_hybrid_shard_counts_each_shard_once(tmp_path):
    """4 processes on a 2x2 mesh: shards within pairs, replicated across them (one replica counts)."""
    out = run_fsdp1(
        tmp_path,
        "hsdp",
        devices=4,
        mesh=[2, 2],
        sharding_strategy="HYBRID_SHARD",
        auto_wrap=False,
        n_classes=5,
        probe_steps=[0],
        n=16,
        limit_val_batches=0,
    )
    assert check_job(out, 4, [0], True, 5) == 12


def test_model_summary_with_one_unit_per_layer(tmp_path):
    """Its own forward pass would make a child unit FSDP's root and break the first training step: under
    FSDP1 the summary skips it (counts only) and training runs."""
    out = run_fsdp1(
        tmp_path, "summary_per_layer", auto_wrap=True, callbacks=["summary"], n_classes=5, max_epochs=1
    )
    assert check_job(out, 2, [], True, 5) == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_fsdp_strategy_on_two_gpus(tmp_path):
    """``FSDPStrategy`` itself (no subclass), NCCL, as a GPU user runs it."""
    out = run_fsdp1(
        tmp_path,
        "gpu",
        accelerator="gpu",
        sharding_strategy="FULL_SHARD",
        auto_wrap=False,
        n_classes=5,
        probe_steps=[0, 2],
    )
    assert check_job(out, 2, [0, 2], True, 5) == 2 * 12
    assert results(out)[0]["strategy"] == "FSDPStrategy"


def test_models_wrapped_before_import_are_found_by_one_heap_scan(tmp_path):
    """Raw torch FSDP1 (no Lightning), wrapped while lightning-viz's module hook was not there."""
    worker = ROOT / "tests" / "distributed" / "fsdp1_index_worker.py"
    run_two([sys.executable, str(worker), str(tmp_path)], tmp_path, clean_env(WORLD_SIZE="2"), "RANK")
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["plain_view"] == [True, 3]  # rank 0 contributes a replica
    assert res["scanned_after_plain"] is False
    assert res["scanned"] is True

    orig = res["orig_params=True"]
    assert not orig["failed"]
    assert orig["numel"] == [35, 7, 21, 3] * 2
    assert orig["full_numel"] == [35, 7, 21, 3]
    assert [n for [[_, n]] in orig["original_numels"]] == [35, 7, 21, 3]
    assert len(orig["exact"]) == 8 and all(orig["exact"].values()), orig["exact"]

    flat = res["orig_params=False"]
    assert not flat["failed"]
    assert flat["numel"] == [66, 66] and flat["full_numel"] == [66]
    assert [n for _, n in flat["original_numels"][0]] == [35, 7, 21, 3]
    assert [name.rpartition(".")[2] for name, _ in flat["original_numels"][0]] == ["weight", "bias"] * 2
    assert list(flat["exact"].values()) == [True], flat["exact"]


def check_config_run(run: Path) -> None:
    from example_projects.digits import DigitsClassifier

    unwrapped = DigitsClassifier(channels=16, hidden=64, depth=2)  # the quickstart's model
    summary = json.loads((run / "viz" / "model_summary" / "summary.json").read_text())
    assert summary["totals"]["total_params"] == sum(p.numel() for p in unwrapped.parameters())
    acc = read_events(run)
    names = {n for n, _ in unwrapped.named_parameters()}
    assert {t.split("/", 1)[1] for t in acc.Tags()["histograms"] if t.startswith("weights/")} == names
    for tag in acc.Tags()["histograms"]:
        numel = dict(unwrapped.named_parameters())[tag.split("/", 1)[1]].numel()
        assert all(e.histogram_value.num == numel for e in acc.Histograms(tag)), tag


def test_config_composes_with_the_quickstart_on_cpu(tmp_path):
    """``configs/fsdp1.yaml`` as written, with the two overrides a CPU needs (see ``CPUFSDPStrategy``)."""
    run = run_quickstart_with(
        tmp_path,
        "fsdp1.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.strategy.class_path=tests.distributed.fsdp1_worker.CPUFSDPStrategy",
    )
    check_config_run(run)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_config_composes_with_the_quickstart_on_two_gpus(tmp_path):
    check_config_run(run_quickstart_with(tmp_path, "fsdp1.yaml"))

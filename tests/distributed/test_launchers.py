"""The quickstart under the launchers users run (#19): two torchrun agents on loopback, and Lightning's
SLURMEnvironment with the variables ``srun`` sets (two processes on loopback). Each gives one set of outputs,
and its weight and gradient histograms equal, bit for bit, those of the same command with ``devices=2``
(Lightning's own launcher)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.distributed.test_distributed import (
    ROOT,
    assert_no_duplicate_events,
    clean_env,
    free_port,
    run_all,
    run_quickstart_with,
)
from tests.helpers import read_events

pytestmark = [pytest.mark.distributed, pytest.mark.engines]

SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2"]


def quickstart_args(tmp: Path) -> list[str]:
    """``fit`` with the quickstart and the DDP overlay, one node's share of a 2-node job, into ``tmp``."""
    return [
        "fit",
        "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--config", str(ROOT / "configs" / "ddp.yaml"),
        "--trainer.devices=1", "--trainer.num_nodes=2", *SHORT,
        f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip


def the_one_run(tmp: Path, logs: list[str]) -> Path:
    """The launch made one job of two ranks, wrote one run directory, once, and said where its pictures
    are once."""
    text = "".join(logs)
    for rank in (0, 1):
        assert text.count(f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2") == 1, text[-3000:]
    assert sum(log.count("lightning-viz: pictures are in") for log in logs) == 1, logs[0][-3000:]
    runs = sorted((tmp / "quickstart").iterdir())
    assert [r.name for r in runs] == ["version_0"], "one run directory, written once"
    assert_no_duplicate_events(runs[0])
    return runs[0]


def assert_same_histograms(ref: Path, out: Path) -> None:
    a, b = tb_histograms_of(ref), tb_histograms_of(out)
    assert sorted(a) == sorted(b) and a, "the same histogram tags"
    for tag in a:
        assert [e.step for e in a[tag]] == [e.step for e in b[tag]], tag
        for ea, eb in zip(a[tag], b[tag]):
            assert list(ea.histogram_value.bucket) == list(eb.histogram_value.bucket), (tag, ea.step)
            assert list(ea.histogram_value.bucket_limit) == list(eb.histogram_value.bucket_limit), tag
    files = lambda run: sorted(str(p.relative_to(run)) for p in (run / "viz").rglob("*") if p.is_file())  # noqa: E731
    assert files(ref) == files(out), "the same files in viz/"


def tb_histograms_of(run: Path) -> dict[str, list]:
    acc = read_events(run)
    return {tag: acc.Histograms(tag) for tag in acc.Tags()["histograms"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same command with ``devices=2``: Lightning starts the second process itself."""
    tmp = tmp_path_factory.mktemp("devices2")
    return run_quickstart_with(tmp, "ddp.yaml")


def test_two_torchrun_agents_on_loopback_match_two_devices(tmp_path, reference):
    port = free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    agent += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lvtest"]
    agent += ["--module", "lightning_viz", *quickstart_args(tmp_path)]
    env = clean_env()
    env.pop("MASTER_PORT")  # torchrun's rendezvous sets the address and port of the process group
    logs = run_all([(agent, env), (agent, env)], tmp_path)
    assert_same_histograms(reference, the_one_run(tmp_path, logs))


def test_slurm_environment_on_loopback_matches_two_devices(tmp_path, reference):
    """Two tasks as ``srun --nodes 2 --ntasks-per-node 1`` starts them: Lightning's SLURMEnvironment takes
    the ranks from SLURM_PROCID / SLURM_NODEID / SLURM_LOCALID and the address from SLURM_NODELIST."""
    base = clean_env(
        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="lvtest",
        SLURM_NODELIST="127.0.0.1", SLURM_LOCALID="0",
    )  # fmt: skip
    base.pop("MASTER_ADDR")  # from SLURM_NODELIST
    cli = [sys.executable, "-m", "lightning_viz", *quickstart_args(tmp_path)]
    tasks = [(cli, {**base, "SLURM_PROCID": str(r), "SLURM_NODEID": str(r)}) for r in (0, 1)]
    logs = run_all(tasks, tmp_path)  # (without SLURMEnvironment both tasks would be rank 0, and no job runs)
    assert_same_histograms(reference, the_one_run(tmp_path, logs))

"""A Ray Train job of the distributed tests: ``python tests/distributed/ray_job.py SPEC.json``.

The spec is one job, or ``{"jobs": [...]}``: several, one after another on the same local cluster.

Starts a local Ray cluster and runs ``ray.train.torch.TorchTrainer`` on 2 CPU workers. Each worker builds
the Lightning Trainer as Ray documents it (``RayDDPStrategy`` or ``RayFSDPStrategy``, the
``RayLightningEnvironment`` plugin, ``prepare_trainer``) with the same model, data and lightning-viz
callbacks as ``worker.py``, and a probe that saves the full parameters and gradients at the probed steps,
gathered independently of lightning-viz. On the CPU, ``RayFSDPStrategy`` runs with the CPU lifts of
:class:`~tests.distributed.fsdp1_worker.CPUFSDPStrategy` (Lightning's FSDP1 refuses the CPU otherwise).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def train_func(spec: dict) -> None:
    """What each Ray worker runs."""
    import faulthandler

    import torch.distributed as dist
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment, prepare_trainer
    from torch import nn

    from tests.distributed.fsdp1_worker import CPUFSDPStrategy, FullValues
    from tests.distributed.worker import ParamProbe, build_callbacks
    from tests.helpers import RandomImages, TinyCNN

    class RayCPUFSDPStrategy(CPUFSDPStrategy, RayFSDPStrategy):
        """RayFSDPStrategy (Ray's devices and sampler) with the CPU lifts of CPUFSDPStrategy."""

    faulthandler.dump_traceback_later(spec.get("worker_timeout", 150), exit=True)  # a hang shows its stacks
    seed_everything(spec.get("seed", 0), workers=True)
    model = TinyCNN()  # in worker.py's order: the seed, the model, the callbacks, the Trainer, the data
    out = Path(spec["out"])
    steps = spec.get("probe_steps", [])
    if spec["strategy"] == "fsdp":
        strategy = RayCPUFSDPStrategy(auto_wrap_policy={nn.Conv2d, nn.Linear}, use_orig_params=True)
        probe = FullValues(steps, out)
    else:
        strategy, probe = RayDDPStrategy(), ParamProbe(steps, out)
    logger = TensorBoardLogger(str(out), name="tb", version=0) if spec.get("explicit_dir", True) else True
    trainer = Trainer(
        accelerator="cpu",
        devices="auto",
        strategy=strategy,
        plugins=[RayLightningEnvironment()],
        max_epochs=spec.get("max_epochs", 2),
        callbacks=[probe, *build_callbacks(spec)],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(model, datamodule=RandomImages(n=spec.get("n", 64), batch_size=spec.get("batch_size", 8)))
    log_dir = trainer.log_dir  # a broadcast from rank 0: every rank asks
    if trainer.global_rank == 0:
        (out / "ray_result.json").write_text(
            json.dumps({"world_size": trainer.world_size, "log_dir": log_dir})
        )
    if dist.is_initialized():
        dist.barrier()


def main() -> None:
    """One Ray cluster for every job of the spec (``{"jobs": [spec, ...]}``, or one spec), run one after
    another: a cluster's start-up is most of a short job's time."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    given = json.loads(Path(sys.argv[1]).read_text())
    jobs = given.get("jobs", [given])
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True)
    try:
        for spec in jobs:
            out = Path(spec["out"])
            out.mkdir(parents=True, exist_ok=True)
            TorchTrainer(
                train_func,
                train_loop_config=spec,
                scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                run_config=RunConfig(storage_path=str(out / "ray_storage"), name="lvtest"),
            ).fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

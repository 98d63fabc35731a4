"""Entry point of the FSDP1 jobs: Lightning's ``FSDPStrategy`` (torch ``FullyShardedDataParallel``).

Run as ``python tests/distributed/fsdp1_worker.py SPEC.json``; Lightning's launcher re-executes it for the
other ranks. The spec names the sharding strategy, ``use_orig_params``, whether each convolution and linear
layer is its own FSDP unit, the device mesh (hybrid sharding) and the accelerator. A probe gathers the full
parameters and gradients independently of lightning-viz at the logging steps; rank 0 saves them.

On CPU the job runs through :class:`CPUFSDPStrategy`, which lifts what keeps Lightning 2.6's
``FSDPStrategy`` off the CPU and nothing else (see its docstring). On GPUs it runs ``FSDPStrategy`` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_viz.core import sharding
from tests.distributed.worker import build_callbacks, instrument, start_worker
from tests.helpers import RandomImages, TinyCNN


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` with its two CUDA-only spots lifted, so that torch FSDP1 runs on gloo.

    1. The accelerator connector refuses ``FSDPStrategy`` without a GPU, but it checks
       ``type(strategy) is FSDPStrategy``: any subclass passes.
    2. ``_setup_model`` wraps with ``device_id=root_device.index``, which is ``None`` on the CPU, and torch
       FSDP1 then asks for an accelerator; here the model is wrapped with ``device_id=cpu`` (the arguments
       are otherwise those of ``FSDPStrategy``) and handed to the parent, which finds it already wrapped.
    3. A ``device_mesh`` given as a shape is built with ``"cuda"``; here it is built with ``"cpu"``.

    Everything else (launch, process group, optimizer set-up, the training loop) is ``FSDPStrategy``'s.
    """

    def setup_environment(self) -> None:
        shape = self.kwargs.pop("device_mesh", None) if self.root_device.type == "cpu" else None
        super().setup_environment()
        if shape is not None:
            from torch.distributed.device_mesh import init_device_mesh

            self.kwargs["device_mesh"] = init_device_mesh("cpu", tuple(shape))

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type == "cpu" and not any(
            isinstance(m, FullyShardedDataParallel) for m in model.modules()
        ):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            self.kwargs.pop("auto_wrap_policy", None)  # applied above
        return super()._setup_model(model)


def flat_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """The ``FlatParameter``s (``use_orig_params=False``) among ``module``'s parameters, by name."""
    return {n: p for n, p in module.named_parameters() if getattr(p, "_is_flat_param", False)}


class FullValues(Callback):
    """At the given steps, every rank gathers the full parameters and gradients; rank 0 saves them.

    Independent of lightning-viz: ``summon_full_params`` (FSDP's own all-gather) gives the full parameters,
    and their gradients with ``use_orig_params=True``. With ``use_orig_params=False`` the gradient of a
    ``FlatParameter`` is gathered with ``all_gather`` of every rank's padded shard and cut to the unpadded
    size; its weights are the full original parameters concatenated in the order FSDP flattened them.
    """

    def __init__(self, steps: list[int], out: Path) -> None:
        self.steps, self.out, self.seen = set(steps), out, set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step not in self.steps or step in self.seen:
            return
        self.seen.add(step)
        root = trainer.strategy.model
        flats = flat_params(pl_module)
        arrays: dict[str, np.ndarray] = {}
        for name, flat in flats.items():  # before unsharding: the local padded gradient shards
            shard = flat.grad.detach().clone()
            parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, shard)
            arrays[f"gradients/{name}"] = torch.cat(parts)[: sum(flat._numels)].numpy()
        orig = not flats
        # `.numpy()` on an unsharded view would pin its storage (FSDP frees it on exit): copy first.
        with FullyShardedDataParallel.summon_full_params(root, with_grads=orig, writeback=False):
            full = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            grads = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }
        if orig:
            arrays.update({f"weights/{n}": v.cpu().numpy() for n, v in full.items()})
            arrays.update({f"gradients/{n}": v.cpu().numpy() for n, v in grads.items()})
        else:
            by_suffix = {n.replace("_fsdp_wrapped_module.", ""): v for n, v in full.items()}
            for name, flat in flats.items():
                prefix = name.rpartition(".")[0].replace("_fsdp_wrapped_module", "").strip(".")
                keys = [f"{prefix}.{fqn}" if prefix else fqn for fqn in flat._fqns]
                arrays[f"weights/{name}"] = torch.cat([by_suffix[k].reshape(-1) for k in keys]).cpu().numpy()
        if trainer.global_rank == 0:  # tags carry the names without FSDP's wrapper prefix
            arrays = {sharding.clean_name(k): v for k, v in arrays.items()}
            np.savez(self.out / f"params_rank0_step{step:06d}.npz", **arrays)


def make_strategy(spec: dict) -> FSDPStrategy:
    kwargs: dict = {
        "sharding_strategy": spec.get("sharding_strategy", "FULL_SHARD"),
        "use_orig_params": spec.get("use_orig_params", True),
    }
    if spec.get("auto_wrap", True):
        kwargs["auto_wrap_policy"] = {nn.Conv2d, nn.Linear}
    if spec.get("mesh"):
        kwargs["device_mesh"] = tuple(spec["mesh"])
    cls = CPUFSDPStrategy if spec.get("accelerator", "cpu") == "cpu" else FSDPStrategy
    return cls(**kwargs)


def main() -> None:
    spec, out, counter = start_worker()
    callbacks = build_callbacks(spec)
    for cb in callbacks:
        instrument(cb, counter, [], [])
    trainer = Trainer(
        default_root_dir=str(out),
        accelerator=spec.get("accelerator", "cpu"),
        devices=spec.get("devices", 2),
        strategy=make_strategy(spec),
        max_epochs=spec.get("max_epochs", 1),
        callbacks=[FullValues(spec.get("probe_steps", []), out), *callbacks],
        logger=TensorBoardLogger(str(out), name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=spec.get("limit_val_batches"),
    )
    trainer.fit(
        TinyCNN(n_classes=spec.get("n_classes", 4)),
        datamodule=RandomImages(n=spec.get("n", 32), batch_size=spec.get("batch_size", 4)),
    )
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "collectives": counter.counts,
        "strategy": type(trainer.strategy).__name__,
        "root": type(trainer.strategy.model).__name__,
    }
    (out / f"result_rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Entry point of the real multi-process jobs the distributed tests run.

Run as ``python tests/distributed/worker.py SPEC.json``. Lightning's DDP launcher re-executes this script for
the other ranks, so everything happens under ``if __name__ == "__main__"``. The spec says which strategy,
which callbacks and what to record; rank zero (and, where asked, every rank) writes JSON results.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import RandomImages, TinyCNN

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "gather",
    "scatter",
    "barrier",
    "all_to_all",
    "reduce_scatter_tensor",
    "all_gather_into_tensor",
)


class CountCollectives:
    """Counts every torch.distributed collective, attributed to whichever callback hook is running."""

    def __init__(self) -> None:
        self.active: str | None = None
        self.counts: dict[str, int] = {}
        for name in COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(getattr(dist, name), name))

    def _wrap(self, fn, name):
        def wrapper(*args, **kwargs):
            if self.active is not None:
                self.counts[self.active] = self.counts.get(self.active, 0) + 1
            return fn(*args, **kwargs)

        return wrapper


def instrument(callback: Callback, counter: CountCollectives, steps: list[int], trainer_ref: list) -> None:
    """Attribute collectives issued inside the callback's hooks to ``<hook>@<global_step>``."""
    for hook in (
        "on_before_optimizer_step",
        "on_train_batch_end",
        "on_train_batch_start",
        "on_train_epoch_end",
        "on_validation_end",
        "on_fit_start",
        "on_train_start",
        "on_fit_end",
        "on_validation_epoch_end",
        "on_train_end",
    ):
        original = getattr(callback, hook)

        def wrapped(*args, _orig=original, _hook=hook, **kwargs):
            trainer = args[0]
            counter.active = f"{type(callback).__name__}.{_hook}@{trainer.global_step}"
            try:
                return _orig(*args, **kwargs)
            finally:
                counter.active = None

        setattr(callback, hook, wrapped)


class ShardedCNN(TinyCNN):
    """TinyCNN with FSDP2 ``fully_shard`` applied per layer and at the root."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for m in (self.conv1, self.conv2, self.fc):
            fully_shard(m)
        fully_shard(self)


class ParamProbe(Callback):
    """Records full parameter and gradient values (gathered from shards on every rank) at given steps."""

    def __init__(self, steps: list[int], out: Path) -> None:
        self.steps = set(steps)
        self.out = out
        self.seen: set[int] = set()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step not in self.steps or step in self.seen:
            return
        self.seen.add(step)
        arrays = {}
        for name, p in pl_module.named_parameters():
            w = p.full_tensor() if hasattr(p, "full_tensor") else p  # collective on every rank
            arrays[f"weights/{name}"] = w.detach().cpu().numpy().copy()
            if p.grad is not None:
                g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                arrays[f"gradients/{name}"] = g.detach().cpu().numpy().copy()
        rank = trainer.global_rank
        np.savez(self.out / f"params_rank{rank}_step{step:06d}.npz", **arrays)


class SlowData(Callback):
    """Sleeps on one rank before every training batch (as a slow data loader would), before the callbacks."""

    def __init__(self, rank: int, seconds: float) -> None:
        self.rank, self.seconds = rank, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank:
            time.sleep(self.seconds)


class PerturbReplica(Callback):
    """On one rank at one step, after the optimizer step, changes one weight: a replica that differs."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] += 1e-3


class ActivationProbe(Callback):
    """Each rank's leaf-module outputs at given steps, copied in its own forward hooks, saved as
    acts_rank<R>_step<S>.npz (the independent record the pooled activation histograms are checked on)."""

    def __init__(self, steps: list[int], out: Path) -> None:
        self.steps, self.out, self.handles, self.kept = set(steps), out, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step not in self.steps:
            return
        self.kept = {}

        def make(name):
            def hook(module, args, output):
                self.kept.setdefault(name, []).append(output.detach().clone().reshape(-1).numpy())

            return hook

        for name, m in pl_module.named_modules():
            if name and not list(m.children()):
                self.handles.append(m.register_forward_hook(make(name)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.handles:
            return
        for h in self.handles:
            h.remove()
        self.handles = []
        arrays = {k: np.concatenate(v) for k, v in self.kept.items()}
        np.savez(self.out / f"acts_rank{trainer.global_rank}_step{trainer.global_step - 1:06d}.npz", **arrays)


class LossProbe(Callback):
    """Each rank's own training loss at every step, saved as loss_rank<R>.json at fit end."""

    def __init__(self, out: Path) -> None:
        self.out, self.losses = out, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step - 1] = float(loss)

    def on_fit_end(self, trainer, pl_module) -> None:
        (self.out / f"loss_rank{trainer.global_rank}.json").write_text(json.dumps(self.losses))


class ValLossProbe(Callback):
    """Each rank's per-example validation cross-entropy of every epoch, by the test's own forward pass, saved
    as ``val_losses_rank{r}_epoch{e}.npz`` (losses, targets) at the epoch's end."""

    def __init__(self, out: Path) -> None:
        self.out, self.losses, self.targets = out, [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking:
            return
        x, y = batch
        with torch.no_grad():
            self.losses.append(torch.nn.functional.cross_entropy(pl_module(x), y, reduction="none"))
        self.targets.append(y)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        name = f"val_losses_rank{trainer.global_rank}_epoch{trainer.current_epoch}.npz"
        np.savez(
            self.out / name, losses=torch.cat(self.losses).numpy(), targets=torch.cat(self.targets).numpy()
        )
        self.losses, self.targets = [], []


class EmbeddingProbe(Callback):
    """Each rank's own penultimate features (the input of ``fc``) for the first 8 validation examples, in eval
    mode, at each epoch end (before the visualisation callbacks): ``embedding_rank{r}_epoch{e}.npz``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        x, y = (t[:8] for t in trainer.val_dataloaders.dataset.tensors)
        got: list[torch.Tensor] = []
        handle = pl_module.fc.register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            out = pl_module(x)
        pl_module.train(was)
        handle.remove()
        name = f"embedding_rank{trainer.global_rank}_epoch{trainer.current_epoch}.npz"
        np.savez(self.out / name, features=got[0].numpy(), labels=y.numpy(), predicted=out.argmax(-1).numpy())


class SaliencyProbe(Callback):
    """Each rank's own Grad-CAM of ``conv2`` for the first 4 validation examples and their predicted classes
    (a hook, torch.autograd.grad, the gradient-weighted channel sum, bilinear upsampling), in eval mode, at
    each epoch end before the visualisation callbacks: ``saliency_rank{r}_epoch{e}.npz``. Every rank runs it
    (a sharded model's forward and backward need them all)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        x = trainer.val_dataloaders.dataset.tensors[0][:4].clone().requires_grad_(True)
        acts: list[torch.Tensor] = []
        handle = pl_module.conv2.register_forward_hook(lambda m, a, o: acts.append(o))
        was = pl_module.training
        pl_module.eval()
        with torch.enable_grad():
            out = pl_module(x)
            target = out.argmax(1)
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), acts[0])
        pl_module.train(was)
        handle.remove()
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam.detach(), size=x.shape[2:], mode="bilinear")[:, 0]
        name = f"saliency_rank{trainer.global_rank}_epoch{trainer.current_epoch}.npz"
        np.savez(self.out / name, maps=cam.numpy(), target=target.numpy())


class SlowRank(Callback):
    """Sleeps on one rank at logging steps, before the visualisation callbacks run."""

    def __init__(self, rank: int, steps: list[int], seconds: float) -> None:
        self.rank, self.steps, self.seconds = rank, set(steps), seconds

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_rank == self.rank and trainer.global_step in self.steps:
            time.sleep(self.seconds)


def build_callbacks(spec: dict) -> list[Callback]:
    import lightning_viz as lv

    every = spec.get("every_n_steps", 2)
    table = {
        "summary": lambda: lv.ModelSummaryCallback(),
        "weights": lambda: lv.WeightHistogramCallback(every_n_steps=every, bins=16),
        "activations": lambda: lv.ActivationMapCallback(every_n_epochs=1, sample_size=4),
        "curves": lambda: lv.CurvePlotCallback(),
        "rankview": lambda: lv.RankViewCallback(every_n_steps=every),
        "acthist": lambda: lv.ActivationHistogramCallback(every_n_steps=every, bins=16, gradients=True),
        "weightpic": lambda: lv.WeightPictureCallback(every_n_epochs=None, every_n_steps=every),
        "predgrid": lambda: lv.PredictionGridCallback(sample_size=4, worst_k=5),
        "embedding": lambda: lv.EmbeddingCallback(sample_size=8),
        "graph": lambda: lv.ModelGraphCallback(),
        "saliency": lambda: lv.SaliencyCallback(sample_size=4),
    }
    names = spec.get("callbacks", ["summary", "weights", "activations", "curves"])  # the core four
    return [table[n]() for n in names]


def start_worker() -> tuple[dict, Path, CountCollectives]:
    """A worker's common start: a hang dumps tracebacks and exits; the spec named on the command line is
    read, its output folder made and the seed set. Returns the spec, the output folder and a counter."""
    faulthandler.dump_traceback_later(float(os.environ.get("VIZ_WORKER_TIMEOUT", "240")), exit=True)
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(spec.get("seed", 0), workers=True)
    return spec, out, CountCollectives()


def main() -> None:
    spec, out, counter = start_worker()

    strategy = spec.get("strategy", "ddp")
    if strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy_obj = ModelParallelStrategy()
        model = ShardedCNN()
    else:
        strategy_obj = strategy
        model = TinyCNN()
    callbacks = build_callbacks(spec)
    steps = spec.get("probe_steps", [])
    extra: list[Callback] = []
    if spec.get("slow_rank") is not None:
        extra.append(
            SlowRank(spec["slow_rank"], spec.get("slow_steps", [0, 2]), spec.get("slow_seconds", 3.0))
        )
    if steps:
        extra.append(ParamProbe(steps, out))
    if spec.get("slow_data_rank") is not None:
        extra.append(SlowData(spec["slow_data_rank"], spec.get("slow_data_seconds", 0.05)))
    if spec.get("perturb_rank") is not None:
        extra.append(PerturbReplica(spec["perturb_rank"], spec.get("perturb_step", 4)))
    if spec.get("activation_probe_steps"):
        extra.append(ActivationProbe(spec["activation_probe_steps"], out))
    if spec.get("loss_probe"):
        extra.append(LossProbe(out))
    if spec.get("val_loss_probe"):
        extra.append(ValLossProbe(out))
    if spec.get("embedding_probe"):
        extra.append(EmbeddingProbe(out))
    if spec.get("saliency_probe"):
        extra.append(SaliencyProbe(out))
    for cb in callbacks:
        instrument(cb, counter, steps, [])

    trainer = Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=spec.get("devices", 2),
        num_nodes=spec.get("num_nodes", 1),
        strategy=strategy_obj,
        max_epochs=spec.get("max_epochs", 2),
        callbacks=extra + callbacks,
        logger=TensorBoardLogger(str(out), name="tb", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        use_distributed_sampler=True,
    )
    data = RandomImages(n=spec.get("n", 64), batch_size=spec.get("batch_size", 8))
    trainer.fit(model, datamodule=data)
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "collectives": counter.counts,
        "log_dir": trainer.log_dir,
    }
    (out / f"result_rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))
    # Processes started by hand (the multi-node test) own their process group: tear it down before exit,
    # or gloo's threads may be destroyed while joinable ("terminate called without an active exception").
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

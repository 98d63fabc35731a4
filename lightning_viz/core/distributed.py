"""Everything that touches ``torch.distributed`` or asks "which rank am I?" lives here.

Rules this module enforces for the rest of the package:

* every rank calls the same collectives in the same order: :func:`reduce_values` packs all values that
  share a reduction into one buffer, so a whole logging step costs one collective per reduction kind;
* a failure on one rank never leaves another rank waiting: callers pass ``failed=True`` and still take part
  in the collective, and every rank learns that someone failed;
* only emission is gated to rank zero (:func:`is_emitter`), never capture or reduction.

Full-parameter views of sharded parameters (DTensor, FSDP1) are in :mod:`lightning_viz.core.sharding`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist

Reduction = Literal["sum", "max", "min", "mean", "rank0"]
REDUCTIONS: tuple[str, ...] = ("sum", "max", "min", "mean", "rank0")


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


_destroy_registered = False


def destroy_group_at_exit() -> None:
    """Destroy the default process group at interpreter exit, while the interpreter is still whole.

    Lightning does that for NCCL only. A gloo group left alive until the interpreter finalizes has worker
    threads that may still drop a tensor there, which takes the GIL during finalization: the process then
    aborts with ``terminate called without an active exception`` after a successful fit (pytorch/pytorch
    PR 179291 describes it). Registered once, by the ``lightning-viz`` command for every run (with or without
    callbacks) and by the first callback set up in a distributed run; harmless when no group exists.
    """
    global _destroy_registered
    if _destroy_registered:
        return
    _destroy_registered = True
    import atexit

    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # at exit: nothing left to protect
            pass
        # What still holds the groups (an FSDP2 device mesh in a reference cycle with the trainer and the
        # model) goes now, while the interpreter is whole, not during its finalization
        import gc

        gc.collect()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def global_rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    if is_initialized():
        return dist.get_rank()
    # Before the process group exists (e.g. in __init__), fall back to the launcher's variables.
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def launcher_rank_zero() -> bool:
    """Before any process group exists: whether the launcher's variables make this process global rank
    zero (``RANK`` or ``SLURM_PROCID`` when set; else node rank and local rank both 0, so that local rank 0
    of another node under Lightning's own launcher, which sets ``NODE_RANK`` and ``LOCAL_RANK`` only, is
    not taken for it)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK"))


def is_emitter(trainer: Any = None) -> bool:
    """Whether this process writes files and talks to loggers (global rank zero)."""
    if trainer is not None:
        return bool(trainer.is_global_zero)
    return global_rank() == 0


_ROOT_DEVICE: torch.device | None = None  # the running strategy's root device (see `use_root_device`)


def use_root_device(device: torch.device | None) -> None:
    """Run NCCL collectives on ``device``: the strategy's root device (``trainer.strategy.root_device``),
    which the callbacks pass at setup. ``torch.cuda.current_device()`` is not that device where a launcher
    leaves every worker's current device at ``cuda:0`` (Ray Train; ray PR #42751): then every rank's
    collectives would run on GPU 0 and hang."""
    global _ROOT_DEVICE
    _ROOT_DEVICE = device


def collective_device(reference: torch.Tensor | None = None) -> torch.device:
    """The device collectives run on: for NCCL the strategy's root device (or the reference tensor's CUDA
    device, or the current CUDA device, in that order), else the reference tensor's device or CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        if _ROOT_DEVICE is not None and _ROOT_DEVICE.type == "cuda":
            return _ROOT_DEVICE
        if reference is not None and reference.device.type == "cuda":
            return reference.device
        return torch.device("cuda", torch.cuda.current_device())
    if reference is not None and reference.device.type != "meta":
        return reference.device
    return torch.device("cpu")


class CollectiveCounter:
    """Counts collectives issued by this module (used by tests and benchmarks to prove the cost)."""

    count: int = 0

    @classmethod
    def reset(cls) -> None:
        cls.count = 0


def _all_reduce(buf: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    CollectiveCounter.count += 1
    dist.all_reduce(buf, op=op)
    return buf


def gather_rows(
    row: torch.Tensor, *, failed: bool = False, device: torch.device | None = None
) -> tuple[torch.Tensor, bool]:
    """Every rank's ``row`` (a 1-D float tensor of the same length everywhere), in rank order: one
    all-gather when distributed, with this rank's failure riding along as an extra value.

    Returns:
        ``[world_size, len(row)]`` float64 on the host, and whether the capture failed on any rank.
    """
    dev = device or collective_device(row)
    flat = torch.cat(
        [
            row.detach().reshape(-1).to(dev, torch.float64),
            torch.tensor([float(failed)], device=dev, dtype=torch.float64),
        ]
    )
    if not is_initialized() or world_size() == 1:
        return flat[:-1].cpu().reshape(1, -1), failed
    CollectiveCounter.count += 1
    parts = [torch.empty_like(flat) for _ in range(world_size())]
    dist.all_gather(parts, flat)
    rows = torch.stack(parts).cpu()
    return rows[:, :-1], bool((rows[:, -1] > 0).any())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor``'s shards all-gathered (one collective, so every rank must call it
    alike), any other tensor as it is."""
    from lightning_viz.core import sharding

    if sharding.is_sharded(t):
        CollectiveCounter.count += 1
        return t.full_tensor()
    return t


def owns_its_batch(trainer: Any) -> bool:
    """Whether this rank's training batch is its own (to be counted once when data is pooled over ranks).

    Under data parallelism every rank draws its own batch. When fewer data-parallel replicas than ranks
    exist (tensor parallelism in ``ModelParallelStrategy``: the ranks of one tensor-parallel group share a
    batch), only the lowest rank of each group that shares a batch owns it. Read from the strategy's
    sampler arguments (``num_replicas``, ``rank``): one all-gather of every rank's sampler rank, so call it
    on every rank alike (at fit start).
    """
    if not is_initialized() or world_size() == 1:
        return True
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    replicas = kwargs.get("num_replicas", world_size())
    if replicas >= world_size():
        return True
    mine = float(kwargs.get("rank", global_rank()))
    rows, _ = gather_rows(torch.tensor([mine]))
    ranks = rows[:, 0].tolist()
    return ranks.index(mine) == global_rank()


def reduce_values(
    values: Mapping[str, torch.Tensor],
    reductions: Mapping[str, Reduction],
    *,
    failed: bool = False,
    device: torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """Reduce a record of tensors across ranks, with at most two collectives.

    Values whose reduction is ``sum`` or ``mean`` travel in one SUM all-reduce; ``max`` and ``min`` travel
    together in one MAX all-reduce (``min`` negated); the failure flag rides in one of them. ``rank0`` values are
    left as they are: only rank zero emits, so its own value is the result. On a single process nothing is
    communicated and the values come back unchanged.

    Every rank must call this with the same keys and shapes, whatever happened locally. A rank whose
    capture failed passes ``failed=True`` and placeholder values of the right shape.

    Args:
        values: name -> tensor (any shape) to reduce.
        reductions: name -> one of ``sum``, ``max``, ``min``, ``mean``, ``rank0``.
        failed: whether this rank's capture failed.
        device: device to run the collectives on (defaults to :func:`collective_device`).

    Returns:
        The reduced values (float64 for reduced keys, on the collective device) and whether any rank
        reported a failure.
    """
    for key in values:
        if reductions.get(key) not in REDUCTIONS:
            raise ValueError(f"reduction for {key!r} is {reductions.get(key)!r}; valid: {REDUCTIONS}")
    ws = world_size()
    if ws == 1:
        return dict(values), failed

    keys = sorted(values)
    first = next((values[k] for k in keys), None)
    dev = device or collective_device(first)
    out: dict[str, torch.Tensor] = {k: values[k] for k in keys if reductions[k] == "rank0"}
    flag = torch.tensor([1.0 if failed else 0.0], dtype=torch.float64, device=dev)
    sum_keys = [k for k in keys if reductions[k] in ("sum", "mean")]
    mm_keys = [k for k in keys if reductions[k] in ("max", "min")]
    any_failed = failed

    # The failure flag rides along with the MAX buffer when there is one (max of flags = "any rank failed"),
    # else with the SUM buffer; so a call costs one collective per reduction kind present, at least one.
    if mm_keys:
        parts = []
        for k in mm_keys:
            v = values[k].detach().reshape(-1).to(dev, torch.float64)
            parts.append(-v if reductions[k] == "min" else v)
        parts.append(flag)
        maxed = _all_reduce(torch.cat(parts), dist.ReduceOp.MAX)
        any_failed = bool(maxed[-1].item() > 0)
        offset = 0
        for k in mm_keys:
            n = values[k].numel()
            chunk = maxed[offset : offset + n].reshape(values[k].shape)
            out[k] = -chunk if reductions[k] == "min" else chunk
            offset += n

    if sum_keys or not mm_keys:
        parts = [values[k].detach().reshape(-1).to(dev, torch.float64) for k in sum_keys]
        if not mm_keys:
            parts.append(flag)
        summed = _all_reduce(torch.cat(parts), dist.ReduceOp.SUM)
        if not mm_keys:
            any_failed = bool(summed[-1].item() > 0)
        offset = 0
        for k in sum_keys:
            n = values[k].numel()
            chunk = summed[offset : offset + n].reshape(values[k].shape)
            out[k] = chunk / ws if reductions[k] == "mean" else chunk
            offset += n
    return out, any_failed


def agree_any(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one rank (one collective when distributed)."""
    if world_size() == 1:
        return flag
    buf = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device or collective_device())
    return bool(_all_reduce(buf, dist.ReduceOp.MAX).item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (identity on one process)."""
    if world_size() == 1:
        return obj
    CollectiveCounter.count += 1
    box = [obj if global_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank (``[obj]`` on one process)."""
    if world_size() == 1:
        return [obj]
    CollectiveCounter.count += 1
    box: list[Any] = [None] * world_size()
    dist.all_gather_object(box, obj)
    return box


def payload_size(obj: Any) -> int:
    """Bytes an object costs to broadcast (used to keep object collectives small)."""
    return len(pickle.dumps(obj))

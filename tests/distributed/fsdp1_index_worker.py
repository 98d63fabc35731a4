"""One rank of a raw torch FSDP1 job (no Lightning) whose model is wrapped before lightning-viz could note it.

Run as ``python tests/distributed/fsdp1_index_worker.py OUT_DIR`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set, once per rank. The module-registration hook is removed before
wrapping, as if the model had been wrapped before ``lightning_viz`` was imported: the index must then find
the FSDP units with its one heap scan. Rank 0 writes ``result.json``.
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning_viz.core import sharding, stats


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))  # 35 + 7 + 21 + 3 = 66 parameters


def exact(named: list[tuple[str, nn.Parameter]], root: nn.Module, flat: bool) -> dict:
    """Histograms and sizes that lightning-viz gives, against numpy on the values FSDP gathers itself."""
    tensors = [p for _, p in named] + [p.grad for _, p in named]
    clean = [n.replace("_fsdp_wrapped_module.", "") for n, _ in named]  # as named inside summon_full_params
    names = [f"weights/{n}" for n in clean] + [f"gradients/{n}" for n in clean]
    hs, failed = stats.histogram_set(tensors, names, 8)
    with FullyShardedDataParallel.summon_full_params(root, with_grads=not flat, writeback=False):
        full = {f"weights/{n}": p.detach().clone().reshape(-1) for n, p in root.named_parameters()}
        if not flat:
            full.update({f"gradients/{n}": p.grad.clone().reshape(-1) for n, p in root.named_parameters()})
    if flat:  # the FlatParameter: its original parameters, concatenated in FSDP's order
        full = {f"weights/{clean[0]}": torch.cat(list(full.values()))}
    ok = {}
    for i, name in enumerate(names):
        if name in full:
            values = full[name].numpy().astype(np.float64)
            expected, _ = np.histogram(values, bins=hs.edges[i])
            ok[name] = bool(np.array_equal(expected, hs.counts[i]) and hs.numel[i] == values.size)
    return {
        "failed": failed,
        "numel": [int(n) for n in hs.numel],
        "full_numel": [sharding.full_numel(p) for _, p in named],
        "original_numels": [sharding.original_numels(n, p) for n, p in named],
        "exact": ok,
    }


def main() -> None:
    faulthandler.dump_traceback_later(120, exit=True)
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    result: dict = {}
    plain = torch.ones(3)
    result["plain_view"] = [sharding.local_view(plain)[1], sharding.full_numel(plain)]
    result["scanned_after_plain"] = sharding._FSDP1.scanned  # plain tensors never scan the heap
    sharding._HOOK.remove()  # as if both models were wrapped before lightning_viz was imported
    roots = {
        orig: FullyShardedDataParallel(
            model(),
            use_orig_params=orig,
            sharding_strategy=ShardingStrategy.FULL_SHARD,
            device_id=torch.device("cpu"),
        )
        for orig in (True, False)
    }
    assert not sharding._FSDP1.pending
    for orig, root in roots.items():
        torch.manual_seed(dist.get_rank())
        root(torch.randn(4, 5)).sum().backward()
        result[f"orig_params={orig}"] = exact(list(root.named_parameters()), root, flat=not orig)
    result["scanned"] = sharding._FSDP1.scanned
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    # The FSDP roots still hold the group: freed now, while the interpreter is whole, or gloo's threads may be
    # destroyed during finalization ("terminate called without an active exception", seen once in CI; see
    # lightning_viz.core.distributed.destroy_group_at_exit)
    roots.clear()
    import gc

    gc.collect()


if __name__ == "__main__":
    main()

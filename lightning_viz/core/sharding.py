"""Full-parameter views of sharded parameters: what part of a parameter this rank holds, and its full size.

No collectives here (they are in :mod:`lightning_viz.core.distributed`); this module only says which local
piece each rank contributes to a global sum, and under which name the user knows the parameter.

Sharded parameters are reduced as the full parameter: :func:`local_view` returns the local shard and whether
this rank must contribute its counts, so that replicated copies are counted once and shards are summed, and
:func:`full_numel` gives the full size. Two kinds of sharding are recognised:

* ``DTensor`` parameters and gradients (FSDP2's ``fully_shard``, ``ModelParallelStrategy``);
* FSDP1 (``torch.distributed.fsdp.FullyShardedDataParallel``, Lightning's ``FSDPStrategy``), whose parameters
  are plain tensors: 1-D views of this rank's piece of a ``FlatParameter`` (``use_orig_params=True``), or
  the padded ``FlatParameter`` shards themselves (``use_orig_params=False``). Nothing on such a tensor leads
  back to its FSDP unit, so this module notes every FSDP1 module when it is built (a global
  ``nn.Module`` registration hook that only records a weak reference) and indexes its parameters, weakly
  keyed, on the next lookup; modules built before this module was imported are found by one scan of the
  heap, at most once per process. Gradients are matched to their unit through the storage of the
  ``FlatParameter``'s gradient, which they share.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from lightning_viz.core.distributed import global_rank, world_size

try:  # torch >= 2.4 ships DTensor publicly; older builds may not.
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a distributed tensor (e.g. an FSDP2 parameter or gradient)."""
    return DTensor is not None and isinstance(t, DTensor)


# ----------------------------------------------------------------------------------------------- FSDP1
_FSDP_WRAPPED = "_fsdp_wrapped_module"  # the attribute FSDP1 sets to the module it wraps
_REPLICATED = ("NO_SHARD",)
_HYBRID = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")


def is_fsdp1_wrapped(module: nn.Module) -> bool:
    """Whether ``module`` or one of its submodules is an FSDP1 unit (Lightning's ``FSDPStrategy``).

    A forward pass of our own through such a model (the model summary's) would run a child unit before the
    root and break FSDP1's root detection for the training step that follows.
    """
    return any(hasattr(m, _FSDP_WRAPPED) for m in module.modules())


def clean_name(name: str) -> str:
    """A parameter or module name as the user wrote the model: without the wrapper prefixes FSDP1 and
    activation checkpointing insert, nor the ``_orig_mod`` of a ``torch.compile``d submodule."""
    name = name.replace(f"{_FSDP_WRAPPED}.", "").replace("_checkpoint_wrapped_module.", "")
    return name.replace("._orig_mod", "").removeprefix("_orig_mod.").removeprefix("_orig_mod")


@dataclass(frozen=True)
class _Unit:
    """One FSDP1 ``FlatParameter`` as seen from this rank.

    Attributes:
        flat: weak reference to the ``FlatParameter``.
        contributes: whether this rank adds its local pieces to global sums (see :func:`local_view`).
        segments: ``(offset, numel)`` of each original parameter's piece in the local shard, in order
            (padding excluded).
        sharded_numel: elements of the local shard, padding included.
        numel: elements of all the original parameters together (the unsharded size without padding).
    """

    flat: weakref.ReferenceType[torch.Tensor]
    contributes: bool
    segments: tuple[tuple[int, int], ...]
    sharded_numel: int
    numel: int

    def valid(self, t: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The original parameters' part of a local ``FlatParameter`` shard (or of its gradient)."""
        if t.numel() != self.sharded_numel:  # unsharded, as inside forward and backward: taken as a replica
            return t.reshape(-1)[: self.numel], global_rank() == 0
        pieces = [(o, n) for o, n in self.segments if n > 0]
        end = 0
        for offset, n in pieces:
            if offset != end:  # alignment padding between pieces: copy the pieces out
                return torch.cat([t[o : o + m] for o, m in pieces]), self.contributes
            end += n
        return t[:end], self.contributes  # contiguous from 0: a view


@dataclass(frozen=True)
class _Param:
    """An FSDP1-managed parameter: its unit, its full size, and whether it is the ``FlatParameter``."""

    unit: _Unit
    numel: int
    is_flat: bool
    names: tuple[tuple[str, int], ...] = ()  # for a FlatParameter: (name, numel) of each original parameter


class _Fsdp1Index:
    """FSDP1 parameters of this process, weakly keyed, built from the FSDP modules noted at construction."""

    def __init__(self) -> None:
        self.pending: list[weakref.ReferenceType[nn.Module]] = []
        self.params: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Parameter -> _Param
        self.units: WeakIdKeyDictionary = WeakIdKeyDictionary()  # FlatParameter -> _Unit
        self.by_grad: dict[int, _Unit] = {}  # data_ptr of a FlatParameter gradient's storage -> unit
        self.scanned = False

    def note(self, module: nn.Module) -> None:
        """Remember an FSDP1 module (called while it is being built; indexed at the next lookup)."""
        if len(self.pending) > 1024:
            self.pending = [r for r in self.pending if r() is not None]
        self.pending.append(weakref.ref(module))

    def _drain(self) -> None:
        pending, self.pending = self.pending, []
        for ref in pending:
            module = ref()
            if module is not None:
                self._add(module)

    def _add(self, module: nn.Module) -> None:
        handle = getattr(module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if flat is None or flat in self.units:
            return
        strategy = handle._sharding_strategy.name
        if strategy in _HYBRID:
            contributes = module._inter_node_pg.rank() == 0  # the first replica of each shard
        elif strategy in _REPLICATED:
            contributes = global_rank() == 0
        else:  # FULL_SHARD, SHARD_GRAD_OP: the pieces on all ranks make up the parameter
            contributes = True
        segments = tuple(
            (i.offset_in_shard, i.numel_in_shard) if i.in_shard else (0, 0) for i in flat._shard_param_infos
        )
        unit = _Unit(
            weakref.ref(flat), contributes, segments, int(flat._sharded_size.numel()), sum(flat._numels)
        )
        self.units[flat] = unit
        if flat._params is not None:  # use_orig_params=True: the original Parameters are what users see
            for p, n in zip(flat._params, flat._numels):
                self.params[p] = _Param(unit, int(n), False)
        else:
            names = tuple((fqn, int(n)) for fqn, n in zip(flat._fqns, flat._numels))
            self.params[flat] = _Param(unit, unit.numel, True, names)

    def _scan(self) -> None:
        """Index FSDP1 modules built before this module was imported (one heap scan per process)."""
        self.scanned = True
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel
        except ImportError:  # pragma: no cover - depends on the torch build
            return
        for obj in gc.get_objects():
            if issubclass(type(obj), FullyShardedDataParallel):
                self._add(obj)

    def param(self, t: torch.Tensor) -> _Param | None:
        """The FSDP1 record of parameter ``t``, or ``None`` for any other tensor."""
        if self.pending:
            self._drain()
        info = self.params.get(t)
        if info is None and not self.scanned and _marked(t):
            self._scan()
            info = self.params.get(t)
        return info

    def grad(self, t: torch.Tensor) -> tuple[_Unit, bool] | None:
        """The unit whose ``FlatParameter`` gradient ``t`` is (``True``) or is a view of (``False``)."""
        if self.pending:
            self._drain()
        if not self.units or t.device.type == "meta":
            return None
        ptr = t.untyped_storage().data_ptr()
        if ptr == 0:
            return None
        for attempt in range(2):
            unit = self.by_grad.get(ptr)
            flat = unit.flat() if unit is not None else None
            g = flat.grad if flat is not None else None
            if unit is not None and g is not None and g.untyped_storage().data_ptr() == ptr:
                return unit, t is g
            if attempt == 0:  # gradients are new tensors after zero_grad: refresh the map, once per miss
                self.by_grad = {}
                for flat_, unit_ in self.units.items():
                    if flat_.grad is not None and flat_.grad.device.type != "meta":
                        self.by_grad[flat_.grad.untyped_storage().data_ptr()] = unit_
        return None


def _marked(t: torch.Tensor) -> bool:
    """Whether FSDP1 flattened ``t`` (an original parameter) or made it (a ``FlatParameter``)."""
    return bool(getattr(t, "_fsdp_flattened", False) or getattr(t, "_is_flat_param", False))


_FSDP1 = _Fsdp1Index()


def _on_submodule(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    """Global ``nn.Module`` registration hook: note FSDP1 modules as they wrap their module."""
    if name == _FSDP_WRAPPED:
        _FSDP1.note(module)


_HOOK = nn.modules.module.register_module_module_registration_hook(_on_submodule)


def local_view(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The part of ``t`` stored on this rank, and whether this rank contributes it to global sums.

    * A ``DTensor`` contributes its local shard when its coordinate is zero along every replicated mesh
      dimension, so that shards are summed once and replicas (as in HSDP) are not counted twice.
    * An FSDP1 parameter, or its gradient, is this rank's piece (1-D, possibly empty) of the full
      parameter; a ``FlatParameter`` (``use_orig_params=False``) and its gradient lose their padding.
      Every rank contributes under ``FULL_SHARD`` and ``SHARD_GRAD_OP``; under ``HYBRID_SHARD`` and
      ``_HYBRID_SHARD_ZERO2`` the ranks of the first replica group do; under ``NO_SHARD`` rank zero does.
      The pieces are those of the sharded state, as between the backward pass and the optimizer step.
    * Any other tensor is a replica under DDP (identical on every rank after the gradient all-reduce), so
      only rank zero contributes; maxima and minima are unaffected by duplicates.

    Args:
        t: a parameter or gradient (plain, FSDP1-managed, or ``DTensor``).

    Returns:
        The local tensor and whether its counts go into the global sums.
    """
    if is_sharded(t):
        local = t.to_local()
        coord = t.device_mesh.get_coordinate()
        if coord is None:  # this rank holds no part of the tensor
            return local.new_empty(0), False
        contributes = all(c == 0 for c, p in zip(coord, t.placements) if not p.is_shard())
        return local, contributes
    info = _FSDP1.param(t)
    if info is not None:
        return info.unit.valid(t) if info.is_flat else (t, info.unit.contributes)
    owner = _FSDP1.grad(t)
    if owner is not None:
        unit, is_flat = owner
        return unit.valid(t) if is_flat else (t, unit.contributes)
    return t, world_size() == 1 or global_rank() == 0  # one process: no launcher variables to read


def full_numel(t: torch.Tensor) -> int:
    """Number of elements of the full (unsharded) parameter ``t`` (padding of FSDP1 shards excluded)."""
    info = None if is_sharded(t) else _FSDP1.param(t)
    return int(t.numel()) if info is None else info.numel  # DTensor.numel() reports the global size


def original_numels(name: str, p: torch.Tensor) -> list[tuple[str, int]]:
    """The original parameters behind ``p`` as ``(name, full numel)`` pairs.

    An FSDP1 ``FlatParameter`` (``use_orig_params=False``) stands for several original parameters: their
    names are its prefix followed by their names inside the wrapped module. Any other parameter is itself.

    Args:
        name: ``p``'s name, as ``named_parameters()`` gives it.
        p: the parameter.

    Returns:
        One ``(name, numel)`` pair per original parameter.
    """
    info = None if is_sharded(p) else _FSDP1.param(p)
    if info is None or not info.is_flat:
        return [(name, full_numel(p))]
    prefix = name.rpartition(".")[0]
    return [(f"{prefix}.{fqn}" if prefix else fqn, n) for fqn, n in info.names]

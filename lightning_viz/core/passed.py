"""What a layer passes on: the tensor a hooked layer hands to the rest of the model.

A layer's statistics are of the tensor its label names: for a convolution or a linear layer, that is the
output of the non-linearity after it (past any normalisation or dropout), whether an activation module or a
functional one (``F.relu`` in ``forward``). :class:`PassedTracker` follows each selected module to that
tensor with forward hooks on the leaf modules and a ``TorchFunctionMode`` that notes which tensors are
computed from a waiting layer's output; :func:`capture_passed` holds it for one forward pass and always
removes every hook. :class:`Passed` is what it reports; :func:`is_activation` and ``ACTIVATION_TYPES`` say
which modules are non-linearities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_viz.core.hooks import modes_kept


def _activation_types() -> tuple[type[nn.Module], ...]:
    import torch.nn.modules.activation as act

    return tuple(
        c
        for c in vars(act).values()
        if isinstance(c, type)
        and issubclass(c, nn.Module)
        and c.__module__ == act.__name__
        and c not in (nn.Module, nn.MultiheadAttention)
    )


ACTIVATION_TYPES = _activation_types()
# Modules that act before the non-linearity (conv -> norm -> ReLU): a layer's statistics look past them.
_PASS_THROUGH = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
        nn.modules.dropout._DropoutNd,
        nn.Identity,
    )
    if t is not None
)


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is one of ``torch.nn``'s activation modules (ReLU, GELU, Tanh, Softmax, ...)."""
    return isinstance(module, ACTIVATION_TYPES)


class Passed:
    """The tensor a hooked layer passes on, and where it was taken.

    Attributes:
        tensor: the tensor itself (not copied).
        source: ``"output"`` (the layer's own output: it is an activation, a block ending in one, or nothing
            ran after it), ``"activation"`` (the output of the activation that follows it, past any
            normalisation or dropout: an activation module, or a functional one such as ``F.relu`` in
            ``forward``, whose ``module`` is then a stand-in of the matching module class and whose
            ``module_name`` is the function, e.g. ``F.relu``), or ``"next_input"`` (the input of the next module that ran: what a
            functional activation such as ``F.relu`` in ``forward`` produced).
        module_name: the module whose output or input it is.
        module: that module (its bounds decide the saturated fraction).
    """

    __slots__ = ("module", "module_name", "source", "tensor")

    def __init__(self, tensor: torch.Tensor, source: str, module_name: str, module: nn.Module) -> None:
        self.tensor, self.source, self.module_name, self.module = tensor, source, module_name, module

    def describe(self, layer: str) -> str:
        """One phrase naming the tensor, for the figure and the data: e.g. ``"output of act1 (ReLU)"``."""
        kind = type(self.module).__name__
        if self.source == "output":
            return f"output of {layer} ({kind})"
        if self.source == "activation":
            return f"output of {self.module_name} ({kind}) after {layer}"
        return f"input of {self.module_name} ({kind}) after {layer}"


def _first(value: Any, depth: int = 0) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if depth < 3 and isinstance(value, (tuple, list)):
        return next((t for t in (_first(v, depth + 1) for v in value) if t is not None), None)
    return None


def _tensors(value: Any, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif depth < 2 and isinstance(value, (tuple, list)):
        for v in value:
            _tensors(v, out, depth + 1)
    elif depth < 2 and isinstance(value, Mapping):
        for v in value.values():
            _tensors(v, out, depth + 1)
    return out


class _Lineage(TorchFunctionMode):
    """Notes, while layers wait, every tensor computed from a waiting layer's output by a torch function
    (``F.relu``, ``x.view``, ``+``, ``F.batch_norm``, ...), so that a layer is resolved only with a tensor
    derived from what it output, never with an unrelated one (a parallel branch, a ResNet shortcut's input)."""

    def __init__(self, tracker: PassedTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tracker = self.tracker
        if tracker._pending and not tracker._ignored():
            make = _FUNCTIONAL.get(func) if not tracker._in_activation else None
            keys = tracker._keys(_first(args)) if make is not None else set()
            t = _first(out)
            if keys and t is not None:  # F.relu(conv(x)) in forward: what the layer passes on
                tracker._resolve(keys, t, "activation", _function_name(func), make(args, kwargs or {}))
            else:
                tracker._note((args, kwargs), out)
        return out


def _functional_activations() -> dict[Any, Callable[[Any, dict[str, Any]], nn.Module]]:
    """Functional activations -> a stand-in of the module that computes the same (its class names the
    non-linearity and its bounds give the saturated fraction)."""
    F = torch.nn.functional
    plain = {
        nn.ReLU: ("relu", "relu_"),
        nn.ReLU6: ("relu6",),
        nn.LeakyReLU: ("leaky_relu", "leaky_relu_"),
        nn.ELU: ("elu", "elu_"),
        nn.SELU: ("selu", "selu_"),
        nn.CELU: ("celu", "celu_"),
        nn.GELU: ("gelu",),
        nn.SiLU: ("silu",),
        nn.Mish: ("mish",),
        nn.Softplus: ("softplus",),
        nn.Tanh: ("tanh", "tanh_"),
        nn.Sigmoid: ("sigmoid", "sigmoid_"),
        nn.Hardsigmoid: ("hardsigmoid",),
        nn.Hardswish: ("hardswish",),
        nn.Softsign: ("softsign",),
    }
    out: dict[Any, Callable[[Any, dict[str, Any]], nn.Module]] = {}
    for cls, names in plain.items():
        for owner in (F, torch, torch.Tensor):
            for name in names:
                fn = getattr(owner, name, None)
                if fn is not None:
                    out[fn] = lambda _a, _k, cls=cls: cls()

    def hardtanh(args: Any, kwargs: dict[str, Any]) -> nn.Module:
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return nn.Hardtanh(float(lo), float(hi))

    for owner in (F, torch):
        for name in ("hardtanh", "hardtanh_"):
            fn = getattr(owner, name, None)
            if fn is not None:
                out[fn] = hardtanh
    return out


def _function_name(func: Any) -> str:
    module = getattr(func, "__module__", "") or ""
    prefix = "F" if module.endswith("functional") else "Tensor" if "Tensor" in repr(func) else "torch"
    return f"{prefix}.{getattr(func, '__name__', 'function')}"


_FUNCTIONAL = _functional_activations()


class PassedTracker:
    """Forward hooks that follow each selected module to the tensor it passes on (see :class:`Passed`).

    On the selected modules a forward hook notes the output; on every leaf module a pre-hook and a forward
    hook resolve what waits: the output of the first activation module that runs next on a tensor computed
    from the layer's output (normalisation, dropout and identity modules in between are looked past), or
    else the input of the first other module that runs next on such a tensor. Which tensors are computed
    from a waiting output is followed through every torch function while layers wait (a
    ``TorchFunctionMode``), so a module fed something else (a parallel branch, a shortcut) never resolves
    it. What is still waiting when :meth:`finish` is called is the layer's own output.
    ``on_passed(name, module, output, passed)`` is called once per call of a selected module.

    Use :meth:`attach` and :meth:`detach` (or :func:`capture_passed`); :meth:`detach` always removes every
    handle.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        on_passed: Callable[[str, nn.Module, Any, Passed], None],
        *,
        grad_only: bool = False,
    ) -> None:
        self.model, self.modules, self.on_passed = model, dict(modules), on_passed
        self.grad_only = grad_only  # follow only forward passes that record gradients (training ones)
        self.executed: list[str] = []
        self._pending: dict[int, tuple[str, nn.Module, Any]] = {}
        self._derived: dict[int, tuple[torch.Tensor, set[int]]] = {}  # id -> (tensor, waiting keys)
        self._next_key = 0
        self._last_leaf_activation = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mode: _Lineage | None = None
        self._in_activation = 0  # inside an activation module's forward: its own F.relu is not functional

    def attach(self) -> None:
        selected = {id(m): n for n, m in self.modules.items()}
        for name, module in self.model.named_modules():
            leaf = next(module.children(), None) is None
            if not (leaf or id(module) in selected):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre(name, leaf)))
            self._handles.append(
                module.register_forward_hook(self._post(name, selected.get(id(module)), leaf))
            )
        self._mode = _Lineage(self)
        self._mode.__enter__()

    def detach(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending, self._derived, self._in_activation = {}, {}, 0

    def _ignored(self) -> bool:
        return self.grad_only and not torch.is_grad_enabled()

    def finish(self) -> None:
        """Resolve what still waits with each layer's own output (nothing ran after it)."""
        pending, self._pending, self._derived = self._pending, {}, {}
        for name, module, output in pending.values():
            t = _first(output)
            self.on_passed(name, module, output, Passed(output if t is None else t, "output", name, module))

    def _keys(self, t: torch.Tensor | None) -> set[int]:
        entry = self._derived.get(id(t)) if t is not None else None
        return entry[1] & self._pending.keys() if entry is not None and entry[0] is t else set()

    def _note(self, inputs: Any, output: Any) -> None:
        keys: set[int] = set()
        for t in _tensors(inputs, []):
            keys |= self._keys(t)
        if keys:
            for t in _tensors(output, []):
                self._derived[id(t)] = (t, self._keys(t) | keys)

    def _wait(self, name: str, module: nn.Module, output: Any) -> None:
        key, self._next_key = self._next_key, self._next_key + 1
        self._pending[key] = (name, module, output)
        t = _first(output)
        if t is not None:
            self._derived[id(t)] = (t, self._keys(t) | {key})

    def _resolve(self, keys: set[int], tensor: Any, source: str, by: str, module: nn.Module) -> None:
        for key in sorted(keys):
            name, m, output = self._pending.pop(key)
            self.on_passed(name, m, output, Passed(tensor, source, by, module))
        if not self._pending:
            self._derived = {}

    def _pre(self, name: str, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if self._ignored():
                return
            if leaf and is_activation(module):
                self._in_activation += 1
                return
            if not leaf or not self._pending or isinstance(module, _PASS_THROUGH):
                return
            t = _first(args)
            keys = self._keys(t)
            if keys:
                self._resolve(keys, t, "next_input", name, module)

        return hook

    def _post(self, name: str, selected: str | None, leaf: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._ignored():
                return
            if leaf and is_activation(module):
                self._in_activation = max(0, self._in_activation - 1)
            if leaf and is_activation(module) and self._pending:
                t = _first(output)
                keys = self._keys(_first(args))
                if t is not None and keys:
                    self._resolve(keys, t, "activation", name, module)
            if leaf:
                self._last_leaf_activation = is_activation(module)
            if selected is None:
                return
            self.executed.append(selected)
            if is_activation(module) or (not leaf and self._last_leaf_activation):
                t = _first(output)
                self.on_passed(selected, module, output, Passed(t, "output", selected, module))
            else:
                self._wait(selected, module, output)

        return hook


@contextmanager
def capture_passed(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    on_passed: Callable[[str, nn.Module, Any, Passed], None],
    *,
    eval_mode: bool = True,
) -> Iterator[PassedTracker]:
    """:class:`PassedTracker` hooks for the duration of the block; train/eval flags restored on exit.

    Call the tracker's ``finish()`` after the forward pass (it resolves the last layers with their own
    output); on an exception nothing more is reported and every hook is removed all the same.
    """
    tracker = PassedTracker(model, modules, on_passed)
    with modes_kept(model, eval_mode=eval_mode):
        try:
            tracker.attach()
            yield tracker
        finally:
            tracker.detach()

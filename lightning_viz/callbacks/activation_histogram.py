"""ActivationHistogramCallback: exact histograms of layer outputs over training, and their gradients' norms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed, sharding
from lightning_viz.core.base import VizCallback, WhenFull, check_int, check_patterns, step_stem
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.histogram_history import (
    HistogramSeries,
    evolution_arrays,
    evolution_params,
    histogram_items,
    record_histograms,
)
from lightning_viz.core.hooks import capture_outputs, is_metric, match_modules
from lightning_viz.core.model_input import first_float_tensor
from lightning_viz.core.records import Reduced, Sums, Tensors
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.stats import HistogramSet
from lightning_viz.core.warn import warn_once
from lightning_viz.render.depth import render_depth_profile
from lightning_viz.render.histograms import render_evolution

# leaf modules whose output repeats (part of) their input: not worth a histogram by default
_REPEATS = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)
STATE_VERSION = 1


def _default_layer(_name: str, module: nn.Module) -> bool:
    return not list(module.children()) and not isinstance(module, _REPEATS) and not is_metric(module)


class ActivationHistogramCallback(VizCallback):
    """Exact histograms of what each layer outputs, every N-th training step, and how they moved.

    On logging steps only, forward hooks take the output of each chosen layer during the training step's
    own forward pass (train mode, the real batch: what the next layer receives), and the histograms are
    computed on the tensors' device with the weight histograms' contract: power-of-two bins that line up
    over steps, counts exact (equal to ``numpy.histogram`` on the same edges), NaN and Inf counted apart,
    and under DDP or FSDP the activations of every rank's batch pooled exactly (one shared bin plan, counts
    summed: two collectives per logging step). A layer called several times in a step (a shared activation
    module) has all its calls in one histogram. An output that a later layer changes in place
    (``ReLU(inplace=True)``) is copied before it changes. The outputs are held until the batch ends and
    nothing is computed on other steps.

    Sends TensorBoard histograms ``activations/<layer>`` (and W&B / MLflow where they take them), and one
    figure of every layer's distribution over the steps (``activations_evolution_stepNNNNNN.png`` with the
    ``.npz`` behind it). With ``gradients``, also the L2 norm of the loss gradient with respect to each
    layer's output (tensor hooks in the backward pass of logging steps), pooled over ranks, as scalars
    ``activation_grad_norm/<layer>`` and a figure (``activation_grad_norms.png``). A layer inside a compiled
    module runs no hooks: it is said to have not run.

    Args:
        every_n_steps: capture every N-th optimizer step: steps 0, N, 2N, ...; ``"log_every_n_steps"``
            follows the Trainer's. The same schedule in every lightning-viz callback.
        bins: bins per histogram (>= 2).
        layers: glob patterns over module names (``"features.*"``, ``"*act*"``) of the layers whose outputs
            are histogrammed. Default: every leaf module but ``Identity``, ``Flatten`` and dropout. An
            activation written as a function in ``forward`` (``F.relu``) is no module: pick the layer
            before it, whose output is then the pre-activation.
        gradients: also the norm of the gradient with respect to each layer's output.
        max_history: snapshots kept per layer for the figure; beyond it the history is thinned evenly,
            always keeping the first and the latest.
        figure_every_n_epochs: redraw the figures every N training epochs (and at the end).
        output_dir: where files go; default ``<trainer.log_dir>/viz/activation_histogram``.
        when_full: when the background rendering queue is full: ``"wait"`` or ``"drop_oldest"``.
    """

    viz_name: ClassVar[str] = "activation_histogram"
    captures: ClassVar[str] = "activation histogram capture"
    section_title, report_rank = "Activations over training", 4
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec(
            "activations_evolution",
            "Layer output distributions over training",
            "lightning_viz.render.histograms:render_evolution",
            "activations_evolution_step*.npz",
            cumulative=True,
            latest_only=True,
        ),
        FigureSpec(
            "activation_grad_norms",
            "Gradient norm with respect to each layer's output",
            "lightning_viz.render.depth:render_depth_profile",
            "activation_grad_norms.json",
            cumulative=True,
            latest_only=True,
        ),
    )

    def __init__(
        self,
        every_n_steps: EveryNSteps = 50,
        bins: int = 64,
        layers: list[str] | None = None,
        gradients: bool = False,
        max_history: int = 200,
        figure_every_n_epochs: int = 1,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        if every_n_steps is None:
            raise ValueError("`every_n_steps` must be a positive integer or 'log_every_n_steps'; got None")
        check_int("bins", bins, 2)
        check_int("max_history", max_history, 2)
        check_int("figure_every_n_epochs", figure_every_n_epochs, 1)
        check_patterns("layers", layers, "every leaf layer", '["conv*", "act*"]')
        self.every_n_steps = every_n_steps
        self.bins = bins
        self.layers = list(layers) if layers is not None else None
        self.gradients = gradients
        self.max_history = max_history
        self.figure_every_n_epochs = figure_every_n_epochs
        self.schedule = Schedule(every_n_steps)
        self._modules: dict[str, nn.Module] = {}
        self._history: dict[str, dict[str, HistogramSeries]] = {"activations": {}}
        self._grad_steps: list[int] = []
        self._grad_norms: dict[str, list[float]] = {}
        self._copy: set[str] = set()  # layers whose output a later layer changes in place: copied when taken
        self._pending: dict[str, Any] | None = None
        self._hooks: ExitStack | None = None
        self._version = self._drawn_version = 0
        self._not_run: list[str] = []
        self._owner = True

    def state_fields(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir, "layers": tuple(self.layers) if self.layers else None}

    # ------------------------------------------------------------------ selection
    def _select(self, pl_module: LightningModule) -> dict[str, nn.Module]:
        """The chosen layers by the names the user wrote (no ``_orig_mod`` of ``torch.compile``, no FSDP1
        wrapper), in model order."""
        if self.layers is None:
            found = {n: m for n, m in pl_module.named_modules() if n and _default_layer(n, m)}
        else:
            found = match_modules(pl_module, self.layers, argument="layers")
        out: dict[str, nn.Module] = {}
        for n, m in found.items():
            out.setdefault(sharding.clean_name(n), m)
        return out

    def check_model(self, pl_module: LightningModule) -> None:
        if self.layers is not None and next(pl_module.modules(), None) is not None:
            self._select(pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._modules = self._select(pl_module)  # after configure_model and strategy set-up
        # ranks that share a batch (tensor parallelism) count it once: one collective, on every rank
        self._owner = distributed.owns_its_batch(trainer)

    # ------------------------------------------------------------------ capture (every rank)
    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        """A due step opens: hook the chosen layers (and the modules that change their input in place)
        for this batch. The step is noted first, so that this rank reaches the reduction at the end of the
        batch whatever fails after (a failure marks the record failed, and every rank skips the step)."""
        pending: dict[str, Any] = {"step": step, "outs": {}, "grads": {}, "failed": True}
        self._pending = pending
        if not self._modules:
            self._modules = self._select(pl_module)
        outs: dict[str, list[list[Any]]] = pending["outs"]
        grads: dict[str, torch.Tensor] = pending["grads"]

        def on_grad(name: str, g: torch.Tensor) -> None:
            try:
                sq = g.detach().float().pow(2).sum()
                grads[name] = grads[name] + sq if name in grads else sq
            except Exception:
                pending["failed"] = True

        def on_output(name: str, module: nn.Module, output: Any) -> None:
            try:  # inside the user's forward pass: never raise there
                t = first_float_tensor(output)
                if t is None:
                    return
                kept = t.detach().clone() if name in self._copy else t.detach()
                outs.setdefault(name, []).append([kept, kept._version, name in self._copy])
                if self.gradients and t.requires_grad:
                    t.register_hook(lambda g, name=name: on_grad(name, g))
            except Exception:
                pending["failed"] = True

        def before_inplace(module: nn.Module, args: tuple[Any, ...]) -> None:
            try:  # about to change its input in place: copy any kept output that is that input
                t = first_float_tensor(args)
                if t is None:
                    return
                for entries in outs.values():
                    for e in entries:
                        if not e[2] and e[0].data_ptr() == t.data_ptr() and e[0]._version == t._version:
                            e[0], e[2] = e[0].clone(), True
                            e[1] = e[0]._version
            except Exception:
                pending["failed"] = True

        self._hooks = ExitStack()
        self._hooks.enter_context(capture_outputs(pl_module, self._modules, on_output, eval_mode=False))
        for m in pl_module.modules():
            if getattr(m, "inplace", False) is True:
                self._hooks.callback(m.register_forward_pre_hook(before_inplace).remove)
        pending["failed"] = False

    def _unhook(self) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        p, self._pending = self._pending, None
        self._unhook()
        if p is None:
            return
        names = list(self._modules)
        tensors: list[torch.Tensor | None] = [None] * len(names)
        failed, built = p["failed"], False
        with self.guard(trainer, self.captures):
            for i, name in enumerate(names):
                entries = p["outs"].get(name, [])
                changed = any(e[0]._version != e[1] for e in entries)
                if changed:  # changed in place by something that is no module: copied from the next step on
                    self._copy.add(name)
                    continue
                parts = [e[0].reshape(-1) for e in entries]
                if parts:
                    tensors[i] = parts[0] if len(parts) == 1 else torch.cat(parts)
            built = True
        failed = failed or not built
        del p["outs"]
        tags = [f"activations/{n}" for n in names]
        if failed or not self._owner:
            tensors = [None] * len(names)
        record = Tensors(p["step"], tags, tensors, self.bins, failed=failed, pooled=True)
        self.run_path(trainer, self.captures, record)
        if self.gradients:
            self._capture_grads(trainer, p, names, failed)

    def _capture_grads(self, trainer: Trainer, p: dict[str, Any], names: list[str], failed: bool) -> None:
        ref = next(iter(p["grads"].values()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        sq = torch.zeros(len(names), dtype=torch.float64, device=device)
        seen = torch.zeros(len(names), dtype=torch.float64, device=device)
        for i, name in enumerate(names):
            if name in p["grads"] and self._owner:
                sq[i] = p["grads"][name].to(device, torch.float64)
                seen[i] = 1.0
        record = Sums(p["step"], {"sq": sq, "seen": seen}, {"sq": "sum", "seen": "max"}, failed, meta=names)
        self.run_path(trainer, "activation gradient norms", record)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._unhook()
        self._pending = None
        super().on_exception(trainer, pl_module, exception)

    # ------------------------------------------------------------------ keep (every rank), render (rank 0)
    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        if isinstance(reduced.values, HistogramSet):
            hs = reduced.values
            record_histograms(self._history, hs, reduced.step, self.bins, self.max_history)
            self._not_run = [t.split("/", 1)[1] for t, n in zip(hs.names, hs.numel) if n == 0]
            bad = [(t, int(n)) for t, n in zip(hs.names, hs.nonfinite) if n > 0]
            if bad:
                warn_once(
                    (type(self).__name__, "nonfinite"),
                    f"{type(self).__name__}: NaN/Inf values first seen at step {reduced.step} in the output of "
                    f"{bad[0][0].split('/', 1)[1]} ({bad[0][1]:,} values); affected at that step: "
                    f"{[t.split('/', 1)[1] for t, _ in bad]}. The histograms cover the finite values. This "
                    "warning is shown once.",
                )
        else:
            names = reduced.meta
            sq, seen = reduced.values["sq"].numpy(), reduced.values["seen"].numpy()
            self._grad_steps.append(reduced.step)
            for i, name in enumerate(names):  # a layer with no gradient yet (never run) is left out
                if seen[i] > 0 or name in self._grad_norms:
                    norm = math.sqrt(float(sq[i])) if seen[i] > 0 else math.nan
                    self._grad_norms.setdefault(name, []).append(norm)
            for series in self._grad_norms.values():  # a layer first seen now: NaN before
                series[:0] = [math.nan] * (len(self._grad_steps) - len(series))
            order = {n: i for i, n in enumerate(names)}  # model order
            self._grad_norms = dict(
                sorted(self._grad_norms.items(), key=lambda kv: order.get(kv[0], len(order)))
            )
        self._version += 1

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        step = reduced.step
        if not isinstance(reduced.values, HistogramSet):
            scalars = {
                f"activation_grad_norm/{n}": v[-1]
                for n, v in self._grad_norms.items()
                if math.isfinite(v[-1])
            }
            self.emit_scalars(trainer, scalars, step)
            return
        self.emit_histograms(trainer, histogram_items(reduced.values), step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if (trainer.current_epoch + 1) % self.figure_every_n_epochs == 0:
            self._draw(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer)

    def finish(self, trainer: Trainer) -> None:
        self._draw(trainer)

    # ------------------------------------------------------------------ figures
    def evolution_data(self, compact: bool = False) -> dict[str, Any]:
        """The plain data behind the evolution figure (fresh arrays): ``render_evolution``'s input."""
        params = evolution_params(self._history["activations"], self.bins, compact)
        title = "layer outputs over training (training batches)"
        if self._not_run:
            shown = ", ".join(self._not_run[:4]) + (", ..." if len(self._not_run) > 4 else "")
            title += f"\nnot run at the latest logging step: {shown}"
        return {"title": title, "params": params}

    def grad_norm_data(self) -> dict[str, Any]:
        """The data of the gradient-norm figure (:mod:`lightning_viz.render.depth`): each layer's norm at
        each logging step, layers in model order."""
        layers = list(self._grad_norms)
        values = [[self._grad_norms[n][j] for n in layers] for j in range(len(self._grad_steps))]
        return {
            "title": "gradient of the loss with respect to each layer's output (training batches)",
            "ylabel": "L2 norm of d loss / d output",
            "layers": layers,
            "steps": list(self._grad_steps),
            "values": values,
        }

    def _draw(self, trainer: Trainer) -> None:
        if self._version == self._drawn_version or not self.emitting(trainer):
            return
        self._drawn_version = self._version
        step = trainer.global_step
        with self.guard(trainer, "activation histogram figure"):
            data = self.evolution_data()
            if data["params"]:
                arrays = evolution_arrays(data["params"], data["title"])
                self.emit_figure(
                    trainer,
                    render_evolution,
                    self.evolution_data(compact=True),
                    tag=f"viz/{self.viz_name}/activations_evolution",
                    stem=step_stem("activations_evolution", step),
                    step=step,
                    save_data=arrays,
                )
            if self._grad_norms:
                self.emit_figure(
                    trainer,
                    render_depth_profile,
                    self.grad_norm_data(),
                    tag=f"viz/{self.viz_name}/activation_grad_norms",
                    stem="activation_grad_norms",
                    step=step,
                )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "bins": self.bins,
            **self.schedule.state_dict(),
            "history": {n: s.state() for n, s in self._history["activations"].items()},
            "grad_steps": list(self._grad_steps),
            "grad_norms": {n: list(v) for n, v in self._grad_norms.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        owner = type(self).__name__
        if not isinstance(state_dict, Mapping) or state_dict.get("bins") != self.bins:
            got = state_dict.get("bins") if isinstance(state_dict, Mapping) else type(state_dict).__name__
            warn_once(
                (owner, "state"),
                f"{owner}: the saved state has bins={got!r} but `bins` is {self.bins}; the activation history "
                "starts afresh from here.",
            )
            return
        if isinstance(state_dict.get("optimizer_steps"), Mapping):
            self.schedule.load_state_dict(state_dict)
        for name, s in dict(state_dict.get("history", {})).items():
            try:
                self._history["activations"][name] = HistogramSeries.from_state(
                    s, self.bins, self.max_history
                )
            except (KeyError, TypeError, ValueError) as err:
                warn_once(
                    (owner, "state", name), f"{owner}: the saved history of {name} is unreadable ({err!r})."
                )
        self._grad_steps = [int(s) for s in state_dict.get("grad_steps", [])]
        self._grad_norms = {
            n: [float(x) for x in v] for n, v in dict(state_dict.get("grad_norms", {})).items()
        }
        self._version += 1

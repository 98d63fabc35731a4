"""RankViewCallback: each rank's loss, timing and activations side by side, and the rank that departs."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from typing import Any, ClassVar

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_viz.core import distributed, rank_rules, sharding
from lightning_viz.core.base import VizCallback, WhenFull
from lightning_viz.core.figures import FigureSpec
from lightning_viz.core.hooks import capture_outputs
from lightning_viz.core.model_input import first_float_tensor
from lightning_viz.core.records import PerRank, Reduced
from lightning_viz.core.schedule import EveryNSteps, Schedule
from lightning_viz.core.warn import warn_once
from lightning_viz.render.curves import render_curves

FIELDS = (
    "loss",
    "data_s",
    "forward_s",
    "step_s",
    "input_mean",
    "input_std",
    "first_mean",
    "first_std",
    "last_mean",
    "last_std",
    "weights",
)
FIGURES = {  # figure stem -> its panels: (title, fields)
    "ranks_loss": [("training loss of each rank's own batch", ["loss"])],
    "ranks_time": [
        ("waiting for the batch (ms)", ["data_s"]),
        ("forward pass (ms)", ["forward_s"]),
        ("whole step (ms)", ["step_s"]),
    ],
    "ranks_activations": [
        ("input batch: mean", ["input_mean"]),
        ("input batch: std", ["input_std"]),
        ("first layer output: mean", ["first_mean"]),
        ("first layer output: std", ["first_std"]),
        ("last layer output: mean", ["last_mean"]),
        ("last layer output: std", ["last_std"]),
    ],
}


def _moments(t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``t`` on its device (NaN for none or an empty one); no host sync."""
    if t is None or t.numel() == 0:
        nan = torch.tensor(math.nan)
        return nan, nan
    x = t.detach().float()
    return x.mean(), x.std() if x.numel() > 1 else torch.zeros((), device=x.device)


class RankViewCallback(VizCallback):
    """Each rank's view of training, side by side: its loss, its timing and its batch's activations.

    On logging steps only, every rank records the loss of its own batch, how long it waited for that batch,
    its forward pass and its whole step (host time), the mean and standard deviation of its input batch and
    of the outputs of the model's first and last layers with parameters, and the sum of its weights; one
    all-gather brings them together. Rank 0 draws one figure per quantity with a line per rank
    (``ranks_loss``, ``ranks_time``, ``ranks_activations``), logs ``rank_view/<quantity>/rank<N>`` scalars,
    and warns once per finding (``lightning_viz.core.rank_rules``): a straggler, a rank whose loss or input
    holds NaN/Inf, inputs of different scale, and replicas whose weights differ. Under DDP the replicas
    agree by construction, so a difference is a bug; under sharded strategies (FSDP) the weights are not
    compared. On one process it shows the one rank.

    Args:
        every_n_steps: record every N optimizer steps; ``"log_every_n_steps"`` follows the Trainer.
        straggler_ratio: a rank whose time before the gradient sync is this many times the other ranks'
            median (on 3 of the last 5 logging steps) is a straggler (> 1).
        output_dir: where files go; default ``<trainer.log_dir>/viz/rank_view``.
        when_full: see :class:`~lightning_viz.core.base.VizCallback`.
    """

    viz_name: ClassVar[str] = "rank_view"
    section_title, report_rank = "Ranks side by side", 6
    captures: ClassVar[str] = "per-rank recording"
    figures: ClassVar[tuple[FigureSpec, ...]] = tuple(
        FigureSpec(
            stem,
            title,
            "lightning_viz.render.curves:render_curves",
            f"{stem}.json",
            cumulative=True,
            latest_only=True,
        )
        for stem, title in (
            ("ranks_loss", "Loss of each rank"),
            ("ranks_time", "Time of each rank"),
            ("ranks_activations", "Activations of each rank's batch"),
        )
    )

    def __init__(
        self,
        every_n_steps: EveryNSteps = "log_every_n_steps",
        straggler_ratio: float = 1.5,
        output_dir: str | None = None,
        when_full: WhenFull = "wait",
    ) -> None:
        super().__init__(output_dir=output_dir, when_full=when_full)
        if (
            isinstance(straggler_ratio, bool)
            or not isinstance(straggler_ratio, (int, float))
            or not straggler_ratio > 1
        ):
            raise ValueError(f"`straggler_ratio` must be a number > 1; got {straggler_ratio!r}")
        self.every_n_steps = every_n_steps
        self.straggler_ratio = float(straggler_ratio)
        self.schedule = Schedule(every_n_steps)
        self.steps: list[int] = []
        self.rows: list[np.ndarray] = []
        self.found: list[dict[str, Any]] = []
        self._said: set[tuple[str, int | None]] = set()
        self._pending: dict[str, Any] | None = None
        self._hooks: ExitStack | None = None
        self._last_end: float | None = None
        self._now = 0.0
        self._replicas = True
        self._modules: dict[str, nn.Module] = {}
        self._layers: list[str] = []

    # ------------------------------------------------------------------ recording (every rank)
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._replicas = not any(
            sharding.is_sharded(p) or getattr(p, "_fsdp_flattened", False) for p in pl_module.parameters()
        )
        # the layers whose outputs are recorded: the first and last leaf modules that hold parameters
        self._modules = {
            n: m
            for n, m in pl_module.named_modules()
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
        }
        self._layers = list(self._modules)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._now = now
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def capture_batch(self, trainer: Trainer, pl_module: LightningModule, batch: Any, step: int) -> None:
        """A due step opens: note the time, the input batch, and hook the first and last layers.

        The step is noted first, so that this rank reaches the all-gather at the end of the batch whatever
        fails after (a failure marks the record failed, and every rank skips the step)."""
        data_s = self._now - self._last_end if self._last_end is not None else math.nan
        pending: dict[str, Any] = {"step": step, "t0": self._now, "data_s": data_s, "failed": True}
        self._pending = pending
        pending["input"] = _moments(first_float_tensor(batch))
        if self._layers:
            first, last = self._layers[0], self._layers[-1]

            def on_output(name: str, module: nn.Module, output: Any) -> None:
                try:  # inside the user's forward pass: never raise there
                    for key, which in (("first", first), ("last", last)):
                        if name == which and key not in pending:  # its first call in this step
                            pending[key] = _moments(first_float_tensor(output))
                except Exception:
                    pending["failed"] = True

            chosen = {first: self._modules[first], last: self._modules[last]}
            self._hooks = ExitStack()
            self._hooks.enter_context(capture_outputs(pl_module, chosen, on_output, eval_mode=False))
        pending["failed"] = False

    def _unhook(self) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        p = self._pending
        if p is not None and "forward_s" not in p:
            p["forward_s"] = time.perf_counter() - p["t0"]
            p["loss"] = loss.detach().float().reshape(-1)[0] if loss.numel() else torch.tensor(math.nan)
            # the hooks stay until the batch ends: under manual optimization a later forward pass (a second
            # optimizer's model) runs after this first backward

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        p, self._pending = self._pending, None
        self._unhook()
        if p is not None:
            row = None
            with self.guard(trainer, "per-rank recording"):
                row = self._row(p, now, pl_module)
            # a failure on this rank still takes part in the one all-gather (and the step is skipped on all)
            failed = row is None or p["failed"]
            placeholder = torch.full((len(FIELDS),), math.nan, dtype=torch.float64)
            self.run_path(
                trainer,
                self.captures,
                PerRank(p["step"], list(FIELDS), placeholder if failed else row, failed),
            )
        self._last_end = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = time.perf_counter()  # the wait for a batch is measured within the training loop

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = time.perf_counter()

    def _row(self, p: dict[str, Any], now: float, pl_module: LightningModule) -> torch.Tensor:
        nan = torch.tensor(math.nan)
        params = [q.detach().double().sum() for q in pl_module.parameters()]
        weights = torch.stack(params).sum() if self._replicas and params else nan
        values = {
            "loss": p.get("loss", nan),
            "data_s": p["data_s"],
            "forward_s": p.get("forward_s", math.nan),
            "step_s": now - p["t0"],
            "input_mean": p["input"][0],
            "input_std": p["input"][1],
            "first_mean": p.get("first", (nan, nan))[0],
            "first_std": p.get("first", (nan, nan))[1],
            "last_mean": p.get("last", (nan, nan))[0],
            "last_std": p.get("last", (nan, nan))[1],
            "weights": weights,
        }
        return torch.stack([torch.as_tensor(values[f], dtype=torch.float64).cpu() for f in FIELDS])

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._unhook()
        super().on_exception(trainer, pl_module, exception)

    # ------------------------------------------------------------------ keep (every rank), render (rank 0)
    def keep(self, trainer: Trainer, reduced: Reduced) -> None:
        self.steps.append(reduced.step)
        self.rows.append(np.asarray(reduced.values["rows"], dtype=np.float64))
        for f in rank_rules.findings(
            FIELDS, self.rows, reduced.step, ratio=self.straggler_ratio, replicas=self._replicas
        ):
            key = (f["kind"], f["rank"])
            if key in self._said:
                continue
            self._said.add(key)
            self.found.append(f)
            if distributed.is_emitter(trainer):
                warn_once(
                    (type(self).__name__, *key), f"{type(self).__name__}: {f['message']}. Training continues."
                )

    def figure_data(self, stem: str) -> dict[str, Any]:
        """The curves data (:mod:`lightning_viz.render.curves`) of one figure: a line per rank, over the
        steps where the quantity was recorded (a layer inside a compiled module runs no hooks: it shows
        as recorded at fewer steps, said in the panel's title, or not at all)."""
        world = self.rows[-1].shape[0] if self.rows else 0
        series: dict[str, Any] = {}
        panels = []
        single = len(FIGURES[stem]) == 1
        for title, fields in FIGURES[stem]:
            names, recorded = [], 0
            for field in fields:
                j = FIELDS.index(field)
                scale = 1e3 if field.endswith("_s") else 1.0  # times are drawn in milliseconds
                for r in range(world):
                    name = f"rank {r}" if single else f"rank {r} · {field.removesuffix('_s')}"  # unique
                    kept = [(s, scale * float(rows[r, j])) for s, rows in zip(self.steps, self.rows)]
                    kept = [(s, v) for s, v in kept if math.isfinite(v)]
                    recorded = max(recorded, len(kept))
                    if not kept:
                        continue
                    series[name] = {
                        "step": [s for s, _ in kept],
                        "epoch": [0] * len(kept),
                        "value": [v for _, v in kept],
                        "mode": None,
                        "smooth": False,
                    }
                    names.append(name)
            if 0 < recorded < len(self.steps):
                title = f"{title} (recorded at {recorded} of {len(self.steps)} logging steps)"
            panels.append({"title": title, "series": names})
        return {"x_axis": "step", "smoothing": 0.0, "mark_best": False, "panels": panels, "series": series}

    def render(self, trainer: Trainer, reduced: Reduced) -> None:
        rows = np.asarray(reduced.values["rows"])
        scalars = {
            f"rank_view/{field}/rank{r}": float(rows[r, j])
            for j, field in enumerate(FIELDS)
            for r in range(rows.shape[0])
            if field != "weights" and math.isfinite(float(rows[r, j]))
        }
        self.emit_scalars(trainer, scalars, reduced.step)
        for stem in FIGURES:
            self.emit_figure(
                trainer,
                render_curves,
                self.figure_data(stem),
                tag=f"viz/{self.viz_name}/{stem}",
                stem=stem,
                step=reduced.step,
            )
        self.emit_data(trainer, "findings", {"findings": list(self.found)})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "rows": [r.tolist() for r in self.rows], "found": list(self.found)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self.rows = [np.asarray(r, dtype=np.float64) for r in state_dict.get("rows", [])]
        self.found = list(state_dict.get("found", []))
        self._said = {(f["kind"], f["rank"]) for f in self.found}

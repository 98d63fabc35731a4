"""The one schedule of every lightning-viz callback: when ``every_n_steps`` and ``every_n_epochs`` are due.

The same words mean the same thing in every callback:

- ``every_n_steps: N``: a training step is due when the number ``k`` of optimizer steps taken before it is a
  multiple of ``N``: steps 0, N, 2N, ... A capture of step ``k`` shows the model after ``k`` updates and is
  labelled ``k`` (``trainer.global_step`` at that moment). What runs in the batch (activations, the logged
  loss) is taken in the first batch of that step, what the optimizer uses (gradients) at its
  ``on_before_optimizer_step``; under gradient accumulation a step spans its accumulation window and is
  captured once. Under manual optimization each optimizer counts its own steps: an optimizer's step is due
  when its own count is a multiple of ``N`` (a discriminator stepped after the generator is seen too), and a
  batch is due when some optimizer's next step is.
- ``every_n_steps: log_every_n_steps``: ``N`` is the Trainer's ``log_every_n_steps``.
- ``every_n_epochs: M``: due at the end of training epochs ``M - 1, 2M - 1, ...`` (every M-th epoch,
  counted from one).
- ``null``: off.

:class:`~lightning_viz.core.base.VizCallback` counts at the hooks and calls the callback's scheduled
methods; the counts are the same on every rank (they depend on no data), so every rank captures and
reduces the same steps.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

FOLLOW_TRAINER = "log_every_n_steps"
EveryNSteps = int | Literal["log_every_n_steps"] | None


def check_every(name: str, value: Any, *, follow: bool = True) -> None:
    """Raise ``ValueError`` naming the argument unless ``value`` is an int >= 1, null (off) or, with
    ``follow``, ``"log_every_n_steps"``."""
    if value is None or (follow and value == FOLLOW_TRAINER):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = f", {FOLLOW_TRAINER!r} (the Trainer's)" if follow else ""
        raise ValueError(f"`{name}` must be an integer >= 1{extra} or null (off); got {value!r}")


def optimizer_index(trainer: Trainer, optimizer: Any) -> int:
    """The position of ``optimizer`` in ``trainer.optimizers`` (0 when it is not there: a wrapper)."""
    return next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)


class Schedule:
    """When a callback captures (see the module docstring for the meaning of the arguments).

    Args:
        every_n_steps: ``N``, ``"log_every_n_steps"`` or ``None`` (off).
        every_n_epochs: ``M`` or ``None`` (off).
    """

    def __init__(self, every_n_steps: EveryNSteps = None, every_n_epochs: int | None = None) -> None:
        check_every("every_n_steps", every_n_steps)
        check_every("every_n_epochs", every_n_epochs, follow=False)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.opt_steps: dict[int, int] = {}  # manual optimization: steps taken by each optimizer
        self._manual = False
        self._opened: Any = None  # the step whose batch was last found due (once per accumulation window)
        self._stepped: Any = None  # automatic optimization: the last step counted at the optimizer
        self._batch_idx = -1
        self._opt_epoch: dict[int, int] = {}  # optimizer -> the epoch of its last end-of-epoch step

    @property
    def off(self) -> bool:
        return self.every_n_steps is None and self.every_n_epochs is None

    def steps(self, trainer: Trainer) -> int | None:
        """``N`` for this Trainer, or ``None`` when step captures are off."""
        if self.every_n_steps == FOLLOW_TRAINER:
            return max(1, int(trainer.log_every_n_steps or 1))
        return self.every_n_steps  # type: ignore[return-value]

    def covers(self, other: Schedule, trainer: Trainer) -> bool:
        """Whether every step ``other`` makes due by ``every_n_steps`` is due here too (the same counter)."""
        mine, theirs = self.steps(trainer), other.steps(trainer)
        return theirs is None or (mine is not None and theirs % mine == 0)

    # ------------------------------------------------------------------ counting (VizCallback's hooks)
    def start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """At ``on_train_start``, after a checkpoint (callback state, then ``global_step``) is restored."""
        self._manual = not pl_module.automatic_optimization
        self._opened = self._stepped = None
        self._opt_epoch = {}
        if trainer.global_step == 0:  # a fresh run counts from zero
            self.opt_steps = {}
        elif self._manual and not self.opt_steps:  # resumed without the counts: assume alternating steps
            n = max(1, len(trainer.optimizers))
            self.opt_steps = dict.fromkeys(range(n), trainer.global_step // n)

    def batch_due(self, trainer: Trainer, batch_idx: int) -> int | None:
        """At ``on_train_batch_start``: the label of the step this batch opens when it is due, else ``None``."""
        self._batch_idx = batch_idx
        n = self.steps(trainer)
        if n is None or trainer.sanity_checking:
            return None
        if self._manual:
            # an optimizer that has not stepped yet (a late discriminator) does not make every batch due
            counts = tuple(sorted(self.opt_steps.items())) or ((0, 0),)
            key: Any = counts
            due = any(c % n == 0 for _, c in counts)
        else:
            key = trainer.global_step
            due = key % n == 0
        if not due or key == self._opened:
            return None
        self._opened = key
        return int(trainer.global_step)

    def optimizer_due(self, trainer: Trainer, optimizer: torch.optim.Optimizer) -> tuple[int, bool, bool]:
        """At ``on_before_optimizer_step``: ``(optimizer index, due by steps, due by epochs)``; counts the
        optimizer's step.

        Due by epochs: the first step of this optimizer in the last batch of a due epoch, where what the
        optimizer uses (the gradients) still exists; by the epoch end Lightning has set the gradients to
        ``None`` for validation. ``False`` when the epoch's length is unknown.
        """
        n = self.steps(trainer)
        if n is None and self.every_n_epochs is None:  # captures off (a callback of fit start only)
            return 0, False, False
        index = optimizer_index(trainer, optimizer)
        if self._manual:  # trainer.global_step counts the steps of every optimizer: count each one's own
            own = self.opt_steps.get(index, 0)
            self.opt_steps[index] = own + 1
        else:  # its steps are the global steps; a second call at the same step (a closure) is not a step
            own = trainer.global_step
            if own == self._stepped:
                return index, False, False
            self._stepped = own
        last_batch = self._batch_idx + 1 >= trainer.num_training_batches  # inf when the length is unknown
        by_epoch = (
            last_batch and self.epoch_due(trainer) and self._opt_epoch.get(index) != trainer.current_epoch
        )
        if by_epoch:
            self._opt_epoch[index] = trainer.current_epoch
        return index, n is not None and own % n == 0, by_epoch

    def epoch_due(self, trainer: Trainer) -> bool:
        """Whether the training epoch that runs now (or just ended) is one of every ``every_n_epochs``."""
        m = self.every_n_epochs
        return m is not None and not trainer.sanity_checking and (trainer.current_epoch + 1) % m == 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": dict(self.opt_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_steps = {int(k): int(v) for k, v in (state.get("optimizer_steps") or {}).items()}

"""Non-logging steps cost nothing: no hooks, no histogram work, no host-device synchronisation.

Counting, never timing: the four callbacks run in a real Trainer, and their per-step hooks are instrumented
so that any forward hook left registered, any ``histogram_set`` call and any tensor-to-host conversion
(``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``float()``, ``int()``) on a step where
nothing is recorded is counted. On CUDA the same steps run under ``torch.cuda.set_sync_debug_mode("error")``
(``tests/gpu/test_sync_free.py``, run by ``make gpu-check``).
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback

import lightning_viz as lv
from lightning_viz.core import stats
from lightning_viz.core.hooks import hook_count
from tests.helpers import RandomImages, TinyCNN, make_trainer

N = 4  # every callback that logs on steps does so at steps 0, N, 2N, ... (the one schedule)
STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_optimizer_step")
HOST_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


def viz_callbacks() -> list[Callback]:
    return [
        lv.ModelSummaryCallback(),
        lv.WeightHistogramCallback(every_n_steps=N),
        lv.ActivationMapCallback(every_n_epochs=1, every_n_steps=N),
        lv.CurvePlotCallback(every_n_steps=N),
    ]


def logging_step(hook: str, step: int) -> bool:
    """Whether a callback may record in ``hook`` when ``trainer.global_step`` reads ``step`` there.

    A due step ``k`` (``k % N == 0``) is captured at its batch start (activations, learning rates) and its
    optimizer step (histograms), where ``global_step`` reads ``k``, and at its batch end (the curves' step
    values), where it already reads ``k + 1``."""
    if hook == "on_train_batch_end":
        return (step - 1) % N == 0
    return step % N == 0


class HostCalls:
    """Counts tensor-to-host conversions made while ``active`` (patched onto ``torch.Tensor``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.counts: Counter[str] = Counter()
        self.where: list[tuple[str, str, int, str]] = []
        self.context: tuple[str, str, int] = ("", "", -1)
        for name in HOST_METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))

    def _counted(self, name: str, original: Any) -> Any:
        @functools.wraps(original)
        def wrapper(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.counts[name] += 1
                self.where.append((*self.context, name))
            return original(t, *args, **kwargs)

        return wrapper


class HookProbe(Callback):
    """Last callback: records the number of forward hooks on the model at every per-step hook."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def _probe(self, hook: str, trainer: Any, pl_module: Any) -> None:
        self.seen.append((hook, trainer.global_step, hook_count(pl_module)))

    def on_train_batch_start(self, trainer, pl_module, *args):
        self._probe("on_train_batch_start", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, *args):
        self._probe("on_before_optimizer_step", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self._probe("on_train_batch_end", trainer, pl_module)


def instrument(callbacks: list[Callback], around: Any) -> list[tuple[str, str, int]]:
    """Wrap each callback's per-step hooks on its instance: ``around(hook, step, call)`` runs each call."""
    calls: list[tuple[str, str, int]] = []
    for cb in callbacks:
        for hook in STEP_HOOKS:
            bound = getattr(cb, hook)

            def wrapped(trainer, *args, _bound=bound, _hook=hook, _cb=cb):
                step = trainer.global_step
                calls.append((type(_cb).__name__, _hook, step))
                return around(type(_cb).__name__, _hook, step, lambda: _bound(trainer, *args))

            setattr(cb, hook, wrapped)
    return calls


class HistogramCalls(Callback):
    """First callback: notes the step each batch starts at; ``stats.histogram_set`` is patched to log it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step = -1
        self.steps: list[int] = []
        real = stats.histogram_set

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.steps.append(self.step)
            return real(*args, **kwargs)

        monkeypatch.setattr(stats, "histogram_set", counted)

    def on_train_batch_start(self, trainer, *args):
        self.step = trainer.global_step


def test_non_logging_steps_do_no_work(tmp_path, monkeypatch):
    host = HostCalls(monkeypatch)
    histograms = HistogramCalls(monkeypatch)
    callbacks = viz_callbacks()

    def around(name: str, hook: str, step: int, call: Any) -> Any:
        if logging_step(hook, step):
            return call()
        host.active, host.context = True, (name, hook, step)
        try:
            return call()
        finally:
            host.active = False

    calls = instrument(callbacks, around)
    probe = HookProbe()
    trainer = make_trainer(
        tmp_path,
        [histograms, *callbacks, probe],
        max_epochs=1,
    )
    trainer.fit(TinyCNN(), RandomImages(n=96, batch_size=8))  # 12 steps
    steps = sorted({s for _, _, s in calls})
    non_logging = [s for s in steps if not logging_step("on_train_batch_end", s) and s % N]
    assert steps == list(range(13)) and non_logging == [2, 3, 6, 7, 10, 11], (steps, non_logging)

    # 1. no forward hook is registered at any per-step hook (capture hooks exist only inside a capture)
    leftovers = [(hook, step, n) for hook, step, n in probe.seen if n]
    assert not leftovers, f"forward hooks registered during training steps: {leftovers}"
    # 2. histograms are computed on logging steps only, and on every one of them
    assert sorted(set(histograms.steps)) == [0, 4, 8], histograms.steps
    # 3. no tensor reaches the host from the callbacks' per-step hooks on non-logging steps
    assert not host.counts, f"host conversions on non-logging steps: {host.where[:10]}"


def test_instrumentation_catches_host_calls_and_hooks(tmp_path, monkeypatch):
    """The counters are live: a callback that calls ``.item()`` every step, and a capture's hooks, are seen."""
    host = HostCalls(monkeypatch)

    class Chatty(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            outputs["loss"].item()

    chatty = Chatty()
    am = lv.ActivationMapCallback(every_n_epochs=None, every_n_steps=2)
    hooks_during_capture: list[int] = []
    real_on_passed = am._on_passed

    def on_passed(name, module, output, passed):
        hooks_during_capture.append(hook_count(trainer.lightning_module))
        return real_on_passed(name, module, output, passed)

    am._on_passed = on_passed

    def around(name: str, hook: str, step: int, call: Any) -> Any:
        host.active = True
        try:
            return call()
        finally:
            host.active = False

    instrument([chatty], around)
    trainer = make_trainer(tmp_path, [chatty, am], max_epochs=1)
    trainer.fit(TinyCNN(), RandomImages(n=32, batch_size=8))
    assert host.counts["item"] == 4
    assert hooks_during_capture and min(hooks_during_capture) > 0

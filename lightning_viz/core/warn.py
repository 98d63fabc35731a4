"""Warn once per cause: a failing visualisation says so once and training goes on."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable

from lightning.pytorch.utilities import rank_zero_warn  # noqa: F401  (re-exported for callbacks)

_seen: set[Hashable] = set()
_lock = threading.Lock()


class VizWarning(UserWarning):
    """Category of every warning lightning-viz emits."""


def short_error(err: BaseException, limit: int = 200) -> str:
    """``Type: the first line of the message``, at most ``limit`` characters of it, for a one-line warning
    (torch appends whole backend lists and TorchScript whole graphs to some messages)."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(err).__name__}: {first[:limit]}{'...' if len(first) > limit or len(lines) > 1 else ''}"


def warn_once(key: Hashable, message: str) -> bool:
    """Emit ``message`` as a :class:`VizWarning` the first time ``key`` is seen in this process."""
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
    warnings.warn(message, VizWarning, stacklevel=3)
    return True


def info_once(key: Hashable, message: str) -> bool:
    """Log ``message`` once per ``key`` at INFO level (Lightning's console logger): something worth knowing
    that asks nothing of the user, so not a warning."""
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(message)
    return True


def reset_warnings() -> None:
    """Forget which warnings were shown (tests use this)."""
    with _lock:
        _seen.clear()


def warn_if_state_missing(callback: object, checkpoint: dict) -> bool:
    """Warn once when a checkpoint being loaded holds no state for ``callback`` (written without it, or by
    a version whose ``state_key`` differs); the callback then starts afresh. Returns whether it warned."""
    states = checkpoint.get("callbacks") if isinstance(checkpoint, dict) else None
    key = getattr(callback, "state_key", None)
    if isinstance(states, dict) and key in states:
        return False
    name = type(callback).__name__
    similar = [str(k) for k in (states or {}) if str(k).startswith(name)]
    found = f"it holds state for {similar} instead" if similar else "it holds no lightning-viz state"
    return warn_once(
        ("state-missing", name, key),
        f"{name}: the checkpoint has no state under {key!r} ({found}); this callback's history starts "
        "afresh from the resumed step. Training resumes normally.",
    )

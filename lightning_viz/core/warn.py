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


def warn_once(key: Hashable, message: str) -> bool:
    """Emit ``message`` as a :class:`VizWarning` the first time ``key`` is seen in this process."""
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
    warnings.warn(message, VizWarning, stacklevel=3)
    return True


def reset_warnings() -> None:
    """Forget which warnings were shown (tests use this)."""
    with _lock:
        _seen.clear()

"""A background job whose input can wait in a temporary file instead of in memory while drawing is behind.

See :mod:`lightning_viz.core.writer` for when a job is spilled; the files are private temporary pickles, never
output, removed once read back.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any


class DiskBacked:
    """A job ``run(payload)`` whose payload can wait on disk instead of in memory (see the module docstring).

    Args:
        payload: picklable input (a figure's render function and its data).
        run: what to do with it, on the writer's thread.
    """

    def __init__(self, payload: Any, run: Callable[[Any], None]) -> None:
        self.payload, self.run = payload, run

    def __call__(self) -> None:
        self.run(self.payload)

    def spill(self) -> Spilled | None:
        """Pickle the payload to a temporary file; None when it cannot be (it then waits in memory)."""
        try:
            fd, path = tempfile.mkstemp(prefix="lightning-viz-spill-", suffix=".pkl")
        except OSError:  # no writable temporary directory
            return None
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(self.payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # unpicklable payload, disk full
            _unlink(path)
            return None
        return Spilled(path, self.run)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Spilled:
    """A :class:`DiskBacked` job whose payload is in a file: read back, removed, then run."""

    def __init__(self, path: str, run: Callable[[Any], None]) -> None:
        self.path, self.run = path, run

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                payload = pickle.load(fh)
        finally:
            _unlink(self.path)
        self.run(payload)

"""Atomic file writes in one place: every file the suite writes goes through here, honouring the umask.

Each file is written to a temporary name in its own directory, flushed to disk and renamed into place, so a
process killed at any moment leaves the old file or the new one, never a truncated one; and it gets the
mode a plain ``open(path, "w")`` would give it (``0o666`` less the process's umask). The pictures, the
data behind them (JSON, NPZ), the text blocks, the run record, the report and ``lightning-viz render``'s
pictures are all written by :func:`atomic_write_bytes` or its JSON / NPZ forms. :func:`unwritable_reason`
probes an output directory once, before training, instead of failing per file.

Not written here, and not replaced whole: ``statistics.csv``, to which
:class:`~lightning_viz.core.sinks.CSVSink` appends rows, and the YAML file ``lightning-viz configs copy``
copies; both use a plain ``open``, which honours the umask too. The background writer's spill files
(:class:`~lightning_viz.core.spill.DiskBacked`) are private temporary files, not output.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    """The process's umask. Read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read (set, then put back at once)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same directory, fsync it, then rename it into place.

    A process killed at any moment leaves either the old file, the new file, or a stray ``.tmp`` file,
    never a truncated ``path``. The file gets the mode a plain ``open(path, "w")`` would give it
    (``0o666`` less the umask), not the owner-only mode of the temporary file, so a teammate or a web
    server can read the pictures and the report as the user's umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise ``obj`` (numpy arrays become lists, NaN stays NaN) and write it atomically."""
    return atomic_write_bytes(path, json.dumps(obj, default=_json_default, indent=1).encode())


def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Save arrays as an uncompressed ``.npz`` atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def unwritable_reason(directory: str | os.PathLike) -> str | None:
    """Why files cannot be written under ``directory`` (created if missing), or ``None`` when they can.

    Creates the directory and writes and removes one temporary file, so a read-only parent, a file in
    the way of a directory, a full disk or missing permissions are found before training, not per file.
    """
    try:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".lightning-viz-probe.", suffix=".tmp")
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    return None

"""Readers of what the real loggers wrote (no mocks): W&B offline run files."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 7-byte file header, 32 KiB blocks of records
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The raw records of an offline ``run-<id>.wandb`` file (W&B's own transaction log)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return records


def wandb_history(run_dir: Path, timeout: float = 60.0) -> list[dict]:
    """Every ``run.log`` row of a finished offline run, parsed with W&B's own protobuf schema.

    W&B's service writes the log in the background: wait (up to ``timeout`` s) for its ``exit`` record.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in wandb_records(log):
            record = pb.Record()
            record.ParseFromString(raw)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]

"""TensorBoard's Projector files for an embedding, written atomically beside the event files.

The layout is the one ``SummaryWriter.add_embedding`` writes and TensorBoard's projector plugin reads: in
the run's log directory a ``projector_config.pbtxt`` (a ``ProjectorConfig`` in protobuf text format) lists
each embedding with the paths, relative to that directory, of its ``tensors.tsv`` (one example per line,
tab-separated), ``metadata.tsv`` (a label per line; with several columns, a header line first) and
``sprite.png`` (the examples' images in a grid of as many rows as columns, row by row). Unlike ``add_embedding`` every file is
written atomically, the values keep every bit of their float32 (``%.9g``), and an existing config is
extended instead of replaced, so a resumed run in the same directory keeps the projector's earlier steps.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightning_viz.core.files import atomic_write_bytes

CONFIG = "projector_config.pbtxt"
MAX_SPRITE_PX = 8192  # the largest sprite side the projector accepts


def _tsv(rows: np.ndarray) -> bytes:
    lines = ["\t".join(f"{v:.9g}" for v in row) for row in np.asarray(rows, dtype=np.float32).tolist()]
    return ("\n".join(lines) + "\n").encode()


def _metadata(columns: dict[str, Sequence[str]]) -> bytes:
    names = list(columns)
    cells = [[str(v).replace("\t", " ").replace("\n", " ") for v in columns[k]] for k in names]
    if len(names) == 1:  # one column: no header (the projector's rule)
        return ("\n".join(cells[0]) + "\n").encode()
    lines = ["\t".join(names)] + ["\t".join(row) for row in zip(*cells, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def sprite(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` images (C 1 or 3, values in [0, 1]) as one ``[k H, k W, 3]`` uint8 grid of
    ``k = ceil(sqrt(N))`` tiles a side, row by row, the unused tiles black (the projector finds a tile by
    the sprite's width over the tile's)."""
    x = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0)
    n, c, h, w = x.shape
    if c == 1:
        x = np.repeat(x, 3, axis=1)
    side = math.ceil(math.sqrt(n))
    grid = np.zeros((side * h, side * w, 3), dtype=np.uint8)
    tiles = np.round(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    for i in range(n):
        r, q = divmod(i, side)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = tiles[i]
    return grid


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def write_embedding(
    logdir: str | Path,
    name: str,
    step: int,
    features: np.ndarray,
    metadata: dict[str, Sequence[str]] | None = None,
    images: np.ndarray | None = None,
) -> str:
    """Write one embedding (``features``: ``[N, D]``) for TensorBoard's projector and list it in the
    directory's ``projector_config.pbtxt``; returns its tensor name (``"<name>:<step>"``, as the projector's
    menu shows it). An entry of the same name (the same step, written again) is replaced.

    Args:
        logdir: the run's log directory (where its event files are).
        name: the embedding's tag, e.g. ``viz/embedding/fc1``.
        step: the global step.
        features: one row per example.
        metadata: column -> one label per example (e.g. ``{"label": [...], "predicted": [...]}``).
        images: ``[N, C, H, W]`` in [0, 1] for the sprite, or ``None``.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo, ProjectorConfig

    root = Path(logdir)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    sub = f"projector/{safe}/step{step:06d}"
    tensor_name = f"{name}:{step}"
    info = EmbeddingInfo(tensor_name=tensor_name, tensor_path=f"{sub}/tensors.tsv")
    info.tensor_shape.extend(list(np.shape(features)))
    atomic_write_bytes(root / sub / "tensors.tsv", _tsv(features))
    if metadata:
        atomic_write_bytes(root / sub / "metadata.tsv", _metadata(metadata))
        info.metadata_path = f"{sub}/metadata.tsv"
    if images is not None and len(images):
        grid = sprite(images)
        if max(grid.shape[:2]) <= MAX_SPRITE_PX:
            atomic_write_bytes(root / sub / "sprite.png", _png(grid))
            info.sprite.image_path = f"{sub}/sprite.png"
            info.sprite.single_image_dim.extend([int(images.shape[3]), int(images.shape[2])])
    config = ProjectorConfig()
    path = root / CONFIG
    if path.is_file():
        text_format.Parse(path.read_text(), config)
    kept = [e for e in config.embeddings if e.tensor_name != tensor_name]
    del config.embeddings[:]
    config.embeddings.extend([*kept, info])
    atomic_write_bytes(path, text_format.MessageToString(config).encode())
    return tensor_name

"""``lightning-viz render <viz-dir>``: redraw every figure from the data saved beside it.

Every figure a callback writes has its data beside it (``<stem>.json`` or ``<stem>.npz``); this tool finds
those files under a directory (recursively), maps each back to its pure render function and writes
``<stem>.png`` again (atomically), for instance after a crash killed the run before its pictures were
drawn, or to redraw everything with another matplotlib style (``--style ggplot``).

=========================================  ==========================================  ========================
data file                                  render function                             figure
=========================================  ==========================================  ========================
``summary.json``                           ``render.summary.render_summary``           ``summary.png``
``weights_evolution_stepN.npz`` (and       ``render.histograms.render_evolution``      same stem ``.png``
``gradients_...``)
``maps_stepN.npz``                         ``render.activations.render_feature_maps``  same stem ``.png``
``heatmaps_stepN.json``                    ``render.activations.render_heatmaps``      same stem ``.png``
``stats.json`` (activation statistics)     ``render.activation_stats.render_activation_stats``  ``stats.png``
``curves.json``                            ``render.curves.render_curves``             ``curves_epochNNN.png``
                                                                                       (its ``figure`` key) and
                                                                                       the earlier epochs'
``health_stepN.json``                      ``render.health.render_health``             same stem ``.png``
``<metric>_epochN.npz`` (with              ``render.metrics.render_metric`` (the       same stem ``.png``
``metric_class``)                          metric rebuilt from its class and init
                                           arguments, drawn with its own ``.plot``)
=========================================  ==========================================  ========================

``curves.json`` holds the whole history behind the latest curves figure; the figure of an earlier epoch
``e`` is drawn again from its points with ``epoch <= e``, as the run drew it.

Which data file belongs to which figure is declared by the callback that writes it (its ``figures``;
:mod:`lightning_viz.core.figures`); the table above lists those declarations. Files that are not the data
of a declared figure (``summary.txt``, other tools' files) are left alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lightning_viz.core import figures
from lightning_viz.core.files import atomic_write_bytes
from lightning_viz.render._figure import close_figure, png_bytes, to_rgba

Loaded = tuple[Callable[[Any], Figure], Any, str]  # (render function, its data, PNG stem)


def _is_activation_stats(d: Any) -> bool:
    layers = d.get("layers") if isinstance(d, Mapping) else None
    return isinstance(layers, Mapping) and all(
        isinstance(h, Mapping) and "step" in h for h in layers.values()
    )


# The checks that a JSON file of a declared figure's name holds that figure's data, by render function:
# data -> (data to draw, PNG stem) or None.
_JSON: dict[str, Callable[[Mapping[str, Any], str], tuple[Any, str] | None]] = {
    "lightning_viz.render.summary:render_summary": lambda d, n: (
        (d, n) if "blocks" in d and "totals" in d else None
    ),
    "lightning_viz.render.curves:render_curves": lambda d, n: (
        (d, str(d.get("figure") or n)) if "series" in d and "panels" in d else None
    ),
    "lightning_viz.render.activations:render_heatmaps": lambda d, n: (
        (d, n) if isinstance(d.get("layers"), list) else None
    ),
    "lightning_viz.render.activation_stats:render_activation_stats": lambda d, n: (
        (d, n) if _is_activation_stats(d) else None
    ),
    "lightning_viz.render.weights:render_weight_pictures": lambda d, n: (
        (d, n) if "matrices" in d and "filters" in d else None
    ),
    "lightning_viz.render.depth:render_depth_profile": lambda d, n: (
        (d, n) if isinstance(d.get("layers"), list) and "steps" in d and "values" in d else None
    ),
    "lightning_viz.render.predictions:render_predictions": lambda d, n: (
        (d, n) if "task" in d and "sample" in d and "worst" in d else None
    ),
    "lightning_viz.render.embedding:render_embedding": lambda d, n: (
        (d, n) if "coords" in d and "explained" in d else None
    ),
    "lightning_viz.render.graph:render_graph": lambda d, n: (d, n) if "dot" in d else None,
    "lightning_viz.render.saliency:render_saliency": lambda d, n: (
        (d, n) if "maps" in d and "method" in d else None
    ),
    "lightning_viz.render.health:render_health": lambda d, n: (
        (d, n) if "grad_norms" in d and "loss_steps" in d else None
    ),
}


def _spec(path: Path) -> figures.FigureSpec | None:
    return figures.spec_for_data(path.name, path.parent.name)


def from_json(path: Path, spec: figures.FigureSpec | None = None) -> Loaded | None:
    """The render function, data and PNG stem of a JSON data file; ``None`` when it is no figure's data.

    Which figure a file holds is declared by the callback that wrote it (``figures``;
    :func:`lightning_viz.core.figures.spec_for_data`; ``spec``: as found there already)."""
    spec = spec or _spec(path)
    check = _JSON.get(spec.render) if spec is not None else None
    if spec is None or check is None:
        return None
    d = json.loads(path.read_text())
    found = check(d, path.stem) if isinstance(d, Mapping) else None
    return None if found is None else (spec.render_function(), found[0], found[1])


def curve_frames(d: Mapping[str, Any], latest: str) -> list[tuple[dict[str, Any], str]]:
    """Every curves figure a ``curves.json`` draws: ``curves_epoch{e}`` from the points with ``epoch <= e``
    for each earlier epoch ``e`` with points, then the latest figure (``latest``) from all of them."""
    m = re.fullmatch(r"curves_epoch(\d+)", latest)
    frames: list[tuple[dict[str, Any], str]] = []
    series_all: Mapping[str, Any] = d.get("series") or {}
    if m:
        last = int(m[1])
        epochs = sorted({int(e) for s in series_all.values() for e in s.get("epoch", []) if int(e) < last})
        for e in epochs:
            series = {}
            for n, s in series_all.items():
                keep = [i for i, x in enumerate(s.get("epoch", [])) if int(x) <= e]
                if keep:
                    series[n] = {**s, **{k: [s[k][i] for i in keep] for k in ("step", "epoch", "value")}}
            panels = [{**p, "series": [n for n in p["series"] if n in series]} for p in d.get("panels", [])]
            data = {**d, "series": series, "panels": [p for p in panels if p["series"]]}
            frames.append((data, f"curves_epoch{e:03d}"))
    frames.append((dict(d), latest))
    return frames


def load(path: Path, spec: figures.FigureSpec | None = None) -> list[Loaded] | None:
    """Every figure a data file draws (a ``curves.json`` draws one per epoch); ``None``: no figure's data."""
    from lightning_viz.render.curves import render_curves

    loaded = from_json(path, spec) if path.suffix == ".json" else from_npz(path, spec)
    if loaded is None:
        return None
    render, data, stem = loaded
    if render is render_curves:
        return [(render, frame, name) for frame, name in curve_frames(data, stem)]
    return [loaded]


def _text(a: np.ndarray) -> str:
    return str(a.item() if a.ndim == 0 else a)


def from_npz(path: Path, spec: figures.FigureSpec | None = None) -> Loaded | None:
    """The render function, data and PNG stem of an NPZ data file; ``None`` when it is no figure's data
    (which figure a file holds is declared by the callback that wrote it, as for :func:`from_json`)."""
    spec = spec or _spec(path)
    if spec is None:
        return None
    kind = spec.render.rpartition(":")[2]
    render = spec.render_function()
    name = path.stem
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if kind == "render_evolution" and "parameters" in keys:
            params = []
            for p in z["parameters"].tolist():
                counts, nonfinite = z[f"{p}/counts"], z[f"{p}/nonfinite"]
                numel = int(counts[-1].sum() + nonfinite[-1]) if len(counts) else 0
                params.append(
                    {
                        "name": p,
                        "numel": numel,
                        "steps": z[f"{p}/steps"],
                        "edges": z[f"{p}/edges"],
                        "counts": counts,
                        "nonfinite": nonfinite,
                    }
                )
            selection = name.split("_evolution_step", 1)[0]
            title = _text(z["title"]) if "title" in keys else f"{selection} over training"
            return render, {"title": title, "params": params}, name
        if kind == "render_feature_maps" and "layer_names" in keys:
            names = z["layer_names"].tolist()

            def meta(key: str, j: int, default: Any) -> Any:
                return z[f"layer_{key}"][j].item() if f"layer_{key}" in keys else default

            layers = [
                {
                    "name": n,
                    "kind": meta("kind", j, "?"),
                    "maps": z[f"maps_{j}"],
                    "channels": z[f"channels_{j}"],
                    "scores": z[f"scores_{j}"],
                    "total_channels": meta("total_channels", j, int(z[f"maps_{j}"].shape[0])),
                    "order": meta("order", j, "mean_activation"),
                    "note": meta("note", j, ""),
                    "nonfinite": meta("nonfinite", j, 0),
                    "shows": meta("shows", j, ""),
                }
                for j, n in enumerate(names)
            ]
            data = {
                "step": int(z["step"]) if "step" in keys else "?",
                "sample_index": int(z["sample_index"]) if "sample_index" in keys else 0,
                "input": z["input"] if "input" in keys else None,
                "input_source": _text(z["input_source"]) if "input_source" in keys else "",
                "color_scale": _text(z["color_scale"]) if "color_scale" in keys else "per_map",
                "layers": layers,
                "not_run": [str(n) for n in z["not_run"]] if "not_run" in keys else [],
            }
            return render, data, name
        if kind == "render_metric" and "metric_class" in keys:  # MetricPlotCallback's <metric>_epochNNN.npz
            from lightning_viz.render.metrics import from_record

            base, _, epoch = name.rpartition("_epoch")
            record = from_record({k: z[k] for k in keys}, base, int(epoch) if epoch.isdigit() else -1)
            return (render, record, name) if record is not None else None
    return None


def find_data(root: Path) -> list[Path]:
    """Every ``.json`` / ``.npz`` file under ``root`` (hidden and temporary files left out), sorted."""
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".json", ".npz") and not p.name.startswith(".")
    ]
    return sorted(files)


_FIND: Any = object()  # redraw_file looks the declared figure up itself


def redraw_file(
    path: Path,
    root: Path,
    out: str | Path | None = None,
    style: str | None = None,
    spec: figures.FigureSpec | None = _FIND,
) -> tuple[list[Path], bool, BaseException | None]:
    """Redraw the figures of one data file: ``(PNG paths written, skipped, error)``; never raises.

    ``spec``: the declared figure the file holds, as the caller found it (``None``: none; a worker process
    then need not import the callbacks to know)."""
    import matplotlib.style

    drawn: list[Path] = []
    try:
        if spec is _FIND:
            spec = _spec(path)
        with matplotlib.style.context(style) if style else nullcontext():
            if spec is None:  # no declared figure's data
                return drawn, True, None
            loaded = load(path, spec)
            if loaded is None:
                return drawn, True, None
            folder = path.parent if out is None else Path(out) / path.parent.relative_to(root)
            for render, data, stem in loaded:
                fig = render(data)
                try:
                    rgba = to_rgba(fig)
                finally:
                    close_figure(fig)
                drawn.append(atomic_write_bytes(folder / f"{stem}.png", png_bytes(rgba)))
    except Exception as err:  # one broken file does not stop the others
        return drawn, False, err
    return drawn, False, None


def _redraw_in_worker(
    path: Path, root: Path, out: str | Path | None, style: str | None, spec: figures.FigureSpec | None
) -> tuple[list[Path], bool, BaseException | None]:
    """:func:`redraw_file` in a worker process, its error made safe to send back."""
    drawn, skipped, err = redraw_file(path, root, out, style, spec)
    if err is not None:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            err = RuntimeError(repr(err))
    return drawn, skipped, err


def default_jobs(n_files: int) -> int:
    """Processes for ``n_files`` data files: one (this process) below 16 files or 4 usable CPUs, where
    starting processes costs more than it saves; else one per 8 files, at most 8 and one CPU left free."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if n_files < 16 or cpus < 4:
        return 1
    return min(8, cpus - 1, n_files // 8)


def redraw(
    root: str | Path, out: str | Path | None = None, style: str | None = None, jobs: int | None = None
) -> dict[str, list]:
    """Redraw every figure under ``root``.

    Args:
        root: a viz directory (``<log_dir>/viz``) or one callback's folder.
        out: where the PNG files go (the data file's folder, mirrored under ``out``); default beside the data.
        style: a matplotlib style name or file applied while drawing.
        jobs: processes drawing at once; default :func:`default_jobs` (1 draws in this process).

    Returns:
        ``{"drawn": [png paths], "skipped": [data paths that are no figure's data], "failed": [(path, error)]}``,
        in the order of the data files.

    Raises:
        OSError: ``style`` is neither a style name nor a readable style file.
    """
    import matplotlib.style

    root = Path(root)
    with matplotlib.style.context(style) if style else nullcontext():  # a bad style fails here, once
        pass
    files = find_data(root)
    specs = [_spec(path) for path in files]  # the declarations are read here, once
    jobs = default_jobs(len(files)) if jobs is None else max(1, int(jobs))
    outcomes: list[tuple[list[Path], bool, BaseException | None]] | None = None
    if jobs > 1:
        try:  # spawned workers: nothing of this process (threads, CUDA, open figures) is inherited
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
                args = (repeat(root), repeat(out), repeat(style))
                outcomes = list(pool.map(_redraw_in_worker, files, *args, specs, chunksize=4))
        except (OSError, BrokenProcessPool, pickle.PicklingError):  # no processes here: draw in this one
            outcomes = None
    if outcomes is None:
        outcomes = [redraw_file(path, root, out, style, spec) for path, spec in zip(files, specs)]
    result: dict[str, list] = {"drawn": [], "skipped": [], "failed": []}
    for path, (drawn, skipped, err) in zip(files, outcomes):
        result["drawn"] += drawn
        if skipped:
            result["skipped"].append(path)
        if err is not None:
            result["failed"].append((path, err))
    return result


def main(argv: list[str]) -> int:
    """``lightning-viz render <viz-dir> [--out DIR] [--style STYLE]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lightning-viz render",
        description="Redraw every figure of a viz directory from the data saved beside it.",
        allow_abbrev=False,
    )
    parser.add_argument("viz_dir", help="a run's viz directory (e.g. runs/quickstart/version_0/viz)")
    parser.add_argument("--out", default=None, help="write the PNG files here instead of beside the data")
    parser.add_argument("--style", default=None, help="matplotlib style to draw with (e.g. ggplot)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes drawing at once (default: up to 8 for many files)"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1; got {args.jobs}")
    root = Path(args.viz_dir)
    if not root.is_dir():
        print(f"lightning-viz render: {str(root)!r} is not a directory", file=sys.stderr)
        return 2
    try:
        result = redraw(root, args.out, args.style, args.jobs)
    except OSError as err:  # e.g. an unknown --style file
        print(f"lightning-viz render: {err}", file=sys.stderr)
        return 2
    for path, err in result["failed"]:
        print(f"lightning-viz render: could not redraw from {path}: {err!r}", file=sys.stderr)
    print(
        f"lightning-viz render: redrew {len(result['drawn'])} figure(s) under {args.out or root}"
        + (f"; {len(result['failed'])} data file(s) failed" if result["failed"] else ""),
        flush=True,
    )
    if not result["drawn"] and not result["failed"]:
        print("lightning-viz render: no figure data found (.json / .npz written by lightning-viz)")
        return 1
    return 1 if result["failed"] else 0

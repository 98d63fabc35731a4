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
``stats.json`` (activation statistics)     ``render.activations.render_activation_stats``  ``stats.png``
``curves.json``                            ``render.curves.render_curves``             ``curves_epochNNN.png``
                                                                                       (its ``figure`` key)
=========================================  ==========================================  ========================

Files that are not the data of a figure (``summary.txt``, other tools' files) are left alone.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lightning_viz.core.writer import atomic_write_bytes
from lightning_viz.render._figure import close_figure, png_bytes, to_rgba

Loaded = tuple[Callable[[Any], Figure], Any, str]  # (render function, its data, PNG stem)


def _is_activation_stats(d: Any) -> bool:
    layers = d.get("layers") if isinstance(d, Mapping) else None
    return isinstance(layers, Mapping) and all(
        isinstance(h, Mapping) and "step" in h for h in layers.values()
    )


def from_json(path: Path) -> Loaded | None:
    """The render function, data and PNG stem of a JSON data file; ``None`` when it is no figure's data."""
    from lightning_viz.render.activations import render_activation_stats, render_heatmaps
    from lightning_viz.render.curves import render_curves
    from lightning_viz.render.summary import render_summary

    d = json.loads(path.read_text())
    if not isinstance(d, Mapping):
        return None
    name = path.stem
    if name == "summary" and "blocks" in d and "totals" in d:
        return render_summary, d, name
    if name == "curves" and "series" in d and "panels" in d:
        return render_curves, d, str(d.get("figure") or name)
    if fnmatch.fnmatch(name, "heatmaps_step*") and isinstance(d.get("layers"), list):
        return render_heatmaps, d, name
    if name == "stats" and _is_activation_stats(d):
        return render_activation_stats, d, name
    return None


def _text(a: np.ndarray) -> str:
    return str(a.item() if a.ndim == 0 else a)


def from_npz(path: Path) -> Loaded | None:
    """The render function, data and PNG stem of an NPZ data file; ``None`` when it is no figure's data."""
    from lightning_viz.render.activations import render_feature_maps
    from lightning_viz.render.histograms import render_evolution

    name = path.stem
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        if "parameters" in keys and "_evolution_step" in name:
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
            return render_evolution, {"title": f"{selection} over training", "params": params}, name
        if "layer_names" in keys and fnmatch.fnmatch(name, "maps_step*"):
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
            return render_feature_maps, data, name
    return None


def find_data(root: Path) -> list[Path]:
    """Every ``.json`` / ``.npz`` file under ``root`` (hidden and temporary files left out), sorted."""
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".json", ".npz") and not p.name.startswith(".")
    ]
    return sorted(files)


def redraw(root: str | Path, out: str | Path | None = None, style: str | None = None) -> dict[str, list]:
    """Redraw every figure under ``root``.

    Args:
        root: a viz directory (``<log_dir>/viz``) or one callback's folder.
        out: where the PNG files go (the data file's folder, mirrored under ``out``); default beside the data.
        style: a matplotlib style name or file applied while drawing.

    Returns:
        ``{"drawn": [png paths], "skipped": [data paths that are no figure's data], "failed": [(path, error)]}``.
    """
    import matplotlib.style

    root = Path(root)
    result: dict[str, list] = {"drawn": [], "skipped": [], "failed": []}
    ctx = matplotlib.style.context(style) if style else nullcontext()
    with ctx:
        for path in find_data(root):
            try:
                loaded = from_json(path) if path.suffix == ".json" else from_npz(path)
                if loaded is None:
                    result["skipped"].append(path)
                    continue
                render, data, stem = loaded
                fig = render(data)
                try:
                    rgba = to_rgba(fig)
                finally:
                    close_figure(fig)
                folder = path.parent if out is None else Path(out) / path.parent.relative_to(root)
                result["drawn"].append(atomic_write_bytes(folder / f"{stem}.png", png_bytes(rgba)))
            except Exception as err:  # one broken file does not stop the others
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
    args = parser.parse_args(argv)
    root = Path(args.viz_dir)
    if not root.is_dir():
        print(f"lightning-viz render: {str(root)!r} is not a directory", file=sys.stderr)
        return 2
    try:
        result = redraw(root, args.out, args.style)
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

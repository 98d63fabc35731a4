"""One self-contained ``report.html`` per run, built from the files the callbacks saved.

``lightning-viz report <viz-dir>`` (or :class:`~lightning_viz.callbacks.report.ReportCallback` at fit end)
reads ``<viz-dir>/<callback>/`` and writes ``<viz-dir>/report.html``: one file with every picture embedded
(base64 PNG), no script or style fetched from anywhere, so it opens from disk, from an artifact store or as
an e-mail attachment. It opens with the run summary (:mod:`lightning_viz.report_summary`: model and data
classes, epochs, steps, wall time, final and best metrics, the resolved config); then sections, each
present when its files are:

* health findings (``training_health/health_summary.json``), first, since they say where to look; the
  per-rank findings (``rank_view/findings.json``) in their section;
* the model summary table (``model_summary/summary.json``; the model's torchmetrics objects are not
  layers and are named below it instead) and its figure;
* every other callback's figures, grouped into series by file stem: ``maps_step000046.png`` and
  ``maps_step000092.png`` are two frames of the series ``maps``, shown one at a time with a step (or epoch)
  slider, under a heading in words. Section and series headings, their order and which series already draw
  the whole history (their latest frame alone is shown: curves, weight/gradient evolution) come from the
  callbacks' declarations (``figures``, ``section_title``, ``report_rank``; :mod:`lightning_viz.core.figures`).

Only files are read, so a report can be rebuilt from a finished or crashed run at any time.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import json
import re
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lightning_viz.core import figures
from lightning_viz.core.figures import FRAME
from lightning_viz.core.files import atomic_write_bytes
from lightning_viz.report_summary import RUN_RECORD, metric_modules, read_json, summary_html, words

REPORT_NAME = "report.html"


@functools.cache
def declared() -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """From the callbacks' declarations (``figures``, ``section_title``, ``report_rank``): the section
    headings by folder in report order, the series headings in the order they are shown within a section,
    and the series whose latest frame already shows the whole history."""
    sections = figures.sections()
    titles = {s.folder: s.title for s in sections}
    specs = [f for s in sections for f in s.figures if f.series != "*"]
    return titles, {f.series: f.title for f in specs}, tuple(f.series for f in specs if f.latest_only)


__all__ = ["REPORT_NAME", "RUN_RECORD", "build_report", "main"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b9c0cc;font-size:12px}nav{padding:8px 24px;background:#e9ecf1}
nav a{margin-right:14px;color:#2a5bd7;text-decoration:none}main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:16px 0;padding:8px 16px 16px}
h2{font-size:17px;margin:8px 0}table.run th{font-weight:600;color:#4a5263;width:8em;vertical-align:top}
details.config summary{cursor:pointer;color:#2a5bd7}details.config pre{background:#f6f7f9;padding:8px;overflow:auto;
max-height:40em;font-size:12px}code{font-size:12px}h3{font-size:14px;margin:14px 0 6px;color:#4a5263}
img{max-width:100%;height:auto;border:1px solid #eef0f3}table{border-collapse:collapse;font-size:12px}
td,th{padding:3px 8px;border-bottom:1px solid #eef0f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.slider{display:flex;align-items:center;gap:10px;margin:6px 0}.slider input{width:min(480px,60vw)}
.frame-label{font-weight:600;min-width:9em}.finding{color:#9a2b12}.ok{color:#1f7a3a}.muted{color:#6b7385}
"""

SCRIPT = """
document.querySelectorAll('.series[data-frames]').forEach(function (box) {
  var slider = box.querySelector('input[type=range]');
  var label = box.querySelector('.frame-label');
  var frames = box.querySelectorAll('figure.frame');
  function show(i) {
    frames.forEach(function (f, j) { f.hidden = (j !== i); });
    label.textContent = frames[i].dataset.label + ' (' + (i + 1) + '/' + frames.length + ')';
    box.dataset.current = frames[i].dataset.label;
  }
  slider.addEventListener('input', function () { show(Number(slider.value)); });
  show(Number(slider.value));
});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" loading="lazy" src="data:image/png;base64,{data}">'


_read_json = read_json


def _series(folder: Path) -> dict[str, list[tuple[str, int, Path]]]:
    """PNG files of a folder grouped by series: name -> [(unit, number, path)] sorted by number."""
    groups: dict[str, list[tuple[str, int, Path]]] = {}
    for png in sorted(folder.glob("*.png")):
        m = FRAME.match(png.stem)
        series, unit, n = (m["series"], m["unit"], int(m["n"])) if m else (png.stem, "", -1)
        groups.setdefault(series, []).append((unit, n, png))
    order = list(declared()[1])
    ranked = sorted(
        groups.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])
    )
    return {k: sorted(v, key=lambda t: t[1]) for k, v in ranked}


def series_title(folder: str, name: str, frames: list[tuple[str, int, Path]]) -> str:
    """The heading of a series, in words: the declared series titles, a metric plot's metric class and name."""
    series_titles = declared()[1]
    if name in series_titles:
        return series_titles[name]
    data = frames[-1][2].with_suffix(".npz")
    if folder == "metric_plot" and data.is_file():
        try:
            with np.load(data, allow_pickle=False) as z:
                cls = str(z["metric_class"]).rsplit(".", 1)[-1] if "metric_class" in z.files else ""
                shown = str(z["name"]) if "name" in z.files else name
        except (OSError, ValueError):
            cls, shown = "", name
        if cls:
            return f"{words(cls)} ({shown})"
    return name.replace("_", " ").capitalize()


def _thin(frames: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` frames, evenly spaced, always keeping the first and the last."""
    if len(frames) <= limit:
        return frames
    picks = sorted({round(i * (len(frames) - 1) / (limit - 1)) for i in range(limit)})
    return [frames[i] for i in picks]


def _series_html(folder: str, name: str, frames: list[tuple[str, int, Path]], max_frames: int) -> str:
    title = series_title(folder, name, frames)
    if name.startswith(declared()[2]) or len(frames) == 1:
        unit, n, path = frames[-1]
        note = f' <span class="muted">({unit} {n})</span>' if unit else ""
        svg = path.with_suffix(".svg")  # a drawing also saved as SVG (the model graph): linked, to zoom
        if svg.is_file():
            href = html.escape(f"{folder}/{svg.name}")
            note += f' <a class="muted" href="{href}">SVG: zoom and search (beside this report)</a>'
        return f'<h3 data-series="{html.escape(name)}">{html.escape(title)}{note}</h3>{_img(path, title)}'
    frames = _thin(frames, max_frames)
    sid = re.sub(r"[^a-zA-Z0-9_-]", "-", f"{folder}-{name}")
    parts = [
        f'<div class="series" id="{sid}" data-frames="{len(frames)}">'
        f'<h3 data-series="{html.escape(name)}">{html.escape(title)}</h3>',
        f'<div class="slider"><input type="range" id="slider-{sid}" min="0" max="{len(frames) - 1}" '
        f'value="{len(frames) - 1}" step="1" aria-label="{html.escape(title)} frame">'
        '<span class="frame-label"></span></div>',
    ]
    for i, (unit, n, path) in enumerate(frames):
        hidden = "" if i == len(frames) - 1 else " hidden"
        parts.append(
            f'<figure class="frame" data-label="{unit} {n}"{hidden}>{_img(path, f"{title} {unit} {n}")}</figure>'
        )
    parts.append("</div>")
    return "".join(parts)


def _summary_html(summary: dict[str, Any], metrics: Collection[str] = ()) -> str:
    """The model summary table; rows of torchmetrics objects (flagged by ModelSummaryCallback, or named in
    the run record) and what lies inside them are left out and named in one line below."""

    def is_metric(row: dict[str, Any]) -> bool:
        name = str(row.get("name", ""))
        return bool(row.get("metric")) or any(name == m or name.startswith(f"{m}.") for m in metrics)

    rows = summary.get("rows") or []
    tops = [r for r in rows if is_metric(r)]
    tops = [r for r in tops if not any(str(r["name"]).startswith(f"{t['name']}.") for t in tops)]
    totals = summary.get("totals") or {}
    head = ", ".join(
        f"{k.replace('_', ' ')}: {v:,}" for k, v in totals.items() if isinstance(v, (int, float))
    )
    shape = summary.get("input_shape")
    out = [f"<p><b>{html.escape(str(summary.get('model', '')))}</b>"]
    out.append(f" on an input of shape {html.escape(str(shape))}" if shape else "")
    out.append(f"<br>{html.escape(head)}</p>" if head else "</p>")
    cols = ("name", "type", "output_shape", "params", "trainable", "mult_adds")
    out.append(
        "<table><thead><tr>"
        + "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
        + "</tr></thead><tbody>"
    )
    for row in rows:
        if is_metric(row) or any(str(row.get("name", "")).startswith(f"{t['name']}.") for t in tops):
            continue
        cells = []
        for c in cols:
            v = row.get(c, "")
            if c == "name":
                pad = "&nbsp;" * 3 * max(int(row.get("depth", 1)) - 1, 0)
                cells.append(f"<td>{pad}{html.escape(str(v))}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{v:,}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if tops:
        named = ", ".join(f"{r['name']} ({r.get('type', '?')})" for r in tops)
        out.append(
            f'<p class="muted">torchmetrics objects the model holds (not layers): {html.escape(named)}</p>'
        )
    out += [f'<p class="muted">{html.escape(str(n))}</p>' for n in summary.get("notes") or []]
    return "".join(out)


def _health_html(health: Any) -> str:
    findings = health.get("findings") if isinstance(health, dict) else health
    if not isinstance(findings, list):
        return f"<pre>{html.escape(json.dumps(health, indent=1))}</pre>"
    if not findings:
        out = ['<p class="ok">No problem found.</p>']
    else:
        out = [f'<p class="finding">{len(findings)} finding(s):</p><table><thead><tr>']
        out.append("<th>step</th><th>check</th><th>layer</th><th>finding</th></tr></thead><tbody>")
        for f in findings:
            f = f if isinstance(f, dict) else {"message": f}
            rank = f"rank {f['rank']}" if f.get("rank") is not None else ""  # RankViewCallback's findings
            where = f.get("layer", "") or rank
            cells = [f.get("step", ""), f.get("check", f.get("kind", "")), where, f.get("message", "")]
            out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        out.append("</tbody></table>")
    for k, v in (health.get("unavailable") or {}).items() if isinstance(health, dict) else []:
        out.append(f'<p class="muted">not checked: {html.escape(str(k))}: {html.escape(str(v))}</p>')
    return "".join(out)


def build_report(viz_dir: str | Path, out: str | Path | None = None, *, max_frames: int = 60) -> Path:
    """Write the report of a viz directory; return its path (default ``<viz_dir>/report.html``).

    Args:
        viz_dir: a run's ``viz`` directory (one folder per callback).
        out: where to write the HTML file.
        max_frames: most frames per slider; longer series are thinned evenly (first and last kept).
    """
    viz_dir = Path(viz_dir)
    if (viz_dir / "viz").is_dir():  # a run directory was given
        viz_dir = viz_dir / "viz"
    if not viz_dir.is_dir():
        raise FileNotFoundError(f"no viz directory at {str(viz_dir)!r}")
    out = Path(out) if out is not None else viz_dir / REPORT_NAME
    folders = [p for p in viz_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    order = list(declared()[0])  # any other folder follows in alphabetical order
    folders.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    sections: list[tuple[str, str, str]] = [("run", "Run summary", summary_html(viz_dir))]
    metrics = metric_modules(viz_dir)
    for folder in folders:
        body = []
        if folder.name == "training_health" and (folder / "health_summary.json").exists():
            body.append(_health_html(_read_json(folder / "health_summary.json")))
        if folder.name == "rank_view" and (folder / "findings.json").exists():  # which rank departs
            body.append(_health_html(_read_json(folder / "findings.json")))
        summary = _read_json(folder / "summary.json") if (folder / "summary.json").exists() else None
        if isinstance(summary, dict) and "rows" in summary:
            body.append(_summary_html(summary, metrics))
        body += [_series_html(folder.name, k, v, max_frames) for k, v in _series(folder).items()]
        if body:
            title = declared()[0].get(folder.name) or folder.name.replace("_", " ").capitalize()
            sections.append((folder.name, title, "".join(body)))

    run = viz_dir.parent
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>lightning-viz report: {html.escape(run.name)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>lightning-viz report: {html.escape(str(run))}</h1>",
        f"<p>built {when} from {html.escape(str(viz_dir))}</p></header><nav>{nav}</nav><main>",
    ]
    if len(sections) == 1:
        parts.append("<section><p>No pictures were saved in this directory yet.</p></section>")
    parts += [f'<section id="{a}"><h2>{html.escape(t)}</h2>{b}</section>' for a, t, b in sections]
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    atomic_write_bytes(out, "".join(parts).encode())
    return out


def main(argv: Sequence[str]) -> int:
    """``lightning-viz report <viz-dir> [--out FILE] [--max-frames N]``: rebuild the report of a run."""
    parser = argparse.ArgumentParser(prog="lightning-viz report", description=__doc__.split("\n")[0])
    parser.add_argument("viz_dir", help="a run's viz directory, e.g. runs/quickstart/version_0/viz")
    parser.add_argument("--out", default=None, help="output file (default: <viz_dir>/report.html)")
    parser.add_argument("--max-frames", type=int, default=60, help="most frames per slider (default 60)")
    args = parser.parse_args(list(argv))
    if args.max_frames < 2:
        parser.error(f"--max-frames must be >= 2; got {args.max_frames}")
    try:
        path = build_report(args.viz_dir, args.out, max_frames=args.max_frames)
    except FileNotFoundError as err:
        print(f"lightning-viz report: {err}")
        return 2
    print(f"lightning-viz: report is {path}")
    return 0

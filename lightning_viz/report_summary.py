"""The run summary at the top of ``report.html``: what ran, for how long, how it ended, and its config.

Built from files only, so ``lightning-viz report`` gives the same summary on a finished, crashed or killed
run:

* ``<viz>/run.json``, the run record :class:`~lightning_viz.callbacks.report.ReportCallback` writes when
  training starts, after each training epoch and when fit ends or fails: model and data class paths,
  epochs and optimizer steps, wall time, status, the last logged metrics, the torchmetrics objects the
  model holds, where the config was saved;
* ``<viz>/curves/curves.json`` (:class:`~lightning_viz.callbacks.curve_plot.CurvePlotCallback`): the final
  and best value of each metric, best in the direction the curves use (torchmetrics' ``higher_is_better``,
  a monitoring callback's ``mode``, the ``loss`` name, or ``mode``); no best where none is known;
* the resolved config LightingCLI saved (``config.yaml`` in the trainer's log directory, the viz
  directory's parent by default), shown in a collapsible block.

Without ``run.json`` (a run without ReportCallback, or killed before training started) the summary says
so and shows what the other files tell: the model class from the config or the model summary, the epochs
and steps the curves reached.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from lightning_viz.render.curves import best_index

RUN_RECORD = "run.json"
CONFIG_NAME = "config.yaml"
CONFIG_MAX_BYTES = 256_000


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_run(viz_dir: Path) -> dict[str, Any] | None:
    run = read_json(viz_dir / RUN_RECORD)
    return run if isinstance(run, dict) else None


def config_path(viz_dir: Path, run: dict[str, Any] | None) -> Path | None:
    """The saved config: the path the run recorded, else its name (or ``config.yaml``) beside ``viz``."""
    recorded = (run or {}).get("config_file")
    candidates = [Path(recorded), viz_dir.parent / Path(recorded).name] if recorded else []
    candidates.append(viz_dir.parent / CONFIG_NAME)
    return next((p for p in candidates if p.is_file()), None)


def when_text(iso: Any) -> str:
    """``2026-12-02T15:51:08+00:00`` -> ``2026-12-02 15:51:08 UTC`` (anything else as it is)."""
    text = str(iso)
    return text.replace("T", " ").replace("+00:00", " UTC") if re.match(r"^\d{4}-\d\d-\d\dT", text) else text


def duration_text(seconds: float) -> str:
    s = round(seconds)
    if s < 1:
        return f"{seconds:.2f} s"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def metric_rows(curves: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per curve of ``curves.json``: the final point, and the best one when a direction is known.

    Order: the curves' panels (loss, accuracy, ...), learning rates last.
    """
    series: dict[str, Any] = curves.get("series") or {}
    order = [n for p in curves.get("panels") or [] for n in p.get("series", []) if n in series]
    order += [n for n in sorted(series) if n not in order]
    order.sort(key=lambda n: series[n].get("mode_from") == "learning rate")  # stable: lr last
    rows = []
    for name in dict.fromkeys(order):
        s = series[name]
        values = s.get("value") or []
        if not values:
            continue
        row: dict[str, Any] = {
            "name": name,
            "final": float(values[-1]),
            "final_step": s["step"][-1],
            "final_epoch": s["epoch"][-1],
            "mode": s.get("mode"),
            "mode_from": s.get("mode_from") or "",
        }
        i = best_index(values, s.get("mode"))
        if i is not None:
            row.update(best=float(values[i]), best_step=s["step"][i], best_epoch=s["epoch"][i])
        rows.append(row)
    return rows


def _num(v: float) -> str:
    return f'<td class="num" data-value="{v!r}">{v:.4g}</td>'


def _direction(row: dict[str, Any]) -> str:
    src = html.escape(str(row["mode_from"]))
    if row["mode"] == "min":
        return f"lower is better ({src})"
    if row["mode"] == "max":
        return f"higher is better ({src})"
    return "learning rate" if row["mode_from"] == "learning rate" else "direction not known"


def _metrics_html(curves: Any, run: dict[str, Any] | None) -> str:
    if isinstance(curves, dict) and curves.get("series"):
        out = [
            '<table class="metrics"><thead><tr><th>metric</th><th>final</th><th>at</th><th>best</th>'
            "<th>at</th><th>best means</th></tr></thead><tbody>"
        ]
        for r in metric_rows(curves):
            at = f"step {r['final_step']}, epoch {r['final_epoch']}"
            best = (
                _num(r["best"]) + f"<td>step {r['best_step']}, epoch {r['best_epoch']}</td>"
                if "best" in r
                else '<td class="muted">&ndash;</td><td></td>'
            )
            out.append(
                f'<tr data-metric="{html.escape(r["name"])}"><td>{html.escape(r["name"])}</td>'
                f"{_num(r['final'])}<td>{at}</td>{best}<td>{_direction(r)}</td></tr>"
            )
        out.append(
            '</tbody></table><p class="muted">Steps as the loggers number them (a metric logged at the end of '
            "an epoch sits at the last step of that epoch, as in TensorBoard); epochs count from 0.</p>"
        )
        return "".join(out)
    logged = (run or {}).get("metrics") or {}
    if not logged:
        return '<p class="muted">No metric was recorded.</p>'
    out = ['<table class="metrics"><thead><tr><th>metric</th><th>final</th></tr></thead><tbody>']
    out += [
        f'<tr data-metric="{html.escape(n)}"><td>{html.escape(n)}</td>{_num(float(v))}</tr>'
        for n, v in logged.items()
    ]
    out.append("</tbody></table>")
    out.append(
        '<p class="muted">Final values as logged at the last record; add CurvePlotCallback to see the best '
        "value of each metric.</p>"
    )
    return "".join(out)


def _config_html(path: Path | None) -> str:
    if path is None:
        return (
            '<p class="muted">No resolved config was saved with this run (LightningCLI writes '
            f"{CONFIG_NAME} into the log directory).</p>"
        )
    raw = path.read_bytes()
    text = raw[:CONFIG_MAX_BYTES].decode("utf-8", "replace")
    cut = f" (first {CONFIG_MAX_BYTES:,} of {len(raw):,} bytes)" if len(raw) > CONFIG_MAX_BYTES else ""
    return (
        f'<details class="config"><summary>Resolved config ({html.escape(path.name)}, '
        f"{text.count(chr(10))} lines{cut})</summary><pre>{html.escape(text)}</pre></details>"
    )


def _from_config(path: Path | None) -> dict[str, str]:
    """``{"model": class path, "data": class path}`` as far as a LightningCLI config names them."""
    if path is None:
        return {}
    try:
        import yaml

        cfg = yaml.safe_load(path.read_text())
    except Exception:
        return {}
    out = {}
    for key in ("model", "data"):
        part = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(part, dict) and isinstance(part.get("class_path"), str):
            out[key] = part["class_path"]
    return out


def _status_html(run: dict[str, Any]) -> str:
    status, when = run.get("status"), html.escape(when_text(run.get("updated", "?")))
    if status == "finished":
        return f'<span class="ok">finished</span> ({when})'
    if status in ("failed", "interrupted"):
        err = html.escape(str(run.get("error") or ""))
        return f'<span class="finding">{status}</span> ({when}): <code>{err}</code>'
    return (
        f'<span class="finding">did not reach the end of fit</span>: killed, or still running; '
        f"this is its last record ({when})"
    )


def summary_html(viz_dir: Path) -> str:
    """The body of the report's "Run summary" section."""
    run = read_run(viz_dir)
    curves = read_json(viz_dir / "curves" / "curves.json")
    config = config_path(viz_dir, run)
    items: list[tuple[str, str]] = []
    code = lambda v: f"<code>{html.escape(str(v))}</code>"  # noqa: E731
    if run is not None:
        items.append(("Model", code(run.get("model"))))
        data = run.get("data")
        kind = f" ({html.escape(str(run.get('data_kind')))})" if data else ""
        items.append(("Data", code(data) + kind if data else '<span class="muted">not recorded</span>'))
        items.append(("Status", _status_html(run)))
        max_epochs = run.get("max_epochs")
        cap = f" (max_epochs {max_epochs})" if max_epochs not in (None, -1) else ""
        done = "" if run.get("status") == "finished" else " completed"
        epochs = run.get("epochs")
        items.append(("Epochs", f'<span data-epochs="{epochs}">{epochs}</span>{done}{cap}'))
        max_steps = run.get("max_steps")
        cap = f" (max_steps {max_steps})" if max_steps not in (None, -1) else ""
        steps = run.get("global_step")
        items.append(("Steps", f'<span data-steps="{steps}">{steps}</span> optimizer steps{cap}'))
        items.append(
            (
                "Duration",
                f'<span data-seconds="{run.get("duration_s")}">{duration_text(float(run.get("duration_s") or 0))}'
                f"</span> wall time of the fit, started {html.escape(when_text(run.get('started')))}",
            )
        )
        t = run.get("trainer") or {}
        if t:
            items.append(
                (
                    "Trainer",
                    html.escape(
                        f"{t.get('accelerator')}, {t.get('world_size')} process(es), precision "
                        f"{t.get('precision')}, {t.get('strategy')}"
                    ),
                )
            )
        if run.get("ckpt_path"):
            items.append(("Resumed from", code(run["ckpt_path"])))
    else:
        known = _from_config(config)
        summary = read_json(viz_dir / "model_summary" / "summary.json")
        model = known.get("model") or (summary or {}).get("model")
        items.append(("Model", code(model) if model else '<span class="muted">not recorded</span>'))
        if known.get("data"):
            items.append(("Data", code(known["data"])))
        series = (curves or {}).get("series") or {} if isinstance(curves, dict) else {}
        steps = [x for s in series.values() for x in s.get("step", [])]
        epochs = [x for s in series.values() for x in s.get("epoch", [])]
        if steps:
            items.append(
                ("Reached", f"epoch index {max(epochs)}, step {max(steps)} (the learning curves' last point)")
            )
        items.insert(
            0,
            (
                "Record",
                f'<span class="muted">no {RUN_RECORD} in this directory (it is written by ReportCallback); '
                "what the other files show:</span>",
            ),
        )
    out = ['<table class="run"><tbody>']
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items]
    out.append("</tbody></table><h3>Metrics</h3>")
    out.append(_metrics_html(curves, run))
    out.append("<h3>Config</h3>" + _config_html(config))
    return "".join(out)


def metric_modules(viz_dir: Path) -> set[str]:
    """Names of the model's torchmetrics objects, as the run recorded them."""
    return set((read_run(viz_dir) or {}).get("metric_modules") or [])


def words(class_name: str) -> str:
    """``MulticlassConfusionMatrix`` -> ``Multiclass confusion matrix`` (acronyms such as ROC kept)."""
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*|[a-z0-9]+", class_name)
    return " ".join(p if i == 0 or p.isupper() else p.lower() for i, p in enumerate(parts)) or class_name

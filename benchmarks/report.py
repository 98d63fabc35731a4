"""RESULTS.md from results.json (and results_gpu.json when a GPU run was added)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = {
    "suite_overhead_ratio": ("<=", 1.02),  # steady state, a core left for the rest (the setting users have)
    "hist_speedup_vs_tensorboard": (">=", 8.0),
    "hist_speedup_vs_wandb": (">=", 2.0),
    "hist_vs_floor": ("<=", 3.0),  # ours over one read of the same tensors; ~2 is the limit
    "figure_latency_s": ("<=", 10.0),  # a core left for the rest; see "Pictures while training runs"
    "figure_latency_all_busy_s": ("<=", 10.0),  # every core trains
    "quickstart_whole_ratio": ("<=", 1.5),  # whole processes; see "The quickstart as a newcomer runs it"
    "rss_growth_mb_per_1000_steps": ("<", 1.0),
    "open_figures_at_end": ("==", 0),
}


# reported beside the targets, with none of their own
REPORTED = {"suite_overhead_all_busy_ratio": "every core trains: the second row"}


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _met(key: str, v: Any) -> str:
    if v is None:
        return "not measured"
    op, t = TARGETS[key]
    ok = {"<=": v <= t, ">=": v >= t, "<": v < t, "==": v == t}[op]
    return "met" if ok else "**missed**"


def _machine(m: dict) -> str:
    s = f"{m['cpu']}, {m['logical_cores']} logical cores, {m['memory_gb']} GB RAM, torch {m['torch']} with {m['torch_threads']} threads"
    if m.get("gpu"):
        s += f", GPU {m['gpu']}"
    if m.get("load_average_at_start"):
        s += f", load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}"
    return s + f", wandb {m.get('wandb')}, Python {m['python']}"


def _arm_table(block: dict) -> list[str]:
    lines = [
        "| arm | steady-state step time / B0 | one-off extra (s) | whole fit / B0 | logging-step time / B0 | other steps / B0 | logging-step excess (ms) | peak RSS (MB) | RSS growth in a fit (MB) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in block["arms"]:
        lines.append(
            f"| {r['arm']} | {_f(r.get('steady_ratio'), '{:.3f}')} | {_f(r.get('fixed_extra_seconds'), '{:+.2f}')} | "
            f"{_f(r['amortized_ratio'], '{:.3f}')} | {_f(r['logging_step_ratio'])} | "
            f"{_f(r['non_logging_step_ratio'], '{:.3f}')} | {_f(r['logging_step_excess_ms'], '{:.1f}')} | "
            f"{_f(r['peak_rss_mb'], '{:.0f}')} | {_f(r['rss_growth_mb'], '{:+.1f}')} | {r['note']} |"
        )
    b0 = block["arms"][0]
    lines.append("")
    lines.append(
        f"B0: {b0['b0_step_ms']:.2f} ms per training step (median), "
        + (
            f"{b0['b0_steady_ms']:.2f} ms per step in the steady state (validation and epoch ends included), "
            if b0.get("b0_steady_ms") is not None
            else ""
        )
        + f"{b0['b0_amortized_ms']:.2f} ms per step over the whole fit (fit start and end included); "
        f"{block['rounds']} rounds, {b0['steps_per_fit']} steps per fit."
    )
    return lines


def ratio_spread(way: list[float], ours: list[float], tolerance: float = 0.25) -> dict[str, Any]:
    """The per-round ratios ``way[r] / ours[r]`` (the rounds are interleaved, so each pair shares the
    machine's state): their median, range, and whether every one lies within ``tolerance`` of the median."""
    import numpy as np

    r = np.array([w / o for w, o in zip(way, ours) if o > 0])
    if not r.size:
        return {"median": None, "low": None, "high": None, "resolved": False}
    med = float(np.median(r))
    return {
        "median": med,
        "low": float(r.min()),
        "high": float(r.max()),
        "resolved": bool(np.all(np.abs(r / med - 1) <= tolerance)),
    }


def _hist_table(h: dict) -> list[str]:
    med = h["median_seconds"]
    lines = [
        f"{h['tensors']} tensors ({h['elements'] / 1e6:.1f} M values: every parameter and gradient of resnet50 after "
        f"one backward pass on input {h['input']}), on {h['device']}, median of {h['rounds']} interleaved rounds "
        "(ours and the floor, tens of milliseconds: each round's time is the median of 5 back-to-back runs):",
        "",
        "| way | seconds per logging step | CPU seconds (all threads) | ours is faster by | that ratio per round | |",
        "|---|---|---|---|---|---|",
    ]
    import numpy as np

    for k, v in med.items():
        cpu = float(np.median(h["cpu_seconds"][k]))
        if k == "ours":
            lines.append(f"| {k} | {v:.3f} | {cpu:.3f} | | | |")
            continue
        spread = ratio_spread(h["seconds"][k], h["seconds"]["ours"])
        speed = f"{v / med['ours']:.1f}x" if k != "floor" else f"takes {med['ours'] / v:.2f}x the floor"
        rounds = f"{spread['low']:.2f} to {spread['high']:.2f}"
        verdict = "resolved" if spread["resolved"] else "**unresolved** (rounds vary by more than ±25%)"
        lines.append(f"| {k} | {v:.3f} | {cpu:.3f} | {speed} | {rounds} | {verdict} |")
    lines.append("")
    lines.append(
        "A ratio is *resolved* when every round's ratio (the way's time over ours in the same round) lies "
        "within ±25% of their median; `hist_vs_floor` is ours over the floor, a sum over each tensor (one "
        "read of the same memory)."
    )
    lines.append("")
    verdict = "yes" if h["exact"] else f"NO ({h['mismatches']} mismatches)"
    lines.append(
        f"Counts equal `numpy.histogram` on the same edges for all {h['exactness_checked']} tensors checked "
        f"(the {h['tensors']} above, a constant tensor, a tensor with NaN and Inf): {verdict}."
    )
    return lines


def _soak_floor(s: dict) -> list[str]:
    """Supplementary view of the soak: the lowest RSS of each epoch (rendering at epoch ends makes a sawtooth)."""
    import numpy as np

    per = int(s.get("steps_per_epoch", 256))
    floors: dict[int, tuple[int, float]] = {}
    for step, mb in s.get("rss_samples", []):
        e = int(step) // per
        if e not in floors or mb < floors[e][1]:
            floors[e] = (int(step), float(mb))
    full = [floors[e] for e in sorted(floors) if e * per >= 0.2 * s["steps"] and (e + 1) * per <= s["steps"]]
    if len(full) < 3:
        return []
    slope = float(np.polyfit([a for a, _ in full], [b for _, b in full], 1)[0] * 1000)
    values = ", ".join(f"{b:.0f}" for _, b in full)
    return [
        f"Supplementary (not the target metric): RSS rises and falls by tens of MB within each {per}-step epoch "
        f"(figures are rendered at epoch ends), so the slope above is dominated by where samples fall in that "
        f"sawtooth. The lowest RSS of each complete epoch after the warm-up ({values} MB) has a slope of "
        f"{slope:+.2f} MB per 1000 steps.",
        "",
    ]


def _median(values: list[float]) -> float:
    import numpy as np

    return float(np.median(values))


def _overhead_section(o: dict) -> list[str]:
    ratios = ", ".join(f"{x:.3f}" for x in o["ratios"])
    aa = ", ".join(f"{x:.3f}" for x in o["aa_ratios"])
    lo, hi = o["b0_steady_ms_range"]
    core_free = o.get("setting") == "core_free"
    where = (
        f"both in fresh processes pinned to the same core (cores {o['cores'][0]} and {o['cores'][1]} in turn, "
        "every two rounds) with one torch thread each, which one starts first alternating every round; the "
        "suite's render process and every thread of both processes but the training thread (writer threads, the "
        "logger's event-file thread) are pinned to the other core, so the suite's figures are drawn there while it "
        "trains (a core left for the rest, as on a GPU machine; the training thread still shares the GIL with "
        "those threads)"
        if core_free and o.get("cores")
        else f"each in a fresh process pinned to its own core (cores {o['cores'][0]} and {o['cores'][1]}) with one torch "
        "thread, which one starts first alternating every round and the cores every two rounds; the suite's render process inherits the pinning, so drawing is "
        "charged to the suite's core: its figures are drawn while its training thread waits for them "
        "(`lightning_viz/core/pacing.py`, at most a quarter of its time)"
        if o.get("cores")
        else "each in a fresh process with one torch thread (this platform cannot pin processes to cores)"
    )
    title = (
        "## Full suite beside no callbacks, a core left for the rest (the headline `suite_overhead_ratio`)"
        if core_free
        else "## Full suite beside no callbacks, every core training (`suite_overhead_all_busy_ratio`)"
    )
    lines = [
        title,
        "",
        f"The example CNN ({o['steps_per_epoch']} steps per epoch) with the quickstart's four core callbacks at "
        f"their default settings, and B0, trained at the same time, {where}. Both fits of a round start "
        f"together once both processes are warm; {o['epochs_per_fit']} epochs per fit, epochs 3 to "
        f"{o['epochs_per_fit'] - 1} timed in both (steady state: validation and epoch-end work included; not the "
        "first two epochs, during which the suite's render process starts and imports matplotlib at normal "
        "priority on the same core, nor the last, with the fit-end flush), and B0 trains two epochs more so that "
        "the suite's timed epochs never run "
        f"beside an idle core. {o['rounds']} rounds. B0: {o['b0_steady_ms']:.2f} ms per step (median; "
        f"{lo:.2f} to {hi:.2f} ms over the rounds: the machine's speed wanders, which is why the two arms run "
        "side by side rather than one after the other).",
        "",
        f"- Suite / B0 per round: {ratios}. **Median {o['median_ratio']:.3f}**, interquartile range "
        f"{o['ratio_iqr'][0]:.3f} to {o['ratio_iqr'][1]:.3f}.",
    ]
    if o["aa_ratios"]:
        lines.append(
            f"- A/A check, B0 beside B0 in the same set-up (identical work): {aa}; median distance from 1: "
            f"{o['aa_median_abs_dev']:.3f}. A single round's ratio is not resolved better than that; the median of "
            f"{o['rounds']} rounds, to roughly that over the square root of {o['rounds']}: "
            f"±{o['aa_median_abs_dev'] / o['rounds'] ** 0.5:.3f}."
        )
    if o.get("started_second_over_first"):
        order = o["started_second_over_first"]
        lines.append(
            f"- Start order: over all {len(order)} pairs, the fit started second / the one started first: median "
            f"{_median(order):.3f}. Each arm starts first in half the rounds, so this cancels in the ratios above."
        )
    lines += [
        "- The one-off costs (start-up, the fit-end flush of figures that waited for an idle core) are not in "
        "this ratio; the example CNN table below reports them per arm (`one-off extra`, `whole fit / B0`).",
        "",
    ]
    return lines


def _latency_section(lat: dict) -> list[str]:
    """The two rows of ``figure_latency_s``: a core left for the rest, and every core training."""
    from lightning_viz.core import pacing, writer

    names = {
        "core_free": "a core left for the rest (torch threads = cores - 1)",
        "all_busy": "every core trains (pinned to one core, one torch thread; the render process too)",
    }
    lines = [
        "## Pictures while training runs (`figure_latency_s`)",
        "",
        f"The full suite at its default settings on the example CNN, {lat['epochs_per_fit']} epochs of "
        f"{lat['steps_per_epoch']} steps per fit, each fit in a fresh process, {lat['rounds']} per setting. An "
        "epoch's latency: from its `on_train_epoch_end` to the moment the last of its cumulative figures (curves, "
        "weight and gradient evolution, activation statistics), or a newer version of it, is written as a PNG; "
        "median over the epochs of all fits, the last epoch of each left out (its figures come from the fit-end "
        f"flush). Cumulative figures are redrawn at most every {writer.REDRAW_EVERY_S:g} s; when one is late "
        f"the training thread waits for it, at most {pacing.WAIT_AT_MOST_S:g} s at a time and "
        f"{pacing.WAIT_SHARE:.0%} of its time in all (`lightning_viz/core/pacing.py`).",
        "",
        "| setting | cores | epoch (s) | median latency (s) | 90th percentile (s) | max (s) | epochs | training "
        "waited (share of its time) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("core_free", "all_busy"):
        r = lat.get(key)
        if not r:
            continue
        lines.append(
            f"| {names[key]} | {r['cores']} | {_f(r['epoch_seconds'], '{:.1f}')} | "
            f"**{_f(r['figure_latency_s'], '{:.1f}')}** | {_f(r['latency_p90_s'], '{:.1f}')} | "
            f"{_f(r['latency_max_s'], '{:.1f}')} | {r['epochs_measured']} | "
            f"{_f(r['training_waited_share'], '{:.1%}')} |"
        )
    lines.append("")
    return lines


def _soak_fill(s: dict) -> list[str]:
    """The soak's first 3000 steps on their own: growth while bounded buffers fill, next to the long run's."""
    import numpy as np

    early = s.get("rss_growth_first_3000_steps")
    if early is None or s["steps"] <= 3000:
        return []
    samples = s.get("rss_samples", [])
    per = max(s["steps"] // 5, 1)
    fifths = []
    for k in range(5):
        part = [mb for step, mb in samples if k * per <= step < (k + 1) * per]
        if part:
            fifths.append(f"{np.median(part):.0f}")
    return [
        f"The same slope over the first 3000 steps alone (from step 600): {early:.2f} MB per 1000 steps. Memory "
        f"grows while bounded buffers fill (the weight-histogram history reaches `max_history` snapshots, caches "
        f"in the render process fill) and then stays level: median RSS of each fifth of the run: "
        f"{', '.join(fifths)} MB. A 3000-step soak cannot tell that apart from a leak; this one runs "
        f"{s['steps']} steps for that reason.",
        "",
    ]


def write_results_md(folder: Path) -> Path:
    folder = Path(folder)
    cpu = json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else None
    gpu_path = folder / "results_gpu.json"
    gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else None
    lines = ["# lightning-viz overhead benchmark", ""]
    if cpu:
        lines += [
            f"Command: `{cpu['command']}` (took {cpu['wall_seconds'] / 60:.1f} min). "
            f"Machine: {_machine(cpu['machine'])}."
            + (" **Quick smoke run: numbers not meaningful.**" if cpu["quick"] else ""),
            "",
            *[line for note in cpu.get("notes", []) for line in (f"> {note}", ">")][:-1],
            *([""] if cpu.get("notes") else []),
            "## Headline (CPU reference)",
            "",
            "| result | value | target | |",
            "|---|---|---|---|",
        ]
        for key, (op, t) in TARGETS.items():
            v = cpu.get(key)
            shown = _f(v, "{:.3f}") if isinstance(v, float) or v is None else str(v)
            lines.append(f"| `{key}` | {shown} | {op} {t} | {_met(key, v)} |")
        for key, what in REPORTED.items():
            lines.append(f"| `{key}` | {_f(cpu.get(key), '{:.3f}')} | none ({what}) | |")
        lines += [""]
        if "overhead_core_free" in cpu:
            lines += _overhead_section(cpu["overhead_core_free"])
        if "overhead" in cpu:
            lines += _overhead_section(cpu["overhead"])
        if "latency" in cpu:
            lines += _latency_section(cpu["latency"])
        if "quickstart" in cpu:
            from benchmarks.quickstart import section

            lines += section(cpu["quickstart"])
        if "figures" in cpu:
            from benchmarks.figures import section as figure_section

            lines += figure_section(cpu["figures"])
        if "histograms" in cpu:
            lines += [
                "## resnet50: weight + gradient histograms per logging step",
                "",
                *_hist_table(cpu["histograms"]),
                "",
            ]
        if "drawing" in cpu:
            d = cpu["drawing"]
            med = d["median_step_ms"]
            alone = med["alone"]
            lines += [
                "## Why figures are drawn in a separate process",
                "",
                f"Median training-step time of the example CNN (plain PyTorch loop, batch 64) while a weight-evolution "
                f"figure (10 parameters x 20 steps) is drawn over and over beside it; {d['rounds']} interleaved rounds "
                f"of {d['steps']} steps:",
                "",
                "| while | ms per step | / alone |",
                "|---|---|---|",
                *[f"| {k} | {v:.2f} | {v / alone:.2f} |" for k, v in med.items()],
                "",
            ]
        if "cnn" in cpu:
            c = cpu["cnn"]
            lines += [
                f"## Example CNN ({c['setup']['model']}; {c['setup']['data']}; {c['setup']['epochs_per_fit']} epochs "
                f"of {c['setup']['steps_per_epoch']} steps per fit)",
                "",
                "Each arm alone, the arms one after another within a round (interleaved over the rounds, not side "
                "by side): a ratio tells an arm's cost only to within the machine's drift over a round, which on "
                "this shared 2-core machine reaches 20% (arms that do nothing per step, such as ModelGraph, read "
                "0.8). The overhead headline above is measured side by side.",
                "",
                *_arm_table(c),
                "",
            ]
        if "resnet50" in cpu:
            r = cpu["resnet50"]
            lines += [f"## resnet50 training ({r['setup']['data']})", "", *_arm_table(r), ""]
        if "soak" in cpu:
            s = cpu["soak"]
            lines += [
                "## Soak: memory over a long run",
                "",
                f"Full quickstart suite on the example CNN for {s['steps']} steps ({s['seconds']:.0f} s) in a fresh process: "
                f"RSS {s['rss_first_mb']:.0f} MB at step 0, {s['rss_last_mb']:.0f} MB at the end; least-squares growth "
                f"after the first 20% of steps: **{s['rss_growth_mb_per_1000_steps']:.3f} MB per 1000 steps**. "
                f"Open lightning-viz figures after the final flush: {s['open_figures_at_end']}."
                + (
                    f" Figures: {s['render_jobs']['completed']} drawn, {s['render_jobs']['superseded']} replaced "
                    f"by a newer cumulative version before they were drawn, {s['render_jobs']['spilled']} of the "
                    "drawn ones waited in temporary files while drawing was behind."
                    if "render_jobs" in s
                    else ""
                ),
                "",
                *_soak_fill(s),
                *_soak_floor(s),
            ]
        if "soak_articles" in cpu:
            s = cpu["soak_articles"]
            lines += [
                "## Soak: the article callbacks over a long run",
                "",
                f"ModelGraph, WeightPicture, ActivationHistogram, PredictionGrid, Embedding and Saliency at their "
                f"defaults (the fixed-sample ones every epoch: {s['steps'] // s['steps_per_epoch']} captures each) on "
                f"the example CNN for {s['steps']} steps ({s['seconds']:.0f} s) in a fresh process: RSS "
                f"{s['rss_first_mb']:.0f} MB at step 0, {s['rss_last_mb']:.0f} MB at the end; least-squares growth "
                f"after the first 20% of steps: **{s['rss_growth_mb_per_1000_steps']:.3f} MB per 1000 steps**. "
                f"Open lightning-viz figures after the final flush: {s['open_figures_at_end']}.",
                "",
            ]
    if gpu:
        lines += [
            f"## GPU rows ({gpu['machine'].get('gpu')})",
            "",
            f"Command: `{gpu['command']}`. Machine: {_machine(gpu['machine'])}.",
            "",
        ]
        if "histograms" in gpu:
            lines += [*_hist_table(gpu["histograms"]), ""]
        if "resnet50" in gpu:
            lines += [
                f"resnet50 training ({gpu['resnet50']['setup']['data']}):",
                "",
                *_arm_table(gpu["resnet50"]),
                "",
            ]
    if cpu and cpu.get("gpu"):  # the rows `make gpu-check` wrote (benchmarks/gpu.py), between their markers
        from benchmarks import gpu as gpu_rows

        lines += [gpu_rows.START, gpu_rows.section(cpu["gpu"]), gpu_rows.END, ""]
    lines += [
        "## What is measured",
        "",
        "- Every arm trains the same seeded model on the same in-memory synthetic data with the same trainer "
        "settings (TensorBoard logger attached in every arm, `log_every_n_steps=5`, no checkpointing, no progress "
        "bar); only the callbacks differ. Arms run in one process, in an order that rotates every round; each "
        "ratio is taken against B0 of the same round, and the median over rounds is reported.",
        "- *Steady-state step time* (the headline `suite_overhead_ratio` is this ratio for the full suite, taken "
        "from its own side-by-side fits, see above): the middle epochs of each fit, each "
        "timed from its first batch's start to the next epoch's, so validation, epoch-end captures and the "
        "pictures drawn meanwhile are included, divided by their training steps; the first epoch (start-up: "
        "the model summary, the render process starting) and the last (the fit-end drawing and flush) are left "
        "out. This is what a long run pays per step. What a fit costs beyond that rate (start-up and the end) "
        "is the *one-off extra*, in seconds over B0's; *whole fit / B0* is the ratio over this benchmark's "
        "short fits, everything included (fit start to fit end, the final flush of the background writer and "
        "render process too). *Logging step*: a step on which "
        "the arm records (its schedule; for wandb.watch, a step on which wandb computed histograms), timed from the "
        "first callback's `on_train_batch_start` to the last callback's `on_train_batch_end`. The first two steps "
        "of every fit are left out of step medians.",
        "- peer-TB is `logger.experiment.add_histogram(name, tensor, step)` for every parameter and gradient every "
        'N steps; peer-W&B is the real `wandb.watch(model, log="all", log_freq=N)` on an offline run (histograms '
        "committed on the steps that computed them, as `WandbLogger` does). N = 10 for both and for the "
        'lightning-viz "(N=10)" arms.',
        "- RSS is that of the training process plus its children (the render process that draws the figures). "
        "Peak RSS is sampled every 10 steps in a process that runs all arms, so it includes what earlier arms "
        "left allocated; the soak runs alone in a fresh process.",
    ]
    path = folder / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""The prediction figure: a fixed sample with its true and predicted labels, and the epoch's worst examples.

Pure function: plain data (lists, numbers) in, a matplotlib ``Figure`` out; the caller closes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightning_viz.render._figure import new_figure
from lightning_viz.render._layout import fit_label, text_size

RIGHT, WRONG = "#1a9850", "#d73027"  # green: predicted the target; red: did not
TILE_PAD = 2
LABEL_PT = 7  # the tiles' labels


def _name(v: float, names: Sequence[str] | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "?"
    i = round(float(v))
    return str(names[i]) if names and 0 <= i < len(names) else str(i)


def _tile(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` (C 1 or 3) as an ``[H, W, 3]`` picture in [0, 1], scaled to its own finite range."""
    x = np.asarray(image, dtype=np.float32)
    x = np.repeat(x, 3, 0) if x.shape[0] == 1 else x[:3]
    ok = np.isfinite(x)
    lo, hi = (float(x[ok].min()), float(x[ok].max())) if ok.any() else (0.0, 1.0)
    x = np.where(ok, (x - lo) / max(hi - lo, 1e-12), 0.0)
    return x.transpose(1, 2, 0)


def _grid(ax: Axes, part: Mapping[str, Any], classes: bool, names: Sequence[str] | None, title: str) -> None:
    """The examples' images in a grid, each with "true -> predicted (confidence)" under it (on two lines when
    one would run into the next tile's)."""
    images = [_tile(im) for im in part["images"]]
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    h, w = images[0].shape[:2]
    fig = ax.get_figure(root=True)
    # the axes' size in inches once the constrained layout has placed it: its share of the figure's width,
    # less a margin, and the figure's height less the titles (its position now is matplotlib's default, smaller)
    spec = ax.get_subplotspec()
    panels = spec.get_gridspec().ncols if spec is not None else 1
    box_w, box_h = 0.94 * fig.get_figwidth() / panels, fig.get_figheight() - 0.9

    def scale(label_h: int) -> float:  # inches per canvas pixel as imshow fits the canvas in the axes
        return min(
            box_w / (cols * (w + TILE_PAD) + TILE_PAD), box_h / (rows * (h + label_h + TILE_PAD) + TILE_PAD)
        )

    texts, ok = [], []
    for i in range(n):
        true, pred, conf = part["true"][i], part["pred"][i], part["conf"][i]
        if classes:
            ok.append(_name(true, names) == _name(pred, names))
            texts.append((_name(true, names), _name(pred, names) + (f" {conf:.0%}" if _number(conf) else "")))
        else:
            ok.append(True)
            texts.append((f"t {true:.3g}", f"p {pred:.3g}"))
    label_h = max(4, h // 3)  # a strip under each tile for its label
    width = 0.9 * scale(label_h) * (w + TILE_PAD)  # the room one label has, in inches (a margin kept)
    if classes:
        labels = [fit_label(fig, a, b, width, LABEL_PT) for a, b in texts]
    else:  # target and prediction: "t 0.5 p 0.3", or one over the other
        labels = [
            (f"{a} {b}" if text_size(fig, f"{a} {b}", LABEL_PT)[0] <= width else f"{a}\n{b}", LABEL_PT)
            for a, b in texts
        ]
    common = min((size for _, size in labels), default=LABEL_PT)  # one size for every label of the grid
    labels = [(text, common) for text, _ in labels]
    if any("\n" in t for t, _ in labels):  # two lines need a taller strip
        label_h = max(label_h, math.ceil(2.6 * LABEL_PT / 72 / scale(label_h)))
    step_h, step_w = h + label_h + TILE_PAD, w + TILE_PAD
    canvas = np.ones((rows * step_h + TILE_PAD, cols * step_w + TILE_PAD, 3), dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = TILE_PAD + r * step_h, TILE_PAD + c * step_w
        canvas[y : y + h, x : x + w] = im
    ax.imshow(canvas, interpolation="nearest")
    for i, (text, size) in enumerate(labels):
        r, c = divmod(i, cols)
        ax.text(
            TILE_PAD + c * step_w + w / 2 - 0.5,
            TILE_PAD + r * step_h + h + label_h / 2 - 0.5,
            text,
            ha="center",
            va="center",
            fontsize=size,
            linespacing=1.1,
            color=RIGHT if ok[i] else WRONG,
        )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _number(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _bars(ax: Axes, part: Mapping[str, Any], names: Sequence[str] | None, title: str, key: str) -> None:
    """One bar per example (its confidence, or its loss), green where predicted right, with its labels."""
    n = len(part["true"])
    values = [float("nan") if v is None else float(v) for v in part[key]]
    ok = [_name(t, names) == _name(p, names) for t, p in zip(part["true"], part["pred"])]
    ax.barh(range(n), values, color=[RIGHT if o else WRONG for o in ok])
    ax.set_yticks(
        range(n),
        [
            f"{_name(t, names)} \N{RIGHTWARDS ARROW} {_name(p, names)}"
            for t, p in zip(part["true"], part["pred"])
        ],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlabel("probability of the predicted class" if key == "conf" else "loss (cross-entropy)")
    if key == "conf":
        ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)


def _scatter(ax: Axes, data: Mapping[str, Any]) -> None:
    """Prediction against target: the sample in blue, the worst examples in red, the line y = x."""
    pts: list[float] = []
    for part, color, label in (
        (data.get("sample"), "tab:blue", "fixed sample"),
        (data.get("worst"), WRONG, "worst"),
    ):
        if not part:
            continue
        t, p = np.asarray(part["true"], dtype=float), np.asarray(part["pred"], dtype=float)
        ax.scatter(t, p, s=14, color=color, label=label, alpha=0.8)
        pts += [*t[np.isfinite(t)], *p[np.isfinite(p)]]
    if pts:
        lo, hi = min(pts), max(pts)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="prediction = target")
    ax.set_xlabel("target (first value of each example)")
    ax.set_ylabel("prediction")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("prediction against target", fontsize=9)


def _sequence(ax: Axes, seq: Mapping[str, Any]) -> None:
    """Each shown example's tokens: green where the predicted token is the target, red where not, grey
    where the target is ignored (-100); the rows say the example's token accuracy."""
    true, pred = np.asarray(seq["true"]), np.asarray(seq["pred"])
    colors = np.where(true == -100, 0.5, np.where(true == pred, 1.0, 0.0))
    rgb = np.empty((*colors.shape, 3), dtype=np.float32)
    rgb[colors == 1.0] = (0.10, 0.60, 0.31)
    rgb[colors == 0.0] = (0.84, 0.19, 0.15)
    rgb[colors == 0.5] = (0.8, 0.8, 0.8)
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    acc = seq["accuracy"]
    ax.set_yticks(range(len(acc)), [f"example {i}: {a:.0%}" for i, a in enumerate(acc)], fontsize=7)
    ax.set_xlabel("position")
    ax.set_title(
        "tokens of the fixed sample\ngreen: predicted the target, red: not, grey: ignored", fontsize=9
    )


def render_predictions(data: Mapping[str, Any]) -> Figure:
    """The fixed sample's predictions and the epoch's worst-loss examples.

    Args:
        data: ``step``, ``epoch``, ``task`` (``classification``, ``binary``, ``regression``, ``sequence``),
            ``class_names`` (or ``None``), ``sample`` and ``worst`` (each ``None`` or a dict of lists
            ``true``, ``pred``, ``conf``, ``loss`` and ``images``, ``[C, H, W]`` arrays or ``None``),
            ``sequence`` (for that task: ``true``, ``pred`` ``[n, T]`` and ``accuracy``), ``notes`` (lines).

    Returns:
        A figure of one or two panels, titled with the step and what each panel shows.
    """
    task = data["task"]
    names = data.get("class_names")
    classes = task in ("classification", "binary")
    sample, worst = data.get("sample"), data.get("worst")
    panels: list[tuple[str, Any]] = []
    if task == "sequence" and data.get("sequence"):
        panels.append(("sequence", data["sequence"]))
    elif task == "regression":
        if sample or worst:
            panels.append(("scatter", data))
        if worst and worst.get("images"):
            panels.append(("grid-worst", worst))
    else:
        for kind, part in (("sample", sample), ("worst", worst)):
            if part:
                panels.append((("grid-" if part.get("images") else "bars-") + kind, part))
    n = max(1, len(panels))
    fig = new_figure(5.2 * n, 5.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    k_worst = len(worst["true"]) if worst else 0
    for ax, (kind, part) in zip(axes, panels):
        if kind == "sequence":
            _sequence(ax, part)
        elif kind == "scatter":
            _scatter(ax, part)
        elif kind.startswith("grid"):
            title = (
                "fixed sample: true \N{RIGHTWARDS ARROW} predicted (probability)"
                if kind == "grid-sample"
                else f"the {k_worst} highest-loss validation examples of the epoch"
            )
            _grid(ax, part, classes, names, title)
        else:
            is_sample = kind == "bars-sample"
            title = (
                "fixed sample: probability of the predicted class"
                if is_sample
                else (f"the {k_worst} highest-loss validation examples of the epoch")
            )
            _bars(ax, part, names, title, "conf" if is_sample else "loss")
    if not panels:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes[0].transAxes)
    head = f"Predictions at step {data.get('step', '?')} (epoch {data.get('epoch', '?')}, {task})"
    notes = [str(x) for x in data.get("notes") or ()]
    fig.suptitle("\n".join([head, *notes]), fontsize=10)
    return fig

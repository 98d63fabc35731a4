"""Durable outputs: a SIGKILL never leaves a truncated file, and `lightning-viz render` redraws every figure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_viz import (
    ActivationMapCallback,
    CurvePlotCallback,
    ModelSummaryCallback,
    WeightHistogramCallback,
)
from lightning_viz.cli import main as cli_main
from lightning_viz.rerender import main as render_main
from lightning_viz.rerender import redraw
from tests.helpers import RandomImages, TinyCNN, TinyMLP, make_trainer

ROOT = Path(__file__).resolve().parents[2]


def check_complete(path: Path) -> None:
    """Raise unless ``path`` is a complete PNG, JSON, NPZ or text file."""
    if path.suffix == ".png":
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                z[key]
    elif path.suffix == ".txt":
        path.read_text()
    else:
        raise AssertionError(f"unexpected file {path}")


def final_files(viz: Path) -> list[Path]:
    """Every file but the temporaries of interrupted atomic writes (hidden ``.<name>.*.tmp``)."""
    files = [p for p in viz.rglob("*") if p.is_file()]
    strays = [p for p in files if p.name.startswith(".") and p.suffix == ".tmp"]
    return sorted(set(files) - set(strays))


# training about a minute, then render redraws every figure kind (incl. each epoch's curves) on 2 cores
@pytest.mark.timeout(300)
def test_sigkill_while_writing_leaves_only_complete_files_and_render_redraws(tmp_path):
    viz = tmp_path / "viz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.kill_worker", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LIGHTNING_VIZ_REDRAW_S": "0"},  # every figure drawn
    )
    try:
        deadline = time.monotonic() + 100
        # wait until every callback has written several figures, then kill it in the middle of its work
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(viz.rglob("maps_step*.png"))) >= 3 and list(viz.rglob("curves_epoch*.png")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "the worker wrote too little in time"
        time.sleep(0.137)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    files = final_files(viz)
    assert len(files) >= 12
    for path in files:
        check_complete(path)  # a truncated file raises here

    # The data beside the figures is enough to draw them all again after the crash.
    pngs = [p for p in files if p.suffix == ".png"]
    for p in pngs:
        p.unlink()
    assert render_main([str(viz)]) == 0
    redrawn = {p.relative_to(viz) for p in viz.rglob("*.png")}
    for data in (p for p in files if p.suffix in (".json", ".npz")):
        stem = json.loads(data.read_text())["figure"] if data.name == "curves.json" else data.stem
        assert data.with_name(f"{stem}.png").relative_to(viz) in redrawn, data
    for p in viz.rglob("*.png"):
        check_complete(p)


def test_render_recreates_every_figure_pixel_for_pixel(tmp_path, capsys):
    callbacks = [
        ModelSummaryCallback(),
        WeightHistogramCallback(every_n_steps=2, bins=16),
        ActivationMapCallback(sample_size=4, max_channels=4),
        CurvePlotCallback(),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, limit_val_batches=1)
    trainer.fit(TinyCNN(), RandomImages(n=32))
    viz = Path(trainer.log_dir) / "viz"
    before = {}
    for p in viz.rglob("*.png"):
        with Image.open(p) as img:
            before[p.relative_to(viz)] = np.asarray(img.convert("RGBA"))
        p.unlink()
    kinds = {p.name.split("_step")[0] for p in before}
    assert {"summary.png", "weights_evolution", "gradients_evolution", "maps"} <= kinds  # heatmaps: below
    assert {"stats.png", "curves_epoch000.png"} <= kinds

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["render", str(viz)])
    assert exit_info.value.code == 0
    assert f"redrew {len(before)} figure(s)" in capsys.readouterr().out
    after = {p.relative_to(viz): p for p in viz.rglob("*.png")}
    assert sorted(after) == sorted(before)
    for rel, p in after.items():
        with Image.open(p) as img:
            np.testing.assert_array_equal(np.asarray(img.convert("RGBA")), before[rel], err_msg=str(rel))

    # a new style draws different pixels from the same data, into another folder
    out = tmp_path / "restyled"
    result = redraw(viz / "model_summary", out=out, style="ggplot")
    assert [p.name for p in result["drawn"]] == ["summary.png"] and not result["failed"]
    with Image.open(out / "summary.png") as img:
        assert not np.array_equal(np.asarray(img.convert("RGBA")), before[Path("model_summary/summary.png")])


def test_render_reports_bad_input(tmp_path, capsys):
    assert render_main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert render_main([str(tmp_path)]) == 1
    assert "no figure data found" in capsys.readouterr().out
    (tmp_path / "maps_step000001.npz").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "other.json").write_text('{"not": "a figure"}')
    assert render_main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "maps_step000001.npz" in err and "other.json" not in err


def test_render_tool_draws_a_model_without_convolutions(tmp_path):
    cb = ActivationMapCallback(sample_size=4)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    trainer.fit(TinyMLP(), RandomImages(n=32, with_val=False))
    (cb.viz_dir / "heatmaps_step000002.png").unlink()
    assert render_main([str(cb.viz_dir)]) == 0
    check_complete(cb.viz_dir / "heatmaps_step000002.png")

"""The run report: built at fit end, rebuilt by ``lightning-viz report``, and checked in a real browser.

The browser test drives Debian's chromium through Playwright's Python package (never ``playwright
install``): the page loads with no console error, the slider changes the frame shown, and a screenshot is
not blank. It skips only when chromium or playwright is missing, naming the install line.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from lightning_viz import (
    ActivationMapCallback,
    CurvePlotCallback,
    ModelSummaryCallback,
    WeightHistogramCallback,
)
from lightning_viz.callbacks.report import ReportCallback
from lightning_viz.core import writer
from lightning_viz.report import build_report, main
from tests.helpers import RandomImages, TinyCNN, make_trainer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch run with four callbacks and the report; returns its viz directory."""
    tmp = tmp_path_factory.mktemp("report")
    callbacks = [
        ModelSummaryCallback(),
        WeightHistogramCallback(every_n_steps=4),
        ActivationMapCallback(every_n_epochs=1, sample_size=4),
        CurvePlotCallback(),
        ReportCallback(),
    ]
    trainer = make_trainer(tmp, callbacks, max_epochs=3, limit_train_batches=2, limit_val_batches=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(writer.REDRAW_ENV, "0")  # every epoch's maps drawn (a frame each in the report's slider)
        trainer.fit(TinyCNN(), datamodule=RandomImages(n=32))
    report = callbacks[-1]
    assert trainer.callbacks[-1] is report, "the report callback moves itself last"
    return report.viz_dir


def test_report_is_built_at_fit_end(run):
    page = (run / "report.html").read_text()
    for section in ("model_summary", "curves", "weight_histogram", "activation_map"):
        assert f'id="{section}"' in page, section
    assert "conv1" in page and "Conv2d" in page  # the summary table
    # three activation captures -> a slider over three frames, no resource fetched from anywhere
    assert 'data-frames="3"' in page
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 3 + 2


def test_rebuild_from_files_shows_health_findings(run, tmp_path, capsys):
    health = run / "training_health"
    health.mkdir(exist_ok=True)
    finding = {"step": 4, "check": "dead_units", "layer": "act1", "message": "act1: 62% of units never fire"}
    (health / "health_summary.json").write_text(json.dumps({"findings": [finding], "unavailable": {}}))
    out = tmp_path / "r.html"
    try:
        assert main([str(run), "--out", str(out), "--max-frames", "2"]) == 0
    finally:
        shutil.rmtree(health)
    assert f"lightning-viz: report is {out}" in capsys.readouterr().out
    page = out.read_text()
    assert page.index('id="training_health"') < page.index('id="model_summary"')  # findings come first
    assert "62% of units never fire" in page and 'data-frames="2"' in page  # thinned to 2 frames
    assert main([str(tmp_path / "missing")]) == 2


def test_report_command_is_dispatched(run, tmp_path, monkeypatch):
    from lightning_viz.cli import main as cli_main

    monkeypatch.setattr(sys, "argv", ["lightning-viz"])
    with pytest.raises(SystemExit) as exit_:
        cli_main(["report", str(run.parent), "--out", str(tmp_path / "x.html")])  # a run dir works too
    assert exit_.value.code == 0 and (tmp_path / "x.html").stat().st_size > 1000


def test_empty_directory_still_makes_a_page(tmp_path):
    page = build_report(tmp_path).read_text()
    assert "No pictures were saved" in page


def test_report_in_a_real_browser(run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: apt-get install -y chromium (see .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    from PIL import Image

    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto((run / "report.html").as_uri(), wait_until="load")

            series = page.locator(".series[data-frames='3']").first
            slider = series.locator("input[type=range]")
            label = series.locator(".frame-label")
            last = label.inner_text()
            visible_before = series.locator("figure.frame:visible img").get_attribute("alt")
            slider.focus()
            page.keyboard.press("Home")  # a real key press on the slider: first frame
            first = label.inner_text()
            visible_after = series.locator("figure.frame:visible img").get_attribute("alt")
            assert first != last and first.endswith("(1/3)") and last.endswith("(3/3)"), (first, last)
            assert visible_before != visible_after
            assert series.locator("figure.frame:visible").count() == 1
            page.keyboard.press("ArrowRight")
            assert label.inner_text().endswith("(2/3)")

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert errors == []
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "blank screenshot"

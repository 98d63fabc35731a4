"""The README's argument reference is the one generated from the code, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from lightning_viz._docs import END, START, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_reference_matches_the_signatures():
    start, end = README.index(START), README.index(END) + len(END)
    assert README[start:end] == reference_markdown(), (
        "README reference is stale: run python -m lightning_viz._docs"
    )


def test_every_documented_config_and_picture_exists():
    for path in set(re.findall(r"(configs/[\w/.-]+\.yaml)", README)) | set(
        re.findall(r"\((docs/[\w/.-]+)\)", README)
    ):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"


def test_make_targets_in_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make (\w+)`", README)):
        assert re.search(rf"^{target}:", makefile, re.M), f"README shows `make {target}`, Makefile lacks it"

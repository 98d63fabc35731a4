"""The README and docs/*.md: generated parts equal what the code and benchmarks/results.json give, links and
documented commands exist, and the README stays a newcomer's page."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from lightning_viz._docs import (
    END,
    START,
    blocks_in,
    doc_files,
    generated_blocks,
    load_results,
    markers,
    reference_markdown,
    regenerate,
)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text() for p in doc_files()}
# The generated blocks each page must hold.
REQUIRED = {
    "README.md": {"perf-summary"},
    "docs/reference.md": {"reference"},
    "docs/performance.md": {"perf-table", "perf-run", "perf-method"},
}
README_MAX_LINES = 250


def _prose(text: str) -> str:
    """``text`` without its generated blocks and fenced code."""
    for name in blocks_in(text):
        start, end = markers(name)
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), "", text, flags=re.S)
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(text), re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_reference_matches_the_signatures():
    text = PAGES["docs/reference.md"]
    start, end = text.index(START), text.index(END) + len(END)
    assert text[start:end] == reference_markdown(), (
        "docs/reference.md is stale: run python -m lightning_viz._docs"
    )


def test_generated_blocks_match_the_code_and_results_json():
    blocks = generated_blocks()
    for rel, names in REQUIRED.items():
        assert names <= set(blocks_in(PAGES[rel])), f"{rel} lacks the generated blocks {names}"
    for rel, text in PAGES.items():
        assert regenerate(text, blocks) == text, f"{rel} is stale: run python -m lightning_viz._docs"


def test_a_new_benchmark_result_makes_the_docs_stale():
    results = copy.deepcopy(load_results())
    results["histograms"]["speedup_vs_tensorboard"] = results["hist_speedup_vs_tensorboard"] = 3.25
    results["suite_overhead_ratio"] = 1.125
    blocks = generated_blocks(results)
    assert "3.2\N{MULTIPLICATION SIGN} faster than TensorBoard" in blocks["perf-summary"]
    assert "1.125 (median" in blocks["perf-table"] and "**missed**" in blocks["perf-table"]
    assert regenerate(README, blocks) != README
    assert regenerate(PAGES["docs/performance.md"], blocks) != PAGES["docs/performance.md"]


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_no_hand_copied_performance_figures(rel):
    prose = _prose(PAGES[rel])
    figures = re.findall(
        r"\d+(?:\.\d+)?\s?[\u00d7x]\s+(?:faster|slower|as long|as fast|B0)|\b\d+(?:\.\d+)?\s?ms\b|"
        r"\d+(?:\.\d+)?\s?MB per|\d+(?:\.\d+)? times (?:faster|slower|as long)",
        prose,
    )
    assert not figures, f"{rel} states benchmark figures by hand ({figures}); generate them from results.json"


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_every_documented_config_and_picture_exists(rel):
    prose = PAGES[rel]
    for path in set(re.findall(r"(?<![\w/])(configs/[\w/.-]+\.yaml)", prose)):
        assert (ROOT / path).exists(), f"{rel} names {path}, which does not exist"
    for name in set(re.findall(r"--config[ =]([\w/-]+)(?=[\s`]|$)", prose, re.M)):
        if name not in ("NAME", "my_project"):
            assert (ROOT / "configs" / f"{name}.yaml").exists(), f"{rel} runs --config {name}: no such config"
    for image in set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", prose)):
        assert (ROOT / rel).parent.joinpath(image).resolve().exists(), (
            f"{rel} shows {image}, which is missing"
        )


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_links_resolve(rel):
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(PAGES[rel])):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        where = (ROOT / rel).parent.joinpath(path).resolve() if path else ROOT / rel
        assert where.exists(), f"{rel} links to {target}, which does not exist"
        if anchor and where.suffix == ".md":
            assert anchor in _anchors(where.read_text()), f"{rel} links to {target}: no such heading"


def test_readme_is_a_page_that_links_every_doc():
    lines = README.count("\n") + (not README.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)[#)]", README))
    docs = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md")}
    assert docs <= linked, f"README does not link {sorted(docs - linked)}"


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_make_targets_in_docs_exist(rel):
    makefile = (ROOT / "Makefile").read_text()
    command = r"make (?:[A-Z_]+=\S+ )*([a-z][\w-]*)"
    for target in set(re.findall(f"`{command}", PAGES[rel])) | set(
        re.findall(f"^{command}", PAGES[rel], re.M)
    ):
        assert re.search(rf"^{target}:", makefile, re.M), f"{rel} shows `make {target}`, Makefile lacks it"

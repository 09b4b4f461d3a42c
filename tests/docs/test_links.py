"""The documentation stays navigable: every relative link of README.md and docs/ leads to a file that exists (and to a
heading of it, where the link names one), and every project file a page names in backticks exists."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAMED_FILE = re.compile(r"`((?:forgetting|stages|tests|benchmarks|scripts|presets|docs)/[\w./-]+\.(?:py|sh|yaml|md))`")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))  # no headings inside code blocks
    return {anchor(m.group(1)) for m in re.finditer(r"(?m)^#+ (.+)$", text)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_every_page_is_found_and_links_to_the_others():
    assert len(PAGES) >= 8
    linked = {(ROOT / "docs" / target.split("#")[0]).resolve() for target in relative_links(ROOT / "docs" / "layout.md")}
    assert set(PAGES) <= linked, "the navigation line of each page names every page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_a_file_and_heading_that_exist(page):
    for target in relative_links(page):
        file, _, fragment = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: {target} leads nowhere"
        if fragment and path.suffix == ".md":
            assert fragment in anchors(path), f"{page.name}: {target}: no such heading in {path.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_project_file_exists(page):
    for name in NAMED_FILE.findall(page.read_text(encoding="utf-8")):
        assert (ROOT / name).exists(), f"{page.name} names {name}, which does not exist"


def test_a_broken_link_and_anchor_are_seen(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# What the demo shows\n\n[x](missing.md) [y](p.md#what-the-demo-shows) [z](https://e.org)\n")
    assert relative_links(page) == ["missing.md", "p.md#what-the-demo-shows"]
    assert not (tmp_path / "missing.md").exists()
    assert anchor("What the demo can and cannot show") == "what-the-demo-can-and-cannot-show"
    assert anchor("Data: Common Voice, its official splits") == "data-common-voice-its-official-splits"

"""Every relative link in the project's Markdown reaches a file, and every #anchor a heading of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Links to the web are not followed here: this machine reaches no host but the package registries.
LINK = re.compile(r"\[[^\]]*\]\((?!https?://|mailto:)([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    for folder in ("docs", "benchmarks", "tests", "examples"):
        files.extend(sorted((ROOT / folder).rglob("*.md")))
    return [path for path in files if path.is_file()]


def outside_code(text: str) -> list[str]:
    rows, in_code = [], False
    for row in text.splitlines():
        if row.startswith("```"):
            in_code = not in_code
        elif not in_code:
            rows.append(row)
    return rows


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor_of(m.group(1)) for row in outside_code(path.read_text()) if (m := HEADING.match(row))}


def test_anchor_of_follows_githubs_rule() -> None:
    assert anchor_of("Many jobs: `as_completed`") == "many-jobs-as_completed"
    assert anchor_of("Web services (FastAPI, Starlette, aiohttp)") == "web-services-fastapi-starlette-aiohttp"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for row in outside_code(path.read_text()):
        for target in LINK.findall(row):
            name, _, anchor = target.partition("#")
            file = (path.parent / name).resolve() if name else path
            if not file.exists():
                broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)

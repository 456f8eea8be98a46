"""The docs are a reference of how things are now: no diary (issue numbers, dates), and no
link, anchor or code path that points nowhere. Text only: no network, no imports of the
library (seconds)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Where the diary must not be: the README, the docs, and the code's comments and docstrings.
DIARY_PLACES = ("README.md", "docs", "lungct", "stages")
ISSUE = re.compile(r"issue\s+[0-9]+", re.IGNORECASE)  # as `grep -E "[Ii]ssue [0-9]+"`: anatomy too
DATE = re.compile(r"\b20[0-9]{2}-[0-9]{2}-[0-9]{2}\b")

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
CODE_PATH = re.compile(r"\b(?:lungct|stages|benchmarks|tests)/[\w/]*\w\.py\b")
DOTTED = re.compile(r"\blungct(?:\.[A-Za-z_]\w*)+")


def text_files(*places: str) -> list[Path]:
    """Every text file under the places (relative to the repository root), bytecode and
    binary files left out."""
    files = []
    for place in places:
        path = ROOT / place
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if not file.is_file() or "__pycache__" in file.parts:
                continue
            try:
                file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(file)
    return files


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown text outside fenced code blocks, inline code
    removed."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (links as their text), lowercase, punctuation
    dropped except '-' and '_', each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def is_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False  # 2024-13-01: an example of a bad value, not a date
    return True


def diary(text: str) -> list[str]:
    """The issue numbers and dates in a text."""
    found = [m.group(0) for m in ISSUE.finditer(text)]
    return found + [m.group(0) for m in DATE.finditer(text) if is_date(m.group(0))]


def broken_links(page: Path) -> list[str]:
    """Relative links of a Markdown page whose file does not exist, or whose anchor is no
    heading of that file."""
    broken = []
    for number, line in outside_code(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: ({target})"
            if not file.exists():
                broken.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where}: no heading with that anchor")
    return broken


def missing_code(page: Path) -> list[str]:
    """Code paths (``lungct/io/dicom.py``) and dotted names (``lungct.model.network.
    build_cnn``) a page names that do not exist: a dotted name's longest module prefix must
    be a module, and its next part must be defined or imported there."""
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{page.relative_to(ROOT)}:{number}"
        for path in CODE_PATH.findall(line):
            if not (ROOT / path).is_file():
                missing.append(f"{where}: {path}")
        for name in DOTTED.findall(line):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:end])
                module = base.with_suffix(".py")
                module = module if module.is_file() else base / "__init__.py"
                if module.is_file():
                    break
            else:
                missing.append(f"{where}: {name}")
                continue
            if end < len(parts):
                attribute = re.escape(parts[end])
                defined = re.compile(
                    rf"^\s*(?:async\s+)?(?:def|class)\s+{attribute}\b|^{attribute}\s*[:=]"
                    rf"|\bimport\b[^\n]*\b{attribute}\b|^\s+{attribute},?\s*$",
                    re.MULTILINE,
                )
                if not defined.search(module.read_text(encoding="utf-8")):
                    missing.append(f"{where}: {name}")
    return missing


def test_no_issue_numbers_or_dates_in_docs_and_code():
    found = [
        f"{file.relative_to(ROOT)}: {hit}"
        for file in text_files(*DIARY_PLACES)
        for hit in diary(file.read_text(encoding="utf-8"))
    ]
    assert not found, "history belongs in git, not in the docs or code:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("as every resize was before Issue 17", ["Issue 17"]),
        ("default since 2026-12-04", ["2026-12-04"]),
        ("soft tissue 30-60", ["issue 30"]),  # what a grep for issue numbers finds
        ("a bad date (2024-13-01)", []),
    ],
)
def test_diary_finds_issue_numbers_and_dates(text, hits):
    assert diary(text) == hits


def test_every_relative_link_and_anchor_resolves():
    broken = [problem for page in markdown_pages() for problem in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_slug_is_githubs():
    assert slug("One model or an ensemble (issue 18, 2026-12-05, later)") == (
        "one-model-or-an-ensemble-issue-18-2026-12-05-later"
    )
    assert slug("`data/splits/splits.csv` and `dropped.csv`") == (
        "datasplitssplitscsv-and-droppedcsv"
    )
    assert slug("Convert: the work after decoding") == "convert-the-work-after-decoding"


def test_every_code_path_in_the_docs_exists():
    missing = [problem for page in markdown_pages() for problem in missing_code(page)]
    assert not missing, "\n".join(missing)

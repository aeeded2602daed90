"""Every document and section that the code, the tests and the docs cite exists in the
repository: ``§N`` (a section of ``docs/fltmgr-semantics.md``, or of ``docs/protocol.md`` when
written ``protocol §N`` or, unless written ``semantics §N``, inside protocol.md itself) and
a Markdown file's name (a file of the repository)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEMANTICS = ROOT / "docs" / "fltmgr-semantics.md"
PROTOCOL = ROOT / "docs" / "protocol.md"

_HEADING = re.compile(r"^#+ (\d+[a-z]?(?:\.\d+)*)\.? ")
_ITEM = re.compile(r"^(\d+)\. ")
#: ``§N``, with the document it belongs to when named; a list (``protocol §5, §7.1 and §10``)
#: keeps the document of its first number.
_NUMBER = r"§ ?\d+[a-z]?(?:\.\d+)*"
_CITE = re.compile(
    rf"(protocol(?:\.md)? |(?:fltmgr-)?semantics(?:\.md)? )?({_NUMBER}(?:(?:, | and ){_NUMBER})*)"
)
#: A Markdown file's name as code and docs cite one: bare, or a path in the repository.
_FILE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")


def sections(path: Path) -> set[str]:
    """The section numbers of a document: its numbered headings, and the numbered items of
    a section written as a list (semantics §9.1 is item 1 of §9)."""
    found: set[str] = set()
    current = ""
    for line in path.read_text().splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1)
            found.add(current)
            continue
        item = _ITEM.match(line)
        if item and current and "." not in current:
            found.add(f"{current}.{item.group(1)}")
    return found


def cited_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.c", "*.h", "*.md", "Makefile", "Dockerfile*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # The semantics document cites Microsoft's own pages by their file names: sources, not
    # files of ours.
    return [name for name in listed if name != "docs/fltmgr-semantics.md"]


FILES = cited_files()


@pytest.mark.parametrize("name", FILES)
def test_cited_sections_and_files_exist(name: str) -> None:
    text = (ROOT / name).read_text(errors="replace")
    semantics, protocol = sections(SEMANTICS), sections(PROTOCOL)
    missing = []
    for match in _CITE.finditer(text):
        prefix = match.group(1) or ""
        in_protocol = prefix.startswith("protocol") or (not prefix and name == "docs/protocol.md")
        for number in re.findall(r"\d+[a-z]?(?:\.\d+)*", match.group(2)):
            if number.rstrip(".") not in (protocol if in_protocol else semantics):
                missing.append(f"{prefix}§{number}")
    for match in _FILE.finditer(text):
        cited = match.group(1)
        here = (ROOT / name).parent
        if not any(p.exists() for p in (ROOT / cited, ROOT / "docs" / cited, here / cited)):
            missing.append(cited)
    assert not missing, f"{name} cites what the repository does not have: {sorted(set(missing))}"

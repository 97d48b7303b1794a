"""The repository stands alone: its docs, code and tests point only at files it holds.

A user of this repository has none of the notes it was built from, so a
reference to them (or a Markdown link to a file that is not here) is a dead end.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Notes that lived outside the repository while it was built.
OUTSIDE = ("design.md", "environment.md", "reference_implementations.md", "shared/notes", "/work/")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".txt", ".cfg", ".toml", ".xml", ".msg"}


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        files = [REPO / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file() and f != Path(__file__).resolve()]


def test_no_file_refers_to_notes_outside_the_repository():
    files = _tracked_text_files()
    here = {f.name for f in files}  # a note the repository has gained is no longer outside
    outside = [name for name in OUTSIDE if name not in here]
    hits = [f"{f.relative_to(REPO)}: {name}" for f in files for name in outside if name in f.read_text(errors="replace")]
    assert hits == []


def test_relative_markdown_links_point_at_files_in_the_repository():
    broken = []
    for doc in [f for f in _tracked_text_files() if f.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            if not (doc.parent / target).resolve().exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []

"""Benchmarks write their tables into docs/results.md between two HTML-comment markers.

Only the marked block is replaced, so the hand-written reading of the figures around it survives a
re-run of the benchmark. Without the markers the block is appended at the end.
"""

from __future__ import annotations

from pathlib import Path


def write_block(doc: Path, begin: str, end: str, text: str) -> None:
    """Replace ``begin``…``end`` in ``doc`` by ``text`` (which must start with ``begin`` and end with ``end``)."""
    if not (text.startswith(begin) and text.rstrip("\n").endswith(end)):
        raise ValueError("the block text must start with its begin marker and end with its end marker")
    old = doc.read_text() if doc.is_file() else "# Results\n\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)

"""Benchmarks rewrite only their marked block of docs/results.md, so the prose around it survives."""

import pytest

from kp_perception_bench._doc_block import write_block

BEGIN, END = "<!-- t: begin -->", "<!-- t: end -->"


def test_block_is_replaced_and_the_prose_around_it_kept(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nreading of the figures\n")
    write_block(doc, BEGIN, END, f"{BEGIN}\nnew table\n{END}\n")
    assert doc.read_text() == f"# Results\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\nreading of the figures\n"
    write_block(doc, BEGIN, END, f"{BEGIN}\nnewer table\n{END}\n")
    text = doc.read_text()
    assert "newer table" in text and "new table" not in text and text.count(BEGIN) == 1
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith("reading of the figures\n")


def test_block_is_appended_when_the_doc_has_no_markers(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nother section\n")
    write_block(doc, BEGIN, END, f"{BEGIN}\ntable\n{END}\n")
    assert doc.read_text() == f"# Results\n\nother section\n\n{BEGIN}\ntable\n{END}\n"


def test_text_without_its_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="marker"):
        write_block(tmp_path / "results.md", BEGIN, END, "a table with no markers\n")

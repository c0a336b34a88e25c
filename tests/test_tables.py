"""Markdown tables: column and cell layout, and the row-length check."""

import pytest

from mixq.reports.tables import grid_table, markdown_table


def test_grid_table_layout():
    text = grid_table(["a", "b"], [["1", 2.5], ["x", "y"]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2.5 |", "| x | y |"]


def test_grid_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        grid_table(["a", "b"], [["only one"]])


def test_markdown_table_formats_numbers_and_blanks_missing_keys():
    text = markdown_table([{"v": 1.23456, "s": "x"}, {"s": "y"}], [("v", "value", ".2f"), ("s", "name", "")])
    assert text.splitlines()[2:] == ["| 1.23 | x |", "|  | y |"]


def test_splice_between_replaces_only_the_marked_text(tmp_path):
    from mixq.errors import MixqError
    from mixq.reports.tables import splice_between

    f = tmp_path / "README.md"
    f.write_text("# t\n<!-- x -->\nold\nrows\n<!-- x -->\ntail <!-- y -->\n")
    splice_between(f, "<!-- x -->", "| a |")
    assert f.read_text() == "# t\n<!-- x -->\n| a |\n<!-- x -->\ntail <!-- y -->\n"
    splice_between(f, "<!-- x -->", "| b |")  # again: same shape
    assert f.read_text() == "# t\n<!-- x -->\n| b |\n<!-- x -->\ntail <!-- y -->\n"
    for mark in ("<!-- y -->", "<!-- z -->"):
        with pytest.raises(MixqError, match=f"needs exactly two {mark} lines"):
            splice_between(f, mark, "t")

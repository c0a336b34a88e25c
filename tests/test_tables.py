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


def test_seed_stats_and_spread_text_against_numpy():
    import numpy as np

    from mixq.reports.tables import seed_stats, spread_text

    v = [87.64, 87.79, 87.76]
    s = seed_stats(v)
    assert s["n"] == 3 and s["min"] == 87.64 and s["max"] == 87.79
    assert abs(s["mean"] - float(np.mean(v))) < 1e-12
    assert spread_text(v) == f"{np.mean(v):.2f} [87.64, 87.79]" == spread_text(s)
    assert spread_text([0.05876], 4) == "0.0588 (1 seed)"
    assert spread_text([]) == "-" and spread_text(None) == "-" and seed_stats([]) is None

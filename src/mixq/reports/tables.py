"""Markdown tables from result rows."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table.

    Args:
        rows: dicts of values.
        columns: (key, header, format spec) triples, e.g. ``("quant_top1", "top-1 %", ".2f")``.

    Returns:
        The table text.
    """
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key, "")
            cells.append(format(v, fmt) if isinstance(v, (int, float)) and fmt and v is not None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table from already formatted cells.

    Args:
        head: column headers.
        rows: one sequence of cells per row, as many as ``head``; cells are written with ``str``.

    Returns:
        The table text.

    Raises:
        ValueError: a row with another number of cells than ``head``.
    """
    for row in rows:
        if len(row) != len(head):
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, expected {len(head)} ({list(head)!r})")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

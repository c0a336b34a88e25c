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

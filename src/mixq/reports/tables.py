"""Markdown tables from result rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mixq.errors import MixqError


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


def splice_between(path: str | os.PathLike, mark: str, text: str) -> None:
    """Replace what lies between the two ``mark`` lines of a text file (how README tables are regenerated).

    Args:
        path: the file (e.g. ``README.md``).
        mark: the marker line, e.g. ``"<!-- headline -->"``; it must occur exactly twice.
        text: the new text between them.

    Raises:
        MixqError: the file does not hold the marker exactly twice.
    """
    content = Path(path).read_text()
    parts = content.split(mark)
    if len(parts) != 3:
        raise MixqError(f"{str(path)!r} needs exactly two {mark} lines, found {len(parts) - 1}")
    Path(path).write_text(parts[0] + mark + "\n" + text + "\n" + mark + parts[2])


def seed_stats(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, min, max and count of one quantity over seeds (how results tables give a spread).

    Args:
        values: one value per seed.

    Returns:
        ``{"mean", "min", "max", "n"}``, or None when there are no values.
    """
    if len(values) == 0:
        return None
    return {"mean": float(sum(values) / len(values)), "min": float(min(values)), "max": float(max(values)),
            "n": len(values)}


def spread_text(values: Sequence[float] | dict[str, float] | None, digits: int = 2) -> str:
    """``"mean [min, max]"`` over seeds; ``"v (1 seed)"`` for a single one; ``"-"`` for none.

    Args:
        values: one value per seed, or :func:`seed_stats`'s dict (None: nothing measured).
        digits: decimals.

    Returns:
        The text.
    """
    s = values if isinstance(values, dict) or values is None else seed_stats(values)
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (1 seed)"
    return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"

"""Tables for people: Markdown (reports) and aligned plain text (the terminal). One printer each.

A table is a list of columns and a list of rows; a column is `(header, cell)` where `cell` turns a
row into its text, so a command keeps what a cell shows (formatting, units, "n/a") next to its
header, and the printer knows nothing about the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Column = tuple[str, Callable[[Any], str]]


def markdown_table(columns: Sequence[Column], rows: Sequence[Any]) -> str:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = (), rule: bool = True) -> str:
    """Rows of cells (the first is the header) aligned in columns two spaces apart.

    Columns whose index is in `right` are right-aligned (numbers), the others left-aligned; `rule`
    draws a line of dashes under the header.
    """
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

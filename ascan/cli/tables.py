"""Markdown tables for the CLIs' and tools' reports, formatted in one place."""
from __future__ import annotations

from typing import Collection, Sequence


def markdown_table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """A GitHub markdown table of ``rows`` (the first is the header; every row has as many
    cells), columns padded to their widest cell; the columns numbered in ``right`` are
    right-aligned (numbers), the others left-aligned."""
    if not rows:
        return ""
    n = len(rows[0])
    if any(len(r) != n for r in rows):
        raise ValueError(f"markdown_table: every row needs {n} cells, got {sorted({len(r) for r in rows})}")
    widths = [max(len(str(r[i])) for r in rows) for i in range(n)]
    out = []
    for j, r in enumerate(rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("| " + " | ".join(cells) + " |")
        if j == 0:
            out.append("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                                      for i, w in enumerate(widths)) + "|")
    return "\n".join(out)

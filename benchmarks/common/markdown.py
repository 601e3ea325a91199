"""The one Markdown table writer of the benchmarks: every table in ``results/*.md``, the docs and the
reports (leaderboards, frontier tables, verdicts, comparisons, performance and precision tables) is written
by :func:`markdown_table`.

Not ``pandas.DataFrame.to_markdown``: it needs the optional ``tabulate`` package, which is no dependency of
this project, and it pads every column to its widest cell, which would rewrite every committed table.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

#: the separator cell of a column by its alignment: ``l`` left (Markdown's default), ``r`` right
SEPARATORS = {"l": "---", "r": "---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: Optional[str] = None) -> str:
    """A pipe table: the header line, the separator line, one line per row; no trailing newline.

    Each cell is ``str(cell)`` with ``|`` escaped as ``\\|``; cells are not padded (``| a | b |``).
    ``align`` gives one letter per column, ``l`` (``---``) or ``r`` (``---:``); default all ``l``.
    """
    header = list(header)
    align = "l" * len(header) if align is None else align
    if len(align) != len(header) or set(align) - set(SEPARATORS):
        raise ValueError(f"align must be one of {'/'.join(SEPARATORS)} per column ({len(header)}), got {align!r}")
    lines = [_line(header), "|" + "|".join(SEPARATORS[a] for a in align) + "|"]
    for row in rows:
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {row!r}")
        lines.append(_line(row))
    return "\n".join(lines)


def _line(cells: Sequence) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

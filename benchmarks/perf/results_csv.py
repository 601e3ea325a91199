"""The perf benchmarks' result CSVs (``results/perf_*.csv``, ``results/precision_main.csv``): rewrite one,
add a measured row to one, and the tail every single-row benchmark ends with (print the row, append it)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence


def write_csv(out: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Rewrite ``out`` with the header ``columns`` and ``rows`` (missing cells empty)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def append_row(out: Path, row: dict, columns: Sequence[str]) -> None:
    """Add ``row`` to the CSV ``out`` (created if missing), rewriting it under the header ``columns``: rows
    written before a column was added get empty cells there."""
    out = Path(out)
    rows = []
    if out.exists():
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
    write_csv(out, rows + [row], columns)


def emit_row(row: dict, columns: Sequence[str], out: Optional[Path] = None, indent: Optional[int] = None) -> None:
    """Print the measured ``row`` as JSON on stdout and, when ``out`` is given (``--append``), add it to
    that CSV (:func:`append_row`)."""
    print(json.dumps(row, indent=indent), flush=True)
    if out is not None:
        append_row(out, row, columns)

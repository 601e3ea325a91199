"""queries.csv is written with the csv module (sqdf_bbo.harness.persist.rows_csv): the same text pandas wrote
before, for the rows the runner logs (each column one type: int, float with NaN/inf, or str; a column may be
absent from early rows), and pandas reads it back to the same values."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from sqdf_bbo.harness.persist import rows_csv

_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_columns = st.lists(st.tuples(st.sampled_from(["int", "float", "str"]), st.booleans()), min_size=1, max_size=6)


@st.composite
def _rows(draw):
    cols = draw(_columns)
    n = draw(st.integers(0, 8))
    rows = []
    for i in range(n):
        row = {}
        for j, (kind, late) in enumerate(cols):
            if late and i == 0 and j > 0:  # a column that only later rows have (pandas: empty field on row 0)
                continue
            if kind == "int":
                row[f"c{j}"] = draw(st.integers(-10**12, 10**12))
            elif kind == "float":
                row[f"c{j}"] = draw(_floats)
            else:
                row[f"c{j}"] = draw(st.text("abc ,\"\n", min_size=1, max_size=5))
        rows.append(row)
    return rows


@settings(max_examples=200, deadline=None)
@given(_rows())
def test_rows_csv_reads_back_like_pandas_wrote_it(rows):
    mine = rows_csv(rows)
    theirs = pd.DataFrame(rows).to_csv(index=False)
    back_mine, back_theirs = (pd.read_csv(io.StringIO(t), keep_default_na=True) if rows else None
                              for t in (mine, theirs))
    if not rows:
        assert mine == theirs == "\n"
        return
    pd.testing.assert_frame_equal(back_mine, back_theirs, check_dtype=False)
    if all(len(r) == len(rows[0]) for r in rows):  # every column on every row: the very same text
        assert mine == theirs


def test_rows_csv_on_a_runner_like_log():
    rows = [{"round": 1, "query_index": i, "observed": float(v), "true": float(v) - 0.5, "valid": int(v > 0),
             "x0": 1 / 3, "x1": math.nan} for i, v in enumerate(np.linspace(-1, 1, 5))]
    assert rows_csv(rows) == pd.DataFrame(rows).to_csv(index=False)
    assert rows_csv(rows).splitlines()[1] == "1,0,-1.0,-1.5,0,0.3333333333333333,"

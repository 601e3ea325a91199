"""The committed image-tier leaderboard rows follow from the committed run records: recompute the
`aesthetic` rows of results/leaderboard.csv from results/run_records/aesthetic_b1000 (each run's
config.json, rounds.jsonl and final.json) and compare them column by column (no run is re-made here; the
bootstrap CIs are seeded, so the recomputation is exact up to the CSV's printing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import leaderboard as lb

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "run_records" / "aesthetic_b1000"
COMMITTED = ROOT / "results" / "leaderboard.csv"


def test_committed_aesthetic_rows_recompute_from_the_run_records(tmp_path):
    runs = sorted(d.name for d in RECORDS.iterdir() if (d / "final.json").exists())
    assert len(runs) == 55, f"{len(runs)} of 55 run records (11 methods x 5 seeds) in {RECORDS}"
    out = tmp_path / "lb.csv"
    assert lb.main([str(RECORDS), "--min-seeds", "5", "--out", str(out)]) == 0
    new = pd.read_csv(out).sort_values("method").reset_index(drop=True)
    old = pd.read_csv(COMMITTED)
    old = old[old.task == "aesthetic"].sort_values("method").reset_index(drop=True)
    assert list(new["method"]) == list(old["method"]) and len(new) == 11
    assert set(new.columns) <= set(old.columns)
    assert old[sorted(set(old.columns) - set(new.columns))].isna().all().all()  # other tiers' metrics
    for col in new.columns:
        a, b = new[col], old[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            assert np.allclose(a.astype(float), b.astype(float), rtol=1e-4, equal_nan=True), col
        else:
            assert list(a.astype(str)) == list(b.astype(str)), col

"""Per-run records (benchmarks/report/run_records.py): one row per run from leaderboard and frontier layouts, the
committed results/leaderboard_runs.csv, the leaderboard rebuilt from it, and the refusal to pool protocols."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.report import leaderboard as lb
from benchmarks.report import run_records as rr
from fake_runs import write_fake_frontier, write_fake_run, write_fake_sweep

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "run_records" / "aesthetic_b1000"
RUNS_CSV = ROOT / "results" / "leaderboard_runs.csv"
COMMITTED = ROOT / "results" / "leaderboard.csv"


def _same_table(new: pd.DataFrame, old: pd.DataFrame, rtol: float) -> None:
    """Column by column: numbers within rtol (NaN = NaN), everything else as text."""
    for col in new.columns:
        a, b = new[col], old[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            assert np.allclose(a.astype(float), b.astype(float), rtol=rtol, atol=0, equal_nan=True), col
        else:
            assert list(a.fillna("").astype(str)) == list(b.fillna("").astype(str)), col


def test_committed_per_run_csv_holds_the_committed_run_records(tmp_path):
    out = tmp_path / "runs.csv"
    assert rr.main(["--runs", str(RECORDS), "--csv", str(out)]) == 0
    new, old = rr.read_records(out), rr.read_records(RUNS_CSV)
    assert len(old) == 55 and list(new.columns) == list(old.columns)
    assert list(old.columns[:len(rr.FIRST)]) == rr.FIRST
    assert set(old["protocol"]) == {"legacy"} and set(old["commit"].str[:7]) == {"a1ac65e"}
    _same_table(new, old, rtol=1e-12)


def test_committed_aesthetic_leaderboard_rows_rebuild_from_the_per_run_csv():
    finals, rounds = rr.leaderboard_frames(rr.read_records(RUNS_CSV))
    new = lb.build_leaderboard(finals, rounds).sort_values("method").reset_index(drop=True)
    old = pd.read_csv(COMMITTED)
    old = old[old.task == "aesthetic"].sort_values("method").reset_index(drop=True)
    assert len(new) == 11 and list(new["method"]) == list(old["method"]) and set(new["n_seeds"]) == {5}
    assert set(new.columns) <= set(old.columns)
    assert old[sorted(set(old.columns) - set(new.columns))].isna().all().all()  # other tiers' metrics
    _same_table(new, old, rtol=1e-4)  # the committed CSV prints 6 significant digits


def test_records_rebuild_the_same_leaderboard_as_the_folders(tmp_path):
    write_fake_sweep(tmp_path / "runs", seeds=range(3), with_png=False)
    write_fake_run(tmp_path / "runs", "aesthetic", "sqdf", 0, with_png=False)  # an unknown optimum too
    finals, rounds = lb.load_runs([tmp_path / "runs"])
    direct = lb.build_leaderboard(finals, rounds, reps=200)
    out = tmp_path / "runs.csv"
    assert rr.main(["--runs", str(tmp_path / "runs"), "--csv", str(out)]) == 0
    rebuilt = lb.build_leaderboard(*rr.leaderboard_frames(rr.read_records(out)), reps=200)
    assert list(rebuilt.columns) == list(direct.columns)
    _same_table(rebuilt, direct, rtol=1e-12)
    records = rr.read_records(out)
    assert records["knob"].eq("").all() and records["value"].isna().all()
    assert records["normalised_score"].notna().all() and records["fd_phi"].isna().all()  # no run measured it


def test_frontier_grid_folders_fill_knob_value_and_point(tmp_path):
    out = tmp_path / "frontier"
    write_fake_frontier(out, {"sqdf": ("beta", [0.1, 1.0]), "pretrained": None}, tasks=("ackley",), seeds=range(2))
    write_fake_run(out / "_logs", "ackley", "sqdf", 0, with_png=False)  # not a run of the grid
    df = rr.collect([out])
    assert len(df) == 3 * 2
    got = sorted(zip(df["method"], df["knob"], df["value"].fillna(-1), df["point"]))
    assert got == [("pretrained", "", -1, "pretrained__default")] * 2 + \
        [("sqdf", "beta", 0.1, "sqdf__beta=0.1")] * 2 + [("sqdf", "beta", 1.0, "sqdf__beta=1")] * 2
    assert set(df["run_dir"]) >= {"sqdf__beta=0.1/ackley__sqdf__b200__s0"}
    rr.require_one_protocol(df, "frontier")  # every grid point is one row


def test_two_folders_for_one_run_are_an_error(tmp_path, capsys):
    write_fake_run(tmp_path / "a", "ackley", "sqdf", 0, with_png=False)
    write_fake_run(tmp_path / "b", "ackley", "sqdf", 0, with_png=False)
    assert rr.main(["--runs", str(tmp_path), "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "two run folders for one run" in err and len(err.strip().splitlines()) == 1
    assert rr.main(["--runs", str(tmp_path / "nowhere"), "--csv", str(tmp_path / "x.csv")]) == 2


def _frame(rows):
    return pd.DataFrame(rows, columns=["task", "method", "budget", "seed", "protocol", "task_protocol"])


def test_require_one_protocol_refuses_a_row_or_a_task_of_several_protocols():
    ok = _frame([("levy", "sqdf", 100, 0, "v1-a", "v1-t"), ("levy", "sqdf", 100, 1, "v1-a", "v1-t"),
                 ("levy", "seiko", 100, 0, "v1-b", "v1-t"), ("levy", "sqdf", 200, 0, "v1-c", "v1-t"),
                 ("ackley", "sqdf", 100, 0, "v1-d", "v1-u")])
    rr.require_one_protocol(ok, "table")  # different methods, budgets and tasks may differ
    rr.require_one_protocol(_frame([("levy", "sqdf", 100, s, None, None) for s in range(3)]), "table")  # legacy
    mixed = pd.concat([ok, _frame([("levy", "sqdf", 100, 2, "v1-z", "v1-t")])])
    with pytest.raises(rr.RunRecordError) as e:
        rr.require_one_protocol(mixed, "results/x.csv")
    msg = str(e.value)
    assert "\n" not in msg and "results/x.csv" in msg and "task=levy method=sqdf budget=100" in msg
    assert "2 protocols (v1-a, v1-z)" in msg
    legacy_and_new = _frame([("levy", "sqdf", 100, 0, "v1-a", "v1-t"), ("levy", "sqdf", 100, 1, "", "")])
    with pytest.raises(rr.RunRecordError, match=r"\(legacy, v1-a\)"):
        rr.require_one_protocol(legacy_and_new, "table")
    other_oracle = pd.concat([ok, _frame([("levy", "ddpo", 100, 0, "v1-e", "v1-t2")])])
    with pytest.raises(rr.RunRecordError, match=r"methods compared on task=levy come from 2 protocols \(v1-t, v1-t2\)"):
        rr.require_one_protocol(other_oracle, "table")
    with_knob = _frame([("levy", "sqdf", 100, 0, "v1-a", "v1-t"), ("levy", "sqdf", 100, 0, "v1-b", "v1-t")])
    rr.require_one_protocol(with_knob.assign(knob="beta", value=[0.1, 1.0]), "frontier")  # two grid points
    with pytest.raises(rr.RunRecordError):
        rr.require_one_protocol(with_knob, "leaderboard")


def test_leaderboard_refuses_to_pool_runs_of_two_protocols(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_fake_sweep(runs, tasks=("ackley",), methods=("pretrained", "sqdf"), seeds=range(2), with_png=False)
    assert lb.main([str(runs), "--out", str(tmp_path / "ok.csv"), "--reps", "50"]) == 0  # all legacy
    cfg_path = runs / "ackley__sqdf__b200__s1" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "protocol": "v1-0123456789ab"}))
    assert lb.main([str(runs), "--out", str(tmp_path / "bad.csv"), "--reps", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "task=ackley method=sqdf budget=200" in err and "(legacy, v1-0123456789ab)" in err
    assert not (tmp_path / "bad.csv").exists()

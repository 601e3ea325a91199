"""The committed leaderboard reproduces from a clean clone: re-run two of its rows (levy x pretrained and
levy x draft-1, 5 seeds each, budget 2000, the exact settings of the committed sweep) through
sweep -> leaderboard, check the settings hash matches the committed row's, and that every re-run row's
mean eval reward lies in the committed 95% CI (``leaderboard --compare``). The full sweep is a benchmark;
these rows are the cheapest ones (about 1 CPU-minute together)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.report import leaderboard as lb
from benchmarks.run import sweep

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "leaderboard.csv"
# the settings of the committed synthetic sweep (docs/results.md, "Fixed-setting leaderboard")
SETTINGS = ["--set", "run.n_eval=128", "--set-for", "draft-1", "proxy_epochs=30",
            "--set-for", "draft-1", "updates_per_round=20"]
ROWS = [("levy", "pretrained"), ("levy", "draft-1")]


def test_committed_rows_reproduce(tmp_path):
    committed = pd.read_csv(COMMITTED)
    have = {(t, m) for t, m in zip(committed["task"], committed["method"])}
    missing = [r for r in ROWS if r not in have]
    assert not missing, f"rows {missing} are not in {COMMITTED}"
    out = tmp_path / "runs"
    methods = ",".join(m for _, m in ROWS)
    assert sweep.main(["--tasks", "levy", "--methods", methods, "--seeds", "0-4", "--budget", "2000",
                       "--out", str(out), "--workers", "2", "--threads", "1", "--no-progress", *SETTINGS]) == 0
    new_csv = tmp_path / "lb.csv"
    assert lb.main([str(out), "--out", str(new_csv), "--compare", str(COMMITTED)]) == 0
    new = pd.read_csv(new_csv)
    for task, method in ROWS:
        ref = committed[(committed.task == task) & (committed.method == method)].iloc[0]
        row = new[(new.task == task) & (new.method == method)].iloc[0]
        assert row["config_hash"] == ref["config_hash"], (task, method, "settings differ from the committed run")
        assert row["n_seeds"] == ref["n_seeds"] == 5
        assert ref["eval_reward_mean_ci_low"] <= row["eval_reward_mean"] <= ref["eval_reward_mean_ci_high"]

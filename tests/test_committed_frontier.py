"""The committed frontier reproduces from a clean clone: re-run one of its cells (levy x sqdf at beta = 1,
seeds 0-4, budget 1000, the exact settings of benchmarks/run/reproduce_frontier.sh) through
benchmarks.run.frontier and check it against the committed per-run records (results/frontier_runs.csv) and
the committed 95 % CIs of results/frontier.csv. On the CPU model that made the committed cell a re-run is
bit for bit the same, so every seed's eval reward and path KL equal the committed run's; on another CPU model (this project's machines differ: Intel Xeon, AMD
EPYC) the kernels round differently and the seeds follow other trajectories, so the re-run is a fresh
sample and the check is that the committed CI and the re-run's 95 % Student-t interval over its seeds
overlap. The whole frontier is a benchmark; this cell costs about 30 CPU-seconds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.perf.precision_check import paired_t_interval
from sqdf_bbo.protocol import machine_record
from benchmarks.run import frontier

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "frontier.csv"
RUNS = ROOT / "results" / "frontier_runs.csv"
SETTINGS = ["--set", "run.n_eval=128", "--set", "num_steps=10",
            "--set-for", "sqdf", "updates_per_round=20", "--set-for", "sqdf", "proxy_epochs=30"]


def test_committed_frontier_cell_reproduces(tmp_path):
    committed = pd.read_csv(COMMITTED)
    ref = committed[(committed.task == "levy") & (committed.method == "sqdf") & (committed.knob == "beta")
                    & (committed.value.astype(float) == 1.0) & (committed.budget == 1000)]
    assert len(ref) == 1, "levy x sqdf x beta=1 is not in results/frontier.csv"
    ref = ref.iloc[0]
    csv = tmp_path / "frontier.csv"
    assert frontier.main(["--tasks", "levy", "--methods", "sqdf", "--grid", "sqdf=1", "--budget", "1000",
                          "--seeds", "0-4", "--out", str(tmp_path / "runs"), "--workers", "2", "--threads", "1",
                          "--no-progress", *SETTINGS, "--csv", str(csv), "--plots", str(tmp_path),
                          "--leaderboard", str(tmp_path / "lb.csv")]) == 0
    new = pd.read_csv(csv)
    row = new[(new.method == "sqdf")].iloc[0]
    assert row["n_seeds"] == ref["n_seeds"] == 5
    finals = [json.loads(f.read_text()) for f in sorted((tmp_path / "runs").rglob("final.json"))]
    assert len(finals) == 5
    runs = pd.read_csv(RUNS)
    cell = runs[(runs.task == "levy") & (runs.method == "sqdf") & (runs.value.astype(float) == 1.0)
                ].set_index("seed").sort_index()
    assert list(cell.index) == [0, 1, 2, 3, 4]
    if set(cell["cpu_model"]) == {machine_cpu_model()}:  # the same CPU model: the same numbers, seed by seed
        for f in finals:
            for metric in ("eval_reward", "path_kl"):
                assert f[metric] == pytest.approx(cell.loc[f["seed"], metric], rel=1e-9, abs=0), (metric, f["seed"])
    for metric in ("eval_reward", "path_kl"):
        lo, hi = ref[f"{metric}_ci_low"], ref[f"{metric}_ci_high"]
        seeds = np.array([f[metric] for f in finals])
        assert seeds.mean() == pytest.approx(row[f"{metric}_mean"], rel=1e-5)
        _, t_lo, t_hi = paired_t_interval(seeds)  # the 95 % Student-t interval of the seeds' mean
        assert t_lo <= hi + 1e-9 and t_hi >= lo - 1e-9, (
            metric, list(seeds), (lo, hi))


def machine_cpu_model() -> str:
    """The CPU model as the per-run records name it (their ``cpu_model`` column)."""
    return machine_record()["cpu_model"]

"""SQDF's ablations (benchmarks/run/reproduce_sqdf_ablations.sh, benchmarks/run/ablations.py): each variant is
the frontier's SQDF with one setting changed, swept over the same beta grid; the committed table is rebuilt
from the committed run records, and its variants are compared with the frontier's own SQDF runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.report import run_folders as rf
from benchmarks.run import ablations
from benchmarks.run import frontier as fr

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("gamma=1", "q_estimator=tweedie", "buffer=none", "per_priority=clamp")


def _runs(method: str, task: str, rewards: dict, low=None, high=None) -> pd.DataFrame:
    rows = [{"task": task, "method": method, "budget": 1000, "seed": s, "value": v, "eval_reward": r,
             "path_kl": 1.0, "protocol": f"p-{method}-{v}"} for (v, s), r in rewards.items()]
    df = pd.DataFrame(rows)
    if low is not None:
        df = df.assign(norm_low=low, norm_high=high, norm_high_source="optimum",
                       normalised_score=(df["eval_reward"] - low) / (high - low))
    return df


def test_combine_names_the_variants_and_scores_them_on_the_reference_scale():
    ref = pd.concat([_runs("sqdf", "levy", {(0.1, 0): -20.0, (0.1, 1): -18.0}, low=-30.0, high=0.0),
                     _runs("pretrained", "levy", {(math.nan, 0): -30.0}, low=-30.0, high=0.0),
                     _runs("seiko", "levy", {(0.1, 0): -25.0}, low=-30.0, high=0.0),
                     _runs("sqdf", "ackley", {(0.1, 0): -5.0}, low=-10.0, high=0.0)])
    var = {"gamma=1": _runs("sqdf", "levy", {(0.1, 0): -24.0, (0.1, 1): -15.0})}
    got = ablations.combine(ref, var, "sqdf")
    assert sorted(set(got["method"])) == ["pretrained", "sqdf", "sqdf gamma=1"]  # other methods and tasks dropped
    assert set(got["task"]) == {"levy"}
    v = got[got["method"] == "sqdf gamma=1"].set_index("seed")
    # (reward - pretrained) / (optimum - pretrained) with the reference's bounds: (-24 + 30) / 30, (-15 + 30) / 30
    assert v.loc[0, "normalised_score"] == pytest.approx(0.2) and v.loc[1, "normalised_score"] == pytest.approx(0.5)
    assert (v["norm_low"] == -30.0).all() and (v["norm_high_source"] == "optimum").all()


def test_combine_refuses_other_methods_and_tasks_the_reference_lacks():
    ref = _runs("sqdf", "levy", {(0.1, 0): -20.0}, low=-30.0, high=0.0)
    with pytest.raises(rf.LeaderboardError, match="runs of seiko; expected only sqdf"):
        ablations.combine(ref, {"gamma=1": _runs("seiko", "levy", {(0.1, 0): -1.0})}, "sqdf")
    with pytest.raises(rf.LeaderboardError, match="no runs of sqdf on ackley"):
        ablations.combine(ref, {"gamma=1": _runs("sqdf", "ackley", {(0.1, 0): -1.0})}, "sqdf")


def test_variant_folders_must_name_a_setting(tmp_path):
    (tmp_path / "gamma=1").mkdir()
    (tmp_path / "_plots").mkdir()
    assert [p.name for p in ablations.variant_folders(tmp_path)] == ["gamma=1"]
    (tmp_path / "stray").mkdir()
    with pytest.raises(rf.LeaderboardError, match="stray is not a variant folder"):
        ablations.variant_folders(tmp_path)


def _arguments(script: str, tmp_path: Path) -> list[list[str]]:
    """Each python command line the script would run (read through a stand-in python), as argument lists."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" ---\n')
    (shim / "python").chmod(0o755)
    out = subprocess.run(["bash", script, "x", "2"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    calls, cur = [], []
    for a in out.stdout.splitlines():
        if a == "---":
            calls.append(cur)
            cur = []
        else:
            cur.append(a)
    return calls


def _opt(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_script_runs_each_variant_with_the_frontier_settings_of_sqdf(tmp_path):
    frontier = next(c for c in _arguments("benchmarks/run/reproduce_frontier.sh", tmp_path) if "--methods" in c)
    sqdf_sets = {frontier[i + 2] for i, a in enumerate(frontier) if a == "--set-for" and frontier[i + 1] == "sqdf"}
    sqdf_sets |= set(_opt(frontier, "--set"))
    calls = _arguments("benchmarks/run/reproduce_sqdf_ablations.sh", tmp_path)
    runs = [c for c in calls if c[:2] == ["-m", "benchmarks.run.frontier"] and "--methods" in c]
    assert [_opt(c, "--out")[0] for c in runs] == [f"x/{v}" for v in VARIANTS]
    for c, v in zip(runs, VARIANTS):
        assert _opt(c, "--methods") == ["sqdf"] and not _opt(c, "--grid")  # the rule's beta grid, as the frontier
        for flag in ("--tasks", "--budget", "--seeds", "--threads"):
            assert _opt(c, flag) == _opt(frontier, flag), flag
        assert set(_opt(c, "--set")) == sqdf_sets | {v}
    tail = calls[len(runs):]
    assert tail[0][:2] == ["-m", "benchmarks.run.ablations"] and _opt(tail[0], "--reference") == ["results/frontier_runs.csv"]
    assert _opt(tail[1], "--from-runs") == ["results/sqdf_ablations_runs.csv"]


RECORDS = ROOT / "results" / "run_records" / "sqdf_ablations_b1000"
COMMITTED = ROOT / "results" / "sqdf_ablations_runs.csv"


def test_committed_ablations_are_rebuilt_from_their_records(tmp_path):
    rebuilt = tmp_path / "runs.csv"
    assert ablations.main(["--out", str(RECORDS), "--runs-csv", str(rebuilt)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(rebuilt), pd.read_csv(COMMITTED))
    runs = pd.read_csv(COMMITTED)
    variants = sorted(m for m in set(runs["method"]) if m.startswith("sqdf "))
    assert variants == sorted(f"sqdf {v}" for v in VARIANTS)
    for m, g in runs[runs["method"].str.startswith("sqdf")].groupby("method"):
        seeds = g.groupby(["task", "value"])["seed"].apply(lambda x: tuple(sorted(x)))
        assert len(seeds) == 16 and set(seeds) == {(0, 1, 2, 3, 4)}, m  # 4 tasks x 4 betas, 5 seeds each
    # the per-point table is what the frontier tool draws from the runs CSV
    assert fr.main(["--from-runs", str(COMMITTED), "--csv", str(tmp_path / "points.csv"), "--plots", "",
                    "--leaderboard", ""]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "points.csv"), pd.read_csv(ROOT / "results" / "sqdf_ablations.csv"))


def test_a_variant_differs_from_the_frontier_run_in_its_own_setting_only():
    frontier = ROOT / "results" / "run_records" / "frontier_b1000"
    for v in VARIANTS:
        key, _ = v.split("=")
        for cfg_path in sorted((RECORDS / v).glob("sqdf__beta=*/*__s0/config.json")):
            ref_path = frontier / cfg_path.parent.parent.name / cfg_path.parent.name / "config.json"
            got, ref = (json.loads(p.read_text())["protocol_inputs"] for p in (cfg_path, ref_path))
            differ = {k for k in set(got["method"]["settings"]) | set(ref["method"]["settings"])
                      if got["method"]["settings"].get(k) != ref["method"]["settings"].get(k)}
            assert differ == {key}, (cfg_path, differ)
            assert {k: got[k] for k in got if k != "method"} == {k: ref[k] for k in ref if k != "method"}

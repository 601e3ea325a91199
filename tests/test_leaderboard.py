"""Tests of benchmarks/report/stats.py (against scipy) and benchmarks/report/leaderboard.py (on fake run folders)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from benchmarks.report import leaderboard as lb
from benchmarks.report import stats
from fake_runs import write_fake_run, write_fake_sweep

FIXED = [np.array([3.1, -0.4, 2.2, 5.0, 1.7]),
         np.array([0.3, 0.9, -1.2, 4.4, 2.8, 2.0, 7.5, -3.3, 1.1, 0.0]),
         np.array([10.0, 11.0, 9.5, 30.0]),
         np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])]


# ---- statistics vs scipy -------------------------------------------------------------------------
@pytest.mark.parametrize("x", FIXED)
def test_iqm_is_scipy_trim_mean(x):
    assert stats.iqm(x) == pytest.approx(st.trim_mean(x, 0.25), rel=1e-12)
    assert stats.aggregate_iqm([x]) == pytest.approx(st.trim_mean(x, 0.25), rel=1e-12)


def test_aggregate_iqm_pools_all_runs_like_rliable():
    m = np.column_stack([FIXED[0], FIXED[0][::-1] * 2])  # (runs, tasks) as in rliable
    assert stats.aggregate_iqm(m) == pytest.approx(st.trim_mean(m, 0.25, axis=None), rel=1e-12)
    assert stats.aggregate_mean(m) == pytest.approx(m.mean(0).mean())
    assert stats.aggregate_median(m) == pytest.approx(np.median(m.mean(0)))
    assert stats.aggregate_optimality_gap(m, 1.0) == pytest.approx(np.mean(np.maximum(1 - m, 0)))


@pytest.mark.parametrize("x", FIXED)
@pytest.mark.parametrize("name", ["aggregate_iqm", "aggregate_mean"])
def test_one_task_bootstrap_matches_scipy_percentile(x, name):
    func = stats.AGGREGATES[name]
    stat = (lambda a, axis=-1: st.trim_mean(a, 0.25, axis=axis)) if name == "aggregate_iqm" else np.mean
    ref = st.bootstrap((x,), stat, n_resamples=3000, method="percentile", confidence_level=0.95,
                       rng=np.random.default_rng(7), vectorized=True)
    point, lo, hi = stats.stratified_bootstrap_ci([x], func, reps=3000, seed=7)
    assert point == pytest.approx(stat(x), rel=1e-12)
    assert lo == pytest.approx(ref.confidence_interval.low, rel=1e-9, abs=1e-12)
    assert hi == pytest.approx(ref.confidence_interval.high, rel=1e-9, abs=1e-12)
    assert lo <= point <= hi


def test_stratified_bootstrap_resamples_within_tasks_only():
    # constant tasks: any within-task resample has the same mean; pooled resampling would not
    scores = [np.zeros(4), np.full(6, 10.0)]
    _, lo, hi = stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, reps=500, seed=1)
    assert lo == hi == 5.0
    # the spread of the aggregate mean of two noisy tasks is that of the average of independent task means
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 8), rng.normal(0, 1, 8)
    idx = stats.stratified_bootstrap_indices([8, 8], 4000, np.random.default_rng(3))
    boot = (a[idx[0]].mean(1) + b[idx[1]].mean(1)) / 2
    _, lo, hi = stats.stratified_bootstrap_ci([a, b], stats.aggregate_mean, reps=4000, seed=3)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])), rel=1e-12)


def test_interval_estimates_and_errors():
    points, cis = stats.get_interval_estimates({"a": [FIXED[0]], "b": [FIXED[2]]}, stats.aggregate_iqm, reps=200)
    assert set(points) == {"a", "b"} and cis["a"].shape == (2,)
    with pytest.raises(ValueError, match="non-finite"):
        stats.aggregate_mean([np.array([1.0, np.nan])])
    with pytest.raises(ValueError, match="no run"):
        stats.aggregate_mean([np.array([])])
    with pytest.raises(ValueError, match="confidence_interval_size"):
        stats.stratified_bootstrap_ci([FIXED[0]], stats.aggregate_mean, confidence_interval_size=95)
    with pytest.raises(ValueError, match="equal"):
        stats.normalise(np.ones(2), 1.0, 1.0)
    assert stats.normalise(np.array([2.0, 4.0]), 2.0, 4.0).tolist() == [0.0, 1.0]


# ---- leaderboard on fake runs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_fake_sweep(root, tasks=("ackley", "aesthetic"), seeds=range(5), with_png=False)
    write_fake_run(root, "ackley", "sqdf", 9, finished=False, with_png=False)  # unfinished: left out
    return root


def test_leaderboard_rows_match_final_json(fake_runs):
    finals, rounds = lb.load_runs([fake_runs])
    board = lb.build_leaderboard(finals, rounds, reps=500)
    assert len(board) == 2 * 3 and set(board["n_seeds"]) == {5}
    for _, row in board.iterrows():
        vals = np.array([json.loads((fake_runs / f"{row['task']}__{row['method']}__b200__s{s}" / "final.json")
                                    .read_text())["eval_reward"] for s in range(5)])
        assert row["eval_reward_mean"] == pytest.approx(vals.mean())
        assert row["eval_reward_iqm"] == pytest.approx(st.trim_mean(vals, 0.25))
        assert row["eval_reward_mean_ci_low"] <= row["eval_reward_mean"] <= row["eval_reward_mean_ci_high"]
        assert row["eval_reward_iqm_ci_low"] <= row["eval_reward_iqm"] <= row["eval_reward_iqm_ci_high"]
    b = board.set_index(["task", "method"])
    # normalisation: 0 = pretrained model (round 0), 1 = optimum (ackley) or best seen (aesthetic: unknown)
    assert b.loc[("ackley", "sqdf"), "norm_high_source"] == "optimum"
    assert b.loc[("ackley", "sqdf"), "norm_high"] == 0.0
    assert b.loc[("aesthetic", "sqdf"), "norm_high_source"] == "best_seen"
    assert b.loc[("aesthetic", "sqdf"), "norm_high"] == pytest.approx(rounds.loc[rounds.task == "aesthetic",
                                                                                 "eval_reward"].max())
    r0 = rounds[(rounds.task == "ackley") & (rounds["round"] == 0)].groupby("seed")["eval_reward"].mean().mean()
    assert b.loc[("ackley", "sqdf"), "norm_low"] == pytest.approx(r0)
    sq = b.loc[("ackley", "sqdf")]
    assert sq["normalised_score_mean"] == pytest.approx((sq["eval_reward_mean"] - r0) / (0.0 - r0))
    assert abs(b.loc[("ackley", "pretrained"), "normalised_score_mean"]) < 0.05
    assert b.loc[("ackley", "sqdf"), "normalised_score_iqm"] > b.loc[("ackley", "ddpo"), "normalised_score_iqm"]
    # task-specific keys become columns; the image task has no invalid fraction
    assert np.isnan(b.loc[("aesthetic", "sqdf"), "invalid_frac_mean"])
    assert b.loc[("aesthetic", "sqdf"), "fd_inception_mean"] > 0
    assert b.loc[("ackley", "sqdf"), "peak_mem_mb_max"] == 504.0


def test_cli_writes_deterministic_csv_md_and_aggregate(fake_runs, tmp_path, capsys):
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    md, agg = tmp_path / "lb.md", tmp_path / "agg.csv"
    assert lb.main([str(fake_runs), "--out", str(out1), "--md", str(md), "--aggregate", str(agg), "--reps", "300"]) == 0
    assert "unfinished" in capsys.readouterr().err
    assert lb.main([str(fake_runs), "--out", str(out2), "--reps", "300"]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    text = md.read_text()
    assert text.count("\n| ackley |") == 3 and "eval reward IQM [95% CI]" in text and "aggregate IQM" in text
    a = pd.read_csv(agg)
    assert set(a["method"]) == {"pretrained", "sqdf", "ddpo"} and set(a["n_tasks"]) == {2}
    # compare: identical tables agree; a shifted row is reported and the exit code is 1
    assert lb.main([str(fake_runs), "--out", str(out2), "--reps", "300", "--compare", str(out1)]) == 0
    ref = pd.read_csv(out1)
    ref.loc[0, ["eval_reward_mean", "eval_reward_mean_ci_low", "eval_reward_mean_ci_high"]] += 100.0
    ref.to_csv(tmp_path / "shifted.csv", index=False)
    capsys.readouterr()
    assert lb.main([str(fake_runs), "--out", str(out2), "--reps", "300", "--compare", str(tmp_path / "shifted.csv")]) == 1
    assert "DISAGREE" in capsys.readouterr().out


def test_errors_name_the_bad_input(fake_runs, tmp_path, capsys):
    assert lb.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert lb.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no finished run" in capsys.readouterr().err
    # the same run in two roots
    dup = tmp_path / "dup"
    shutil.copytree(fake_runs / "ackley__sqdf__b200__s0", dup / "ackley__sqdf__b200__s0")
    assert lb.main([str(fake_runs), str(dup), "--out", str(tmp_path / "x.csv")]) == 2
    assert "two run folders" in capsys.readouterr().err
    assert lb.main([str(fake_runs), str(dup), "--out", str(tmp_path / "x.csv"), "--on-duplicate", "first"]) == 0
    assert "(kept); eval_reward identical" in capsys.readouterr().err
    # a final.json without eval_reward
    bad = tmp_path / "bad"
    d = write_fake_run(bad, "ackley", "sqdf", 0, with_png=False)
    fin = json.loads((d / "final.json").read_text())
    del fin["eval_reward"]
    (d / "final.json").write_text(json.dumps(fin))
    assert lb.main([str(bad), "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "final.json lacks eval_reward" in err and str(d) in err


def test_mixed_settings_within_a_row_are_refused(tmp_path, capsys):
    root = tmp_path / "mixed"
    write_fake_run(root, "ackley", "sqdf", 0, with_png=False, agent={"lr": 1e-3})
    write_fake_run(root, "ackley", "sqdf", 1, with_png=False, agent={"lr": 1e-2})
    assert lb.main([str(root), "--out", str(tmp_path / "x.csv")]) == 2
    assert "different settings" in capsys.readouterr().err
    assert lb.main([str(root), "--out", str(tmp_path / "x.csv"), "--allow-mixed"]) == 0
    assert len(pd.read_csv(tmp_path / "x.csv")["config_hash"].item().split()) == 2


def test_min_seeds_leaves_out_thin_rows(fake_runs, tmp_path, capsys):
    extra = tmp_path / "extra"
    write_fake_run(extra, "ackley", "sqdf", 7, with_png=False)
    write_fake_run(extra, "levy-manifold", "sqdf", 0, with_png=False)  # a row with one seed
    out = tmp_path / "x.csv"
    assert lb.main([str(fake_runs), str(extra), "--out", str(out), "--min-seeds", "2", "--reps", "200",
                    "--md", str(tmp_path / "x.md")]) == 0
    assert "left out levy-manifold / sqdf / b200: 1 seed(s)" in capsys.readouterr().err
    df = pd.read_csv(out)
    assert "levy-manifold" not in set(df["task"])
    assert df.set_index(["task", "method"]).loc[("ackley", "sqdf"), "n_seeds"] == 6


def test_update_replaces_the_rows_its_runs_cover_and_keeps_the_rest(tmp_path, capsys):
    """Re-making one tier of a committed leaderboard: the other rows stay byte for byte, the covered ones are
    the new runs', and an aggregate over fewer tasks than the row it would replace is refused."""
    full, part = tmp_path / "full", tmp_path / "part"
    write_fake_sweep(full, tasks=("ackley",), seeds=range(4), budget=200, with_png=False)
    write_fake_sweep(full, tasks=("aesthetic",), seeds=range(4), budget=100, with_png=False)
    write_fake_sweep(part, tasks=("aesthetic",), seeds=range(2), budget=100, with_png=False)
    out, agg, md = tmp_path / "lb.csv", tmp_path / "agg.csv", tmp_path / "lb.md"
    assert lb.main([str(full), "--out", str(out), "--aggregate", str(agg), "--reps", "200"]) == 0
    before, agg_before = out.read_text().splitlines(), pd.read_csv(agg)
    assert lb.main([str(part), "--out", str(out), "--aggregate", str(agg), "--md", str(md), "--reps", "200",
                    "--update"]) == 0
    after = out.read_text().splitlines()
    assert after[0] == before[0]
    assert [ln for ln in after if ln.startswith("ackley,")] == [ln for ln in before if ln.startswith("ackley,")]
    new_rows = pd.read_csv(out).set_index(["task", "method"])
    assert (new_rows.loc["aesthetic", "n_seeds"] == 2).all() and (new_rows.loc["ackley", "n_seeds"] == 4).all()
    # the aesthetic rows equal a table made from the partial runs alone
    alone = tmp_path / "alone.csv"
    assert lb.main([str(part), "--out", str(alone), "--reps", "200"]) == 0
    got = pd.read_csv(out).query("task == 'aesthetic'").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[pd.read_csv(alone).columns], pd.read_csv(alone), check_dtype=False)
    assert got.drop(columns=pd.read_csv(alone).columns).isna().all().all()  # ackley-only metric columns
    a = pd.read_csv(agg).set_index(["method", "budget"])
    assert (a.xs(100, level="budget")["n_runs"] == 2).all()
    pd.testing.assert_frame_equal(a.xs(200, level="budget"),
                                  agg_before.set_index(["method", "budget"]).xs(200, level="budget"))
    assert md.read_text().count("\n| ackley |") == 3
    # re-making a task and budget without one of its methods drops that method's old row (its normalised
    # score came from the old runs' bounds) and its aggregate, and says so
    fewer = tmp_path / "fewer"
    write_fake_sweep(fewer, tasks=("aesthetic",), methods=("pretrained", "sqdf"), seeds=range(2), budget=100,
                     with_png=False)
    capsys.readouterr()
    assert lb.main([str(fewer), "--out", str(out), "--aggregate", str(agg), "--reps", "200", "--update"]) == 0
    err = capsys.readouterr().err
    assert "dropped aesthetic / ddpo / b100" in err and "dropped aggregate ddpo / b100" in err
    rows = pd.read_csv(out)
    assert set(rows.loc[rows["task"] == "aesthetic", "method"]) == {"pretrained", "sqdf"}
    assert set(rows.loc[rows["task"] == "ackley", "method"]) == {"pretrained", "sqdf", "ddpo"}
    assert ("ddpo", 100) not in set(zip(*pd.read_csv(agg)[["method", "budget"]].T.to_numpy()))
    # an aggregate over fewer tasks than the committed one is another quantity: refused, nothing written
    both = tmp_path / "both"
    write_fake_sweep(both, tasks=("ackley", "aesthetic"), seeds=range(3), budget=300, with_png=False)
    assert lb.main([str(both), "--out", str(out), "--aggregate", str(agg), "--reps", "200", "--update"]) == 0
    snapshot = out.read_bytes(), agg.read_bytes()
    only = tmp_path / "only"
    write_fake_sweep(only, tasks=("ackley",), seeds=range(3), budget=300, with_png=False)
    capsys.readouterr()
    assert lb.main([str(only), "--out", str(out), "--aggregate", str(agg), "--reps", "200", "--update"]) == 2
    err = capsys.readouterr().err
    assert "covered tasks 'ackley aesthetic'" in err and "re-run aesthetic" in err
    assert (out.read_bytes(), agg.read_bytes()) == snapshot
    # a table that is not a leaderboard: one line naming it, nothing written
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert lb.main([str(both), "--out", str(tmp_path / "other.csv"), "--reps", "200", "--update"]) == 2
    assert "other.csv lacks the column(s) task, method, budget" in capsys.readouterr().err
    assert (tmp_path / "other.csv").read_text() == "a,b\n1,2\n"

"""The achievable frontier (upper concave envelope in linear KL), its per-seed t-intervals, failed runs and the
point table's robust columns, against hand-computed values (benchmarks/report/frontier_stats.py, frontier.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as t_dist

from benchmarks.report import frontier_stats as fs
from benchmarks.report import stats
from benchmarks.run import frontier as fr

# Grid points (mean KL in nats, mean reward), pretrained r_pre = 0:
#   P0 (1, 2), P1 (2, 2.2), P2 (4, 5), P3 (8, 5.5), P4 (5, 4.5), P5 (4, 3)
# Slopes from the start (0, 0): P0 2, P1 1.1, P2 1.25, P3 0.6875 -> P0 is the first vertex.
# From P0: P1 0.2, P2 1.0, P3 0.5, P4 0.625 -> P2. From P2: P3 0.125, P4 -0.5 -> P3.
# P1 lies below the chord P0-P2 (3.0 at KL 2); P4 is dominated by P2 and below the chord P2-P3 (5.125 at KL 5);
# P5 has P2's KL and a lower reward.
KL = [1.0, 2.0, 4.0, 8.0, 5.0, 4.0]
REWARD = [2.0, 2.2, 5.0, 5.5, 4.5, 3.0]


def test_envelope_vertices_values_and_not_reached():
    xs, ys, src = fs.envelope(KL, REWARD, r_pre=0.0)
    assert xs.tolist() == [0.0, 1.0, 4.0, 8.0] and ys.tolist() == [0.0, 2.0, 5.0, 5.5]
    assert src.tolist() == [-1, 0, 2, 3]  # the start, then P0, P2, P3
    # KL 3: between P0 and P2, linear in KL: 2 + (5 - 2) * (3 - 1) / (4 - 1) = 4
    # KL 0.5: start segment: 0 + 2 * 0.5 = 1; KL 6: 5 + 0.5 * 2 / 4 = 5.25; KL 8: P3; KL 9: not reached
    got = fs.envelope_at(xs, ys, [0.0, 0.5, 3.0, 6.0, 8.0, 9.0])
    assert got[:5].tolist() == pytest.approx([0.0, 1.0, 4.0, 5.25, 5.5])
    assert math.isnan(got[5])
    assert fs.vertex_weights_at(xs, 9.0) is None
    assert fs.vertex_weights_at(xs, 3.0).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 0])
    # a point on a chord is not a vertex: (2, 3.0) on P0-P2
    assert fs.envelope([1.0, 2.0, 4.0], [2.0, 3.0, 5.0], 0.0)[2].tolist() == [-1, 0, 2]
    # a point below the pretrained model near KL 0 is below the chord from the start
    xs2, ys2, src2 = fs.envelope([1.0, 10.0], [-0.2, 0.4], 0.0)
    assert xs2.tolist() == [0.0, 10.0] and src2.tolist() == [-1, 1]
    # KL-0, NaN and negative-KL points are left out (the start stands for KL 0)
    assert fs.envelope([0.0, np.nan, -1.0, 1.0], [9.0, 9.0, 9.0, 2.0], 0.0)[2].tolist() == [-1, 3]


def test_descending_tail_not_reached_and_best_up_to():
    # P3 then a larger-KL point with a lower reward, (16, 5): it is the last vertex (KL max 16), the envelope
    # falls from 5.5 at KL 8 to 5 at KL 16: f(12) = 5.25, while R(12) = 5.5 (P3 at KL 8 <= 12).
    xs, ys, src = fs.envelope(KL + [16.0], REWARD + [5.0], 0.0)
    assert xs.tolist() == [0.0, 1.0, 4.0, 8.0, 16.0] and src.tolist() == [-1, 0, 2, 3, 6]
    assert fs.envelope_at(xs, ys, 12.0)[0] == pytest.approx(5.25)
    assert fs.best_up_to(xs, ys, [0.5, 3.0, 12.0, 100.0]).tolist() == pytest.approx([1.0, 4.0, 5.5, 5.5])
    assert math.isnan(fs.envelope_at(xs, ys, 17.0)[0])


def _numeric_auf(vx, vy, cap, low, n=400_001):
    """Independent check: trapezoid over u = log10 KL of R(k) = interp(min(k, k_peak)) on a fine grid."""
    u = np.linspace(math.log10(low), math.log10(cap), n)
    k = np.minimum(10.0 ** u, vx[int(np.argmax(vy))])
    r = np.interp(k, vx, vy)
    return float(np.sum((r[1:] + r[:-1]) / 2 * np.diff(u)) / (u[-1] - u[0]))


def test_auf_exact_against_hand_value_and_numeric_integral():
    # vertices (0, 0), (1, 1) in score units, low 0.1, cap 10: R = k up to KL 1, then 1.
    # integral over u in [-1, 0] of 10^u = (1 - 0.1) / ln 10 = 0.390865; over [0, 1]: 1 -> AUF = 1.390865 / 2
    xs, ys, _ = fs.envelope([1.0], [1.0], 0.0)
    assert fs.area_under_frontier(xs, ys, cap=10, low=0.1) == pytest.approx(0.6954325, abs=1e-6)
    # the example with its falling tail, as scores (/ 10): compare with a numeric integral
    xs, ys, _ = fs.envelope(KL + [16.0], REWARD + [5.0], 0.0)
    for cap, low in ((100, 0.1), (10, 0.5), (6, 2.0)):
        want = _numeric_auf([0, 1, 4, 8, 16], [0, 0.2, 0.5, 0.55, 0.5], cap, low)
        assert fs.area_under_frontier(xs, ys / 10, cap, low) == pytest.approx(want, abs=1e-7)
        assert fs.auf_weights(xs, ys, cap, low).sum() == pytest.approx(1.0)
    # a first point above low: low 2 lies on the segment (1, 2)-(4, 5)
    assert fs.area_under_frontier(xs, ys, 6, 2.0) == pytest.approx(_numeric_auf([0, 1, 4, 8, 16], [0, 2, 5, 5.5, 5], 6, 2.0))


# Two grid points with seeds 0, 1, 2: A at KL 1 (rewards 1, 2, 3.5), B at KL 4 (rewards listed for seeds 2, 0, 1:
# 5.5, 4, 6). r_pre = 0. Means: A 13/6, B 31/6; slopes start->A 2.17, A->B 1.0: both are vertices.
A_R, A_S = [1.0, 2.0, 3.5], [0, 1, 2]
B_R, B_S = [5.5, 4.0, 6.0], [2, 0, 1]


def test_matched_kl_interval_is_the_t_interval_of_the_per_seed_combination():
    s = fs.frontier_summary([[1.0] * 3, [4.0] * 3], [A_R, B_R], r_pre=0.0, norm_low=0.0, norm_high=10.0,
                            targets=[3.0, 0.5, 5.0], cap=10, low=0.1, seed_runs=[A_S, B_S])
    # KL 3 = 1/3 A + 2/3 B, by seed: s0 1/3 + 8/3 = 3, s1 2/3 + 12/3 = 4.666667, s2 3.5/3 + 11/3 = 4.833333
    per_seed = [3.0, 14 / 3, 29 / 6]
    m, lo, hi = stats.t_interval(per_seed)
    assert s["reward_at_kl3"] == pytest.approx(m) == pytest.approx(25 / 6)
    assert (s["reward_at_kl3_ci_low"], s["reward_at_kl3_ci_high"]) == pytest.approx((lo, hi))
    assert (s["score_at_kl3_ci_low"], s["score_at_kl3_ci_high"]) == pytest.approx((lo / 10, hi / 10))
    # KL 0.5 = half the start (0) + half A: per seed 0.5, 1, 1.75
    assert (s["reward_at_kl0.5_ci_low"], s["reward_at_kl0.5_ci_high"]) == pytest.approx(stats.t_interval([0.5, 1, 1.75])[1:])
    assert s["not_reached_kl5"] and math.isnan(s["reward_at_kl5_ci_low"])
    assert s["ci_kind"] == "paired" and s["kl_max"] == 4.0 and s["n_frontier"] == 2
    # AUF weights for vertices at KL 0, 1, 4 (peak 4), low 0.1, cap 10, by hand (divide by the 2 decades):
    #   [0.1, 1]: integral of t = 0.9 / ln 10 = 0.390865 -> start 0.609135, A 0.390865
    #   [1, 4]:   du = log10 4 = 0.602060, integral of t = (3 / ln 10 - 0.602060) / 3 = 0.233608
    #             -> A 0.368452, B 0.233608;  [4, 10]: B 1 - 0.602060 = 0.397940
    c = np.array([0.609135, 0.390865 + 0.368452, 0.233608 + 0.397940]) / 2
    xs, ys, _ = fs.envelope([1.0, 4.0], [13 / 6, 31 / 6], 0.0)
    assert fs.auf_weights(xs, ys, 10, 0.1) == pytest.approx(c, abs=1e-6)
    by_seed = {0: (1.0, 4.0), 1: (2.0, 6.0), 2: (3.5, 5.5)}
    auf_seed = [(c[1] * a + c[2] * b) / 10 for a, b in by_seed.values()]
    m, lo, hi = stats.t_interval(auf_seed)
    assert s["auf"] == pytest.approx(m, abs=1e-6)
    assert (s["auf_ci_low"], s["auf_ci_high"]) == pytest.approx((lo, hi), abs=1e-6)


def test_unshared_seeds_fall_back_to_welch():
    # B's seeds 0, 1, 3 differ from A's: KL 3 = 1/3 A + 2/3 B with variance (1/9) s_A^2 / 3 + (4/9) s_B^2 / 3
    est, lo, hi, how = fs.combination_interval([1 / 3, 2 / 3], [A_R, B_R], [A_S, [0, 1, 3]])
    va, vb = np.var(A_R, ddof=1), np.var(B_R, ddof=1)  # 1.583333, 1.083333
    pa, pb = va / 27, 4 * vb / 27
    df = (pa + pb) ** 2 / (pa ** 2 / 2 + pb ** 2 / 2)
    half = float(t_dist.ppf(0.975, df)) * math.sqrt(pa + pb)
    assert how == "welch" and est == pytest.approx(25 / 6)
    assert (lo, hi) == pytest.approx((25 / 6 - half, 25 / 6 + half))
    # a point with one seed: no interval; no weights at all: the constant itself
    assert np.isnan(fs.combination_interval([1.0], [[2.0]], None)[1])
    assert fs.combination_interval([0.0], [[2.0, 3.0]], None, const=1.5)[:3] == (1.5, 1.5, 1.5)


def test_run_failed_on_hand_made_rows():
    # -manifold: fewer than half valid fails (60 / 128 = 0.47), half exactly does not
    assert fs.run_failed("levy-manifold", -5.0, -10.0, 0.5, n_valid=60, n_eval=128)
    assert not fs.run_failed("levy-manifold", -5.0, -10.0, 0.5, n_valid=64, n_eval=128)
    # without n_valid / n_eval: 1 - invalid_frac (0.4 valid fails, 0.6 does not)
    assert fs.run_failed("levy-manifold", -5.0, -10.0, 0.5, invalid_frac=0.6)
    assert not fs.run_failed("levy-manifold", -5.0, -10.0, 0.5, invalid_frac=0.4)
    # validity only counts on -manifold tasks
    assert not fs.run_failed("levy", -5.0, -10.0, 0.5, n_valid=10, n_eval=128)
    # collapse on any task: below r_pre - 2 sd = -10 - 1 = -11
    assert fs.run_failed("levy", -11.01, -10.0, 0.5) and not fs.run_failed("levy", -10.99, -10.0, 0.5)
    assert not fs.run_failed("levy", -50.0, -10.0, math.nan)  # no pretrained spread: not judged
    assert fs.run_failed("levy", math.nan, -10.0, 0.5)  # no eval reward at all


def _runs() -> pd.DataFrame:
    """Tiny runs of one method on a -manifold task, 4 seeds per point, r_pre = norm_low = 0, norm_high = 10.
    Round 0 by seed: 0, 0.2, -0.2, 0 -> pretrained sd = sqrt(0.08 / 3) = 0.163299, collapse below -0.326599."""
    rows = []
    points = {1.0: (2.0, [1.0, 2.0, 4.0, 10.0], [128, 128, 128, 50]),  # seed 3: 50 / 128 valid -> failed
              0.1: (5.0, [-1.0, 0.5, 0.6, 0.7], [128] * 4),  # seed 0 collapsed (-1 < -0.3266) -> failed
              10.0: (1.0, [0.5] * 4, [128] * 4)}  # below the chord start -> (2, 4.25): not a vertex
    for value, (kl, rewards, valid) in points.items():
        for seed, (r, nv) in enumerate(zip(rewards, valid)):
            rows.append({"task": "t-manifold", "method": "m", "knob": "beta", "value": value, "budget": 100,
                         "seed": seed, "grid_source": "rule", "path_kl": kl, "eval_reward": r,
                         "normalised_score": r / 10, "n_valid": nv, "n_eval": 128,
                         "round0_eval_reward": [0.0, 0.2, -0.2, 0.0][seed], "round0_path_kl": 0.0,
                         "norm_low": 0.0, "norm_high": 10.0, "norm_high_source": "optimum"})
    return pd.DataFrame(rows)


def test_failed_mask_and_pretrained_spread():
    runs = _runs()
    spread = fs.pretrained_spread(runs).iloc[0]
    assert spread["r_pre"] == 0.0 and spread["pre_sd"] == pytest.approx(math.sqrt(0.08 / 3))
    failed = fs.failed_mask(runs)
    assert runs.loc[failed, ["value", "seed"]].values.tolist() == [[1.0, 3], [0.1, 0]]


def test_point_table_robust_columns_and_failed_frac():
    pts = fr.point_table(_runs()).set_index("value")
    p = pts.loc[1.0]
    # rewards 1, 2, 4, 10: mean 4.25, median 3, IQM (drop 1 and 10) 3; sd^2 = 48.75 / 3 = 16.25,
    # half width t(3, 0.975) * sqrt(16.25 / 4) = 3.182446 * 2.015564 = 6.414421
    assert p["eval_reward_mean"] == pytest.approx(4.25)
    assert p["eval_reward_median"] == 3.0 and p["eval_reward_iqm"] == pytest.approx(3.0)
    assert (p["eval_reward_ci_low"], p["eval_reward_ci_high"]) == pytest.approx((4.25 - 6.414421, 4.25 + 6.414421), abs=1e-5)
    assert p["normalised_score_median"] == pytest.approx(0.3) and p["normalised_score_iqm"] == pytest.approx(0.3)
    assert p["failed_frac"] == 0.25 and p["n_failed"] == 1
    assert pts.loc[0.1, "failed_frac"] == 0.25 and pts.loc[10.0, "failed_frac"] == 0.0
    # no spread: the interval collapses onto the mean; n_eval is not a metric column
    assert pts.loc[10.0, "eval_reward_ci_low"] == pts.loc[10.0, "eval_reward_ci_high"] == 0.5
    assert "n_eval_mean" not in pts
    # vertices: start, (2, 4.25), then the falling tail (5, 0.2); (1, 0.5) is below the chord start-(2, 4.25)
    assert pts["on_frontier"].to_dict() == {1.0: True, 0.1: True, 10.0: False}


def test_leaderboard_reports_failures_and_markdown_says_envelope():
    board = fs.frontier_leaderboard(_runs())
    r = board.iloc[0]
    assert r["failed_runs"] == 2 and r["n_runs"] == 12
    assert r["failed_frac_frontier"] == 0.25  # both vertices have one failed seed of four
    # score at KL 1 = half the start + half the (2, 4.25) vertex = 2.125 reward -> 0.2125
    assert r["score_at_kl1"] == pytest.approx(0.2125)
    text = fs.frontier_markdown(board)
    assert "upper concave envelope" in text and "Student-t" in text and "bootstrap" not in text
    assert "| 2/12 (frontier ≤ 0.25) |" in text


# ---- per-seed frontier values for paired verdicts -------------------------------------------------
def _method_runs(method, points, r_pre=0.0, high=10.0):
    """points: {value: [(seed, kl, reward), ...]} -> one row per run with the normalisation columns."""
    rows = [{"task": "t", "method": method, "budget": 100, "knob": "beta", "value": v, "seed": s, "path_kl": k,
             "eval_reward": r, "norm_low": r_pre, "norm_high": high}
            for v, runs in points.items() for s, k, r in runs]
    return pd.DataFrame(rows)


def test_per_seed_frontier_is_the_mean_combination_applied_per_seed():
    # two grid points, seeds 0..2; mean points (1, 2) and (4, 5): envelope (0,0)-(1,2)-(4,5)
    runs = _method_runs("m", {1.0: [(0, 0.9, 1.0), (1, 1.0, 2.0), (2, 1.1, 3.0)],
                              0.1: [(0, 4.0, 4.0), (1, 4.0, 5.0), (2, 4.0, 6.0)]})
    per = fs.per_seed_frontier(runs, targets=(3.0, 9.0))
    # at KL 3: t = (3 - 1) / 3 = 2/3 of the way from point (1, .) to point (4, .), per seed
    want = [(1 / 3) * a + (2 / 3) * b for a, b in [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]]
    np.testing.assert_allclose(per["score_at_kl3"].to_numpy(), np.array(want) / 10.0)
    assert per["score_at_kl9"].isna().all()  # past the last vertex: not reached
    summary = fs.frontier_summary([[0.9, 1.0, 1.1], [4.0, 4.0, 4.0]], [[1, 2, 3], [4, 5, 6]], 0.0, 0.0, 10.0,
                                  targets=(3.0,), seed_runs=[[0, 1, 2], [0, 1, 2]])
    assert per["score_at_kl3"].mean() == pytest.approx(summary["score_at_kl3"])
    assert per["auf"].mean() == pytest.approx(summary["auf"])
    _, lo, hi = stats.t_interval(per["auf"].to_numpy())
    assert (lo, hi) == pytest.approx((summary["auf_ci_low"], summary["auf_ci_high"]))


def test_frontier_verdicts_pair_seeds_and_call_a_clear_gap(tmp_path, capsys):
    from benchmarks.report import frontier_readme as fr_md

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.3, 6)  # shared by seed: the pairing removes it
    good = _method_runs("good", {1.0: [(s, 2.0, 5.0 + noise[s]) for s in range(6)]})
    bad = _method_runs("bad", {1.0: [(s, 2.0, 2.0 + noise[s] + 0.05 * (-1) ** s) for s in range(6)]})
    same = _method_runs("same", {1.0: [(s, 2.0, 5.0 + noise[s] + 0.05 * (-1) ** s) for s in range(6)]})
    csv = tmp_path / "runs.csv"
    pd.concat([good, bad, same]).to_csv(csv, index=False)
    fr_md.main([str(csv), "--run-verdicts", "good", "--frontier", "score_at_kl1"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()
            if line.startswith("| bad") or line.startswith("| same")}
    assert rows == {"bad": "above", "same": "undecided"}
    with pytest.raises(SystemExit, match="--frontier must be"):
        fr_md.main([str(csv), "--run-verdicts", "good", "--frontier", "score_at_klx"])

"""Tests of the per-point interval rule, the paired tests, Holm's correction and the verdict tables of
benchmarks/report/stats.py, the stratified bootstrap against a reference written here, and the run-record verdicts
of benchmarks/report/frontier_readme.py. Simulations use fixed RNG seeds, so every number asserted is deterministic.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st

from benchmarks.report import frontier_readme as fr_md
from benchmarks.report import stats


# ---- mean_interval: the rule and its coverage ---------------------------------------------------
def test_mean_interval_rule_t_below_ten_seeds_bootstrap_t_from_ten():
    x5 = [3.1, -0.4, 2.2, 5.0, 1.7]
    assert stats.mean_interval(x5) == stats.t_interval(x5)
    x12 = np.linspace(0.0, 1.0, 12) ** 2
    assert stats.mean_interval(x12) == stats.bootstrap_t_interval(x12)
    assert stats.mean_interval(x12, method="t") == stats.t_interval(x12)
    assert stats.mean_interval(x5, method="bootstrap-t") == stats.bootstrap_t_interval(x5)
    m, lo, hi = stats.mean_interval([2.0])
    assert m == 2.0 and math.isnan(lo) and math.isnan(hi)
    assert stats.mean_interval([1.0, 1.0, 1.0] * 4) == (1.0, 1.0, 1.0)  # no spread: a point
    with pytest.raises(ValueError, match="method"):
        stats.mean_interval(x5, method="bca")


def test_t_interval_by_hand():
    # d = [1, 1.5, 1.5, 1, 0.2]: mean 1.04, sd sqrt(1.132 / 4), t_{4, 0.975} = 2.7764451
    m, lo, hi = stats.t_interval([1, 1.5, 1.5, 1, 0.2])
    half = 2.7764451 * math.sqrt(1.132 / 4) / math.sqrt(5)
    assert m == pytest.approx(1.04) and (lo, hi) == pytest.approx((1.04 - half, 1.04 + half), rel=1e-7)


def test_bootstrap_t_matches_a_loop_over_the_same_resamples():
    """Same resampling indices, pivots and order statistics computed one resample at a time."""
    x = np.array([0.3, 0.9, -1.2, 4.4, 2.8, 2.0, 7.5, -3.3, 1.1, 0.0, 0.5])
    n, reps = len(x), 999
    idx = np.random.default_rng(5).integers(0, n, (reps, n))
    mean, se = sum(x) / n, math.sqrt(sum((v - sum(x) / n) ** 2 for v in x) / (n - 1) / n)
    piv = []
    for row in idx:
        r = [x[i] for i in row]
        mr = sum(r) / n
        ser = math.sqrt(sum((v - mr) ** 2 for v in r) / (n - 1) / n)
        piv.append((mr - mean) / ser)
    piv.sort()  # 95 %: the 25th and the 975th of 999 pivots
    m, lo, hi = stats.bootstrap_t_interval(x, 0.95, reps=reps, seed=5)
    assert m == pytest.approx(mean, rel=1e-12)
    assert lo == pytest.approx(mean - piv[974] * se, rel=1e-9)
    assert hi == pytest.approx(mean - piv[24] * se, rel=1e-9)
    # many normal seeds: the bootstrap-t interval is close to the t-interval
    big = np.random.default_rng(1).normal(0, 1, 400)
    _, tl, th = stats.t_interval(big)
    _, bl, bh = stats.bootstrap_t_interval(big)
    assert (bh - bl) == pytest.approx(th - tl, rel=0.08)


def _coverage(sample, true_mean, n, sims=4000, seed=2024):
    """Share of ``sims`` samples of ``n`` seeds whose mean_interval covers ``true_mean``."""
    x = sample(np.random.default_rng(seed), (sims, n))
    hits = 0
    for row in x:
        _, lo, hi = stats.mean_interval(row)
        hits += lo <= true_mean <= hi
    return hits / sims


NORMAL = (lambda rng, shape: rng.normal(1.0, 2.0, shape), 1.0)


def lognormal(sigma):
    """(sampler, true mean) of log-normal(0, sigma) seeds: mean exp(sigma^2 / 2)."""
    return (lambda rng, shape: rng.lognormal(0.0, sigma, shape)), math.exp(sigma ** 2 / 2)


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("dist", ["normal", "lognormal sigma=0.25"])
def test_mean_interval_covers_95_percent(dist, n):
    """Normal seeds and log-normal seeds of sigma = 0.25 (skewness 0.78): 93-97 % coverage at 3, 5, 10 seeds
    (4000 simulated samples each; the standard error of a 95 % coverage is 0.34 %)."""
    sample, mu = NORMAL if dist == "normal" else lognormal(0.25)
    assert 0.93 <= _coverage(sample, mu, n) <= 0.97


def test_bootstrap_t_covers_skewed_seeds_from_ten():
    """From 10 seeds the rule (bootstrap-t) holds 93-97 % for log-normal sigma = 0.5, where t gives ~0.92."""
    sample, mu = lognormal(0.5)
    assert 0.93 <= _coverage(sample, mu, 10, sims=10000) <= 0.97  # ~0.940: 10 000 samples keep 4 SE of margin
    x = sample(np.random.default_rng(2024), (10000, 10))
    m, sd = x.mean(1), x.std(1, ddof=1)
    half = st.t.ppf(0.975, 9) * sd / math.sqrt(10)
    assert np.mean(np.abs(m - mu) <= half) < 0.93  # the t-interval on the same samples undercovers


@pytest.mark.parametrize("sigma, n, below", [(0.5, 3, 0.935), (0.5, 5, 0.93), (1.0, 3, 0.88)])
def test_mean_interval_undercovers_strong_skew_with_few_seeds(sigma, n, below):
    """The stated limit: with 3-5 seeds, sigma = 0.5 gives ~0.92 and sigma = 1 ~0.84 (not 0.95)."""
    sample, mu = lognormal(sigma)
    assert 0.75 < _coverage(sample, mu, n) < below


# ---- paired tests -------------------------------------------------------------------------------
A5 = [1.0, 2.0, 3.0, 4.0, 5.0]
B5 = [0.0, 0.5, 1.5, 3.0, 4.8]  # differences [1, 1.5, 1.5, 1, 0.2]


def test_paired_t_by_hand_and_scipy():
    r = stats.paired_difference(A5, B5)
    t = 1.04 / (math.sqrt(1.132 / 4) / math.sqrt(5))
    # Student-t CDF with 4 degrees of freedom in closed form: 1/2 + 3/4 * u * (1 - u^2 / 3), u = t / sqrt(4 + t^2)
    u = t / math.sqrt(4 + t * t)
    cdf = 0.5 + 0.75 * u * (1 - u * u / 3)
    assert r.p_value == pytest.approx(2 * (1 - cdf), rel=1e-9)
    assert r.p_value == pytest.approx(st.ttest_rel(A5, B5).pvalue, rel=1e-12)
    assert r.effect == pytest.approx(1.04) and r.n == 5 and r.test == "t"
    assert (r.low, r.high) == pytest.approx(stats.t_interval(np.subtract(A5, B5))[1:], rel=1e-12)
    assert stats.paired_difference(B5, A5).p_value == pytest.approx(r.p_value)  # two-sided
    # zero spread: equal non-zero differences reject, all-zero differences do not
    assert stats.paired_difference([1, 2, 3], [0, 1, 2]).p_value == 0.0
    assert stats.paired_difference([1, 2, 3], [1, 2, 3]).p_value == 1.0


def _signflip_brute_force(d):
    d = list(d)
    obs = abs(sum(d))
    hits = sum(abs(sum(s * v for s, v in zip(signs, d))) >= obs - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize("d", [[1.0, 1.5, 1.5, 1.0, 0.2], [0.3, -0.1, 0.7, 0.2, 0.4, -0.5, 0.9, 1.1],
                               [1.0, 2.0, 3.0], [0.0, 0.5, -0.5, 2.0], [-2.0, -1.0, -0.5, 0.25, -3.0, -1.5]])
def test_signflip_is_the_exact_enumeration(d):
    p = stats.paired_difference(np.array(d), np.zeros(len(d)), test="signflip").p_value
    assert p == pytest.approx(_signflip_brute_force(d), abs=1e-15)
    ref = st.permutation_test((np.array(d),), np.sum, permutation_type="samples", n_resamples=10 ** 6,
                              alternative="two-sided").pvalue
    assert p == pytest.approx(ref, abs=1e-12)


def test_signflip_cannot_reject_with_five_seeds_but_t_can():
    r_sf = stats.paired_difference(A5, B5, test="signflip")
    assert r_sf.p_value == 2 / 2 ** 5 == 0.0625  # all five differences positive: the smallest attainable p
    assert stats.paired_difference(A5, B5).p_value < 0.05
    assert stats.verdict(A5, B5, test="signflip").verdict == "undecided"
    assert stats.verdict(A5, B5).verdict == "above"
    six = stats.paired_difference(A5 + [6.0], B5 + [5.5], test="signflip")
    assert six.p_value == 2 / 2 ** 6 < 0.05
    with pytest.raises(ValueError, match="2\\^n"):
        stats.signflip_pvalue(np.ones(21))


def test_pairing_on_common_seeds():
    a = {0: 1.0, 1: 2.0, 2: 4.0, 5: 9.0}
    b = pd.Series({2: 1.0, 1: 1.5, 0: 0.0, 3: 7.0})
    seeds, va, vb = stats.pair_on_seeds(a, b)
    assert seeds == [0, 1, 2] and va.tolist() == [1.0, 2.0, 4.0] and vb.tolist() == [0.0, 1.5, 1.0]
    r = stats.paired_difference(a, b)
    assert r.n == 3 and r.effect == pytest.approx((1.0 + 0.5 + 3.0) / 3)
    assert r.p_value == pytest.approx(st.ttest_rel([1.0, 2.0, 4.0], [0.0, 1.5, 1.0]).pvalue)
    assert stats.pair_on_seeds({0: 1.0, 1: np.nan}, {0: 2.0, 1: 3.0})[0] == [0]  # non-finite dropped
    with pytest.raises(ValueError, match="length"):
        stats.paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(TypeError):
        stats.paired_difference({0: 1.0}, [1.0])


# ---- Holm ---------------------------------------------------------------------------------------
def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    assert stats.holm([0.5, 0.6, 0.02]) == pytest.approx([1.0, 1.0, 0.06])  # capped at 1, monotone
    out = stats.holm([0.04, np.nan, 0.01])  # NaN: not in the family (m = 2)
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert np.isnan(stats.holm([np.nan])).all()
    p = np.random.default_rng(3).uniform(0, 0.2, 12)
    adj = stats.holm(p)
    assert np.all(np.diff(adj[np.argsort(p)]) >= 0) and np.all(adj >= p) and np.all(adj <= 1)
    with pytest.raises(ValueError, match="0, 1"):
        stats.holm([1.2])


# ---- false positives and power by simulation ----------------------------------------------------
def _shared_seed_runs(rng, sims, n, k, shift=0.0):
    """(sims, k, n) per-seed values of k methods with a common per-seed effect (the shared evaluation
    noise); method 0 is the reference, moved by ``shift`` noise standard deviations."""
    seed_effect = rng.normal(0, 3.0, (sims, 1, n))
    x = seed_effect + rng.normal(0, 1.0, (sims, k, n))
    x[:, 0] += shift
    return x


def test_paired_t_false_positive_rate_is_five_percent():
    rng = np.random.default_rng(11)
    sims = 20000
    x = _shared_seed_runs(rng, sims, 5, 2)
    p = np.array([stats.paired_difference(a, b).p_value for a, b in x])
    se = math.sqrt(0.05 * 0.95 / sims)
    assert abs(np.mean(p < 0.05) - 0.05) < 3 * se  # exact size: neither anti- nor over-conservative
    # the unpaired comparison of two independent intervals (the old 'overlap' rule) ignores the shared noise
    d = x[:, 0] - x[:, 1]
    assert np.corrcoef(x[:, 0, 0], x[:, 1, 0])[0, 1] > 0.8 and np.std(d[:, 0]) < np.std(x[:, 0, 0]) / 2


def test_signflip_false_positive_rate_is_at_most_five_percent():
    rng = np.random.default_rng(12)
    x = _shared_seed_runs(rng, 3000, 8, 2)
    p = np.array([stats.paired_difference(a, b, test="signflip").p_value for a, b in x])
    assert np.mean(p < 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 3000)


def test_verdict_table_family_wise_error_rate_with_holm():
    """Four methods equal to the reference: P(any 'above'/'below') <= 5 % with Holm, ~17 % without."""
    rng = np.random.default_rng(13)
    sims = 4000
    x = _shared_seed_runs(rng, sims, 5, 5)
    any_holm = any_raw = 0
    for row in x:
        table = stats.verdict_table(dict(enumerate(row[0])), {f"m{j}": dict(enumerate(row[j])) for j in range(1, 5)})
        any_holm += any(v.verdict != "undecided" for v in table)
        any_raw += any(v.p_value < 0.05 for v in table)
    assert any_holm / sims <= 0.05  # measured 0.049 (Holm's bound for 4 independent tests: 0.049)
    assert any_raw / sims > 0.12  # what an uncorrected table would claim


def test_power_matches_the_noncentral_t_and_large_differences_are_found():
    rng = np.random.default_rng(14)
    sims, n, shift = 4000, 5, 1.0
    x = _shared_seed_runs(rng, sims, n, 2, shift)
    p = np.array([stats.paired_difference(a, b).p_value for a, b in x])
    # differences ~ N(1, 2): noncentrality 1 / sqrt(2) * sqrt(5)
    nc, crit = shift / math.sqrt(2) * math.sqrt(n), st.t.ppf(0.975, n - 1)
    power = st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)
    assert np.mean(p < 0.05) == pytest.approx(power, abs=3 * math.sqrt(power * (1 - power) / sims))
    big = _shared_seed_runs(rng, 500, n, 3, 6.0)
    for row in big:  # the reference 6 noise sds up: above both others (after Holm)
        table = stats.verdict_table(row[0], {"a": row[1], "b": row[2]})
        assert [v.verdict for v in table] == ["above", "above"]
    low = stats.verdict_table(big[0, 1], {"ref": big[0, 0]})
    assert low[0].verdict == "below" and low[0].effect < 0


# ---- verdict tables by hand ---------------------------------------------------------------------
SQDF = {0: 0.5, 1: 0.6, 2: 0.7}
OTHERS = {
    "a": {0: 0.1, 1: 0.3, 2: 0.2},           # d = [0.4, 0.3, 0.5]: t = 4 sqrt(3), p = 1 - t / sqrt(2 + t^2)
    "b": {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.9},   # d = [0, -0.1, 0.1]: p = 1; seed 3 has no partner
    "c": {0: 1.5, 1: 1.7, 2: 1.6},           # d = [-1, -1.1, -0.9]: t = -10 sqrt(3)
    "d": {2: 0.1, 7: 0.3},                   # one common seed: untested
}
P_A = 1 - 4 * math.sqrt(3) / math.sqrt(2 + 48)      # 0.020204 (Student-t, 2 df, closed form)
P_C = 1 - 10 * math.sqrt(3) / math.sqrt(2 + 300)    # 0.003314


def test_verdict_table_by_hand():
    rows = {v.other: v for v in stats.verdict_table(SQDF, OTHERS)}
    assert rows["a"].p_value == pytest.approx(P_A, rel=1e-9)
    assert rows["c"].p_value == pytest.approx(P_C, rel=1e-9)
    assert rows["b"].p_value == pytest.approx(1.0)
    # Holm over the three tested rows: c * 3, a * 2, b * 1
    assert rows["c"].p_holm == pytest.approx(3 * P_C) and rows["a"].p_holm == pytest.approx(2 * P_A)
    assert rows["b"].p_holm == pytest.approx(1.0)
    assert {k: v.verdict for k, v in rows.items()} == {"a": "above", "b": "undecided", "c": "below",
                                                        "d": "undecided"}
    assert rows["a"].effect == pytest.approx(0.4) and rows["c"].effect == pytest.approx(-1.0)
    assert rows["b"].seeds == (0, 1, 2) and rows["b"].n_seeds == 3
    assert rows["d"].n_seeds == 1 and math.isnan(rows["d"].p_value) and math.isnan(rows["d"].p_holm)
    half = st.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (rows["a"].low, rows["a"].high) == pytest.approx((0.4 - half, 0.4 + half))
    # a family of one is not corrected; a family with a fourth weak-ish comparison makes 'a' undecided
    assert stats.verdict(SQDF, OTHERS["a"], "a").p_holm == pytest.approx(P_A)
    more = dict(OTHERS, e={0: 0.45, 1: 0.5, 2: 0.69})  # d = [0.05, 0.1, 0.01]
    rows4 = {v.other: v for v in stats.verdict_table(SQDF, more)}
    assert rows4["a"].p_holm == pytest.approx(3 * P_A) and rows4["a"].verdict == "undecided"


# ---- stratified bootstrap: rliable's definitions, written here ----------------------------------
def _iqm(values):
    """rliable's IQM: mean of the middle runs after dropping floor(N / 4) from each end of the sorted pool."""
    v = sorted(values)
    k = int(0.25 * len(v))
    return sum(v[k:len(v) - k]) / (len(v) - 2 * k)


def _percentile(values, q):
    """Linear-interpolated percentile q (0-100) of a sample."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(math.floor(pos))
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)


def test_stratified_bootstrap_iqm_matches_a_reference_over_the_same_resamples():
    tasks = [np.array([0.1, 0.5, 0.2, 0.9, 0.4]), np.array([1.2, 0.8, 1.0, 0.7, 1.5, 0.9, 1.1]),
             np.array([-0.3, 0.0, 0.2])]
    reps, seed = 300, 4
    idx = stats.stratified_bootstrap_indices([len(t) for t in tasks], reps, np.random.default_rng(seed))
    boot = [_iqm([v for t, i in zip(tasks, idx) for v in t[i[b]]]) for b in range(reps)]
    point, lo, hi = stats.stratified_bootstrap_ci(tasks, stats.aggregate_iqm, reps=reps, seed=seed)
    assert point == pytest.approx(_iqm(np.concatenate(tasks)), rel=1e-12)
    assert lo == pytest.approx(_percentile(boot, 2.5), rel=1e-12)
    assert hi == pytest.approx(_percentile(boot, 97.5), rel=1e-12)
    # resampling stays within a task: every index of task j is below n_j, and all are drawn
    assert all(i.max() == len(t) - 1 and i.min() == 0 for t, i in zip(tasks, idx))
    # rliable's optimality gap and median, from their definitions
    m = np.column_stack([tasks[0], tasks[0][::-1] * 2])
    assert stats.aggregate_optimality_gap(m, 1.0) == pytest.approx(1.0 - np.mean(np.minimum(m, 1.0)))
    assert stats.aggregate_median(tasks) == pytest.approx(sorted(t.mean() for t in tasks)[1])


def test_stratified_bootstrap_spread_is_the_within_task_closed_form():
    """Bootstrap variance of the mean over T tasks = sum_j s_j^2 / (n_j T^2), s_j^2 the ddof=0 variance."""
    rng = np.random.default_rng(8)
    tasks = [rng.normal(0, 1, 6), rng.normal(5, 3, 10), rng.normal(-2, 0.5, 4)]
    idx = stats.stratified_bootstrap_indices([len(t) for t in tasks], 20000, np.random.default_rng(9))
    boot = np.mean([t[i].mean(1) for t, i in zip(tasks, idx)], axis=0)
    expect = math.sqrt(sum(t.var() / len(t) for t in tasks) / len(tasks) ** 2)
    assert boot.std() == pytest.approx(expect, rel=0.03)


# ---- run-record verdicts in frontier_readme -----------------------------------------------------
def _runs() -> pd.DataFrame:
    rows = []

    def add(method, seed, score, kl, knob="beta", value=1.0):
        rows.append({"task": "t", "method": method, "knob": knob, "value": value, "seed": seed,
                     "eval_reward": 10 * score, "path_kl": kl, "normalised_score": score})

    for name, vals in [("sqdf", SQDF)] + list(OTHERS.items()):
        for seed, v in vals.items():
            add(name, seed, v, 2.0)
    for seed in SQDF:  # a second sqdf grid point beyond 10 nats: left out by --kl 10
        add("sqdf", seed, 9.0, 50.0, value=0.01)
    add("pretrained", 0, 0.0, 0.0, knob="", value=np.nan)
    for seed in (0, 1, 2):
        add("bo", seed, 3.0, np.nan, knob="", value=np.nan)  # no path KL: no value within a KL budget
    return pd.DataFrame(rows)


def test_run_verdicts_table_by_hand(tmp_path, capsys):
    text = fr_md.run_verdicts(_runs(), "sqdf", kl=10.0)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    # ordered by effect, largest first; pretrained left out, bo listed as having no value
    assert [c[:2] for c in cells] == [["a", "above"], ["b", "undecided"], ["c", "below"], ["d", "undecided"]]
    half = st.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert cells[0][2] == f"+0.4 [{0.4 - half:+.3g}, {0.4 + half:+.3g}]"
    assert cells[0][3:] == [f"{P_A:.3f}", f"{2 * P_A:.3f}", "3"]
    assert cells[2][3:] == [f"{P_C:.3f}", f"{3 * P_C:.3f}", "3"]
    assert cells[3][3:] == ["–", "–", "1"]
    sentences = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert sentences[0].startswith("- sqdf is above a: its best normalised_score within 10 nats is higher by 0.4")
    assert sentences[2].startswith("- sqdf is below c:") and "lower by 1 " in sentences[2]
    assert "undecided" in sentences[1] and "2 common seed" not in sentences[1]
    assert "1 common seed(s)" in sentences[3] and sentences[-1] == "- No per-seed value (no path KL, so no frontier; left out): bo."
    # without a KL budget sqdf has two runs per seed: that needs --kl or one grid point
    with pytest.raises(SystemExit, match="several runs"):
        fr_md.run_verdicts(_runs(), "sqdf")
    one_point = _runs()[lambda r: r["path_kl"].fillna(0) < 10]
    plain = fr_md.run_verdicts(one_point, "sqdf")
    assert "| a | above |" in plain and "| bo | below |" in plain  # bo's 3.0 per seed beats sqdf
    # any per-seed metric: a callable from one method's runs to values indexed by seed
    def eval_reward_at_kl2(g):
        return g[g["path_kl"] == 2.0].set_index("seed")["eval_reward"]
    custom = fr_md.run_verdicts(_runs(), "sqdf", per_seed=eval_reward_at_kl2)
    assert "| a | above | +4 [" in custom and "on eval_reward_at_kl2" in custom
    # the command line, on a CSV
    csv = tmp_path / "runs.csv"
    _runs().to_csv(csv, index=False)
    fr_md.main([str(csv), "--run-verdicts", "sqdf", "--kl", "10"])
    assert capsys.readouterr().out.strip() == text.strip()
    fr_md.main([str(csv), "--run-verdicts", "sqdf", "--kl", "10", "--test", "signflip"])
    out = capsys.readouterr().out
    assert "| a | undecided |" in out and "exact sign-flip" in out  # 3 seeds: p >= 2/8
    with pytest.raises(SystemExit, match="no task"):
        fr_md.run_verdicts(_runs(), "missing", kl=10.0)
    _runs().drop(columns="path_kl").to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="lacks path_kl"):
        fr_md.main([str(csv), "--run-verdicts", "sqdf", "--kl", "10"])


def test_left_out_reason_is_read_from_that_tasks_runs():
    """A method with a path KL on one task and none on another is "no path KL" in the second task's table,
    whatever it has elsewhere (the reason is read from the table's own task)."""
    e = pd.DataFrame([{"task": t, "method": "e", "knob": "beta", "value": 1.0, "seed": s, "eval_reward": 1.0,
                       "path_kl": kl, "normalised_score": 0.1}
                      for t, kl in (("t", np.nan), ("u", 50.0)) for s in (0, 1, 2)])
    text = fr_md.run_verdicts(pd.concat([_runs(), _runs().assign(task="u"), e]), "sqdf", kl=10.0)
    t_part, u_part = text.split("**u**")
    assert "(no path KL, so no frontier; left out): bo, e." in t_part and "does not reach" not in t_part
    assert "(no path KL, so no frontier; left out): bo." in u_part
    assert "(the frontier does not reach this KL; left out): e." in u_part


def test_verdict_summary_is_the_per_task_tables_as_one_matrix(tmp_path, capsys):
    runs = pd.concat([_runs(), _runs().assign(task="u")])
    text = fr_md.verdict_summary(runs, "sqdf", kl=10.0)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    cells = {c[0]: c[1:] for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in rows)}
    assert "| method | t | u |" in text
    # the same verdicts, effects and Holm p as the per-task tables; methods with an "above" first
    assert list(cells) == ["a", "b", "d", "c"]
    assert cells["a"] == [f"**above** +0.4 ({2 * P_A:.3f})"] * 2
    assert cells["c"] == [f"**below** -1 ({3 * P_C:.3f})"] * 2
    assert cells["d"] == ["undecided (1 seed)"] * 2
    assert "2 above, 2 below, 4 undecided." in text and "no path KL): bo." in text
    # a method with a path KL but no run within the KL budget is "does not reach", not "no path KL"
    far = pd.DataFrame([{"task": t, "method": "e", "knob": "beta", "value": 1.0, "seed": s, "eval_reward": 1.0,
                         "path_kl": 50.0, "normalised_score": 0.1} for t in ("t", "u") for s in (0, 1, 2)])
    text_far = fr_md.verdict_summary(pd.concat([runs, far]), "sqdf", kl=10.0)
    assert "Frontier does not reach this KL on any task: e." in text_far and "no path KL): bo." in text_far
    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    fr_md.main([str(csv), "--run-verdicts", "sqdf", "--kl", "10", "--summary"])
    assert capsys.readouterr().out.strip() == text.strip()


def test_earlier_findings_beside_todays_paired_verdicts(tmp_path, capsys):
    runs = _runs().assign(norm_low=0.0, norm_high=10.0)  # score = eval_reward / 10 = normalised_score
    findings = pd.DataFrame([
        {"finding": "sqdf above a", "reference": "sqdf", "other": "a", "tasks": "t;gone", "metric": "score_at_kl2",
         "earlier": "above (ranges apart)"},
        {"finding": "sqdf above c", "reference": "sqdf", "other": "c", "tasks": "t", "metric": "score_at_kl2",
         "earlier": "above (ranges apart)"},
    ])
    text = fr_md.earlier_findings(runs, findings)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith("| ") and not ln.startswith("| earlier")]
    # at 2 nats each seed's achievable score is its run's score (sqdf's 2-nat point is an envelope vertex), so
    # the verdicts, effects and Holm p are those of the by-hand table (family a, b, c; d has one seed)
    assert rows[0] == ["sqdf above a", "t", "score_at_kl2", "above (ranges apart)",
                       f"**above** +0.4 ({2 * P_A:.3f}), 3 seeds", "same"]
    assert rows[1][1] == "gone" and rows[1][4:] == ["no runs", "–"]
    assert rows[2][4:] == [f"**below** -1 ({3 * P_C:.3f}), 3 seeds", "**changed**"]
    assert "1 of 3 earlier verdicts changed." in text
    assert fr_md.earlier_findings(runs, findings, brief=True) == (
        "1 of 3 earlier verdicts changed; these held: sqdf above a (t).\n")
    runs_csv, f_csv = tmp_path / "runs.csv", tmp_path / "earlier.csv"
    runs.to_csv(runs_csv, index=False)
    findings.to_csv(f_csv, index=False)
    fr_md.main([str(runs_csv), "--earlier", str(f_csv)])
    assert capsys.readouterr().out.strip() == text.strip()
    findings.drop(columns="earlier").to_csv(f_csv, index=False)
    with pytest.raises(SystemExit, match="lacks earlier"):
        fr_md.main([str(runs_csv), "--earlier", str(f_csv)])

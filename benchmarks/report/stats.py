"""rliable-style statistics over runs (Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice").

Names and definitions follow ``rliable.metrics`` / ``rliable.library``:

- ``aggregate_iqm``: interquartile mean = 25% trimmed mean over *all* runs of all tasks pooled
  (``scipy.stats.trim_mean(scores, 0.25, axis=None)``).
- ``aggregate_mean``: mean over runs per task, then mean over tasks.
- ``aggregate_median``: median over tasks of the per-task mean.
- ``aggregate_optimality_gap``: mean over all runs of ``max(gamma - score, 0)``.
- ``get_interval_estimates``: point estimate and a percentile CI from a *stratified bootstrap*: runs are
  resampled with replacement independently within each task (the task set is kept fixed).

Scores are given as a list of 1-D arrays, one per task (a task may have its own number of runs), or as
a 2-D array ``(num_runs, num_tasks)`` as in rliable. For one task the stratified bootstrap is the
ordinary bootstrap over runs and draws exactly the indices ``scipy.stats.bootstrap`` draws with the same
``numpy.random.Generator`` seed, so both give the same percentile interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import numpy as np
from scipy import stats as _st

Scores = Union[np.ndarray, Sequence[Sequence[float]]]

DEFAULT_REPS = 2000
DEFAULT_SEED = 0


def as_task_list(scores: Scores) -> list[np.ndarray]:
    """Normalise scores to a list of 1-D float arrays, one per task; rejects empty or non-finite input."""
    if isinstance(scores, np.ndarray) and scores.ndim == 2:
        tasks = [scores[:, j].astype(float) for j in range(scores.shape[1])]
    elif isinstance(scores, np.ndarray) and scores.ndim == 1:
        tasks = [scores.astype(float)]
    else:
        tasks = [np.asarray(t, dtype=float).reshape(-1) for t in scores]
    if not tasks:
        raise ValueError("scores hold no task")
    for j, t in enumerate(tasks):
        if t.size == 0:
            raise ValueError(f"task {j} has no run")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"task {j} has non-finite scores: {t.tolist()}")
    return tasks


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean of one sample: the 25% trimmed mean (scipy's trim_mean)."""
    return float(_st.trim_mean(np.asarray(x, float), 0.25))


def aggregate_iqm(scores: Scores) -> float:
    """IQM of all runs of all tasks pooled (rliable ``metrics.aggregate_iqm``)."""
    return float(_st.trim_mean(np.concatenate(as_task_list(scores)), 0.25, axis=None))


def aggregate_mean(scores: Scores) -> float:
    """Mean over tasks of the per-task mean (rliable ``metrics.aggregate_mean``)."""
    return float(np.mean([t.mean() for t in as_task_list(scores)]))


def aggregate_median(scores: Scores) -> float:
    """Median over tasks of the per-task mean (rliable ``metrics.aggregate_median``)."""
    return float(np.median([t.mean() for t in as_task_list(scores)]))


def aggregate_optimality_gap(scores: Scores, gamma: float = 1.0) -> float:
    """Mean over all runs of ``max(gamma - score, 0)`` (rliable ``metrics.aggregate_optimality_gap``)."""
    return float(np.mean(np.maximum(gamma - np.concatenate(as_task_list(scores)), 0.0)))


AGGREGATES: dict[str, Callable[[Scores], float]] = {
    "aggregate_iqm": aggregate_iqm,
    "aggregate_mean": aggregate_mean,
    "aggregate_median": aggregate_median,
    "aggregate_optimality_gap": aggregate_optimality_gap,
}


def stratified_bootstrap_indices(sizes: Sequence[int], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per task j an integer array (reps, n_j) of run indices drawn with replacement within the task."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    return [rng.integers(0, n, (reps, n)) for n in sizes]


def stratified_bootstrap_ci(scores: Scores, func: Callable[[Scores], float], reps: int = DEFAULT_REPS,
                            confidence_interval_size: float = 0.95, seed: int = DEFAULT_SEED,
                            ) -> tuple[float, float, float]:
    """(point estimate, CI low, CI high): percentile interval of ``func`` under the stratified bootstrap.

    A task with one run contributes that run every time (no within-task spread to resample).
    """
    if not 0 < confidence_interval_size < 1:
        raise ValueError(f"confidence_interval_size must be in (0, 1), got {confidence_interval_size}")
    tasks = as_task_list(scores)
    point = float(func(tasks))
    rng = np.random.default_rng(seed)
    idx = stratified_bootstrap_indices([len(t) for t in tasks], reps, rng)
    if len(tasks) == 1 and func in (aggregate_iqm, aggregate_mean):  # vectorised fast path
        res = tasks[0][idx[0]]
        boot = _st.trim_mean(res, 0.25, axis=-1) if func is aggregate_iqm else res.mean(-1)
    else:
        boot = np.array([func([t[i[b]] for t, i in zip(tasks, idx)]) for b in range(reps)])
    alpha = (1 - confidence_interval_size) / 2
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return point, float(lo), float(hi)


def get_interval_estimates(score_dict: dict[str, Scores], func: Callable[[Scores], float],
                           reps: int = DEFAULT_REPS, confidence_interval_size: float = 0.95,
                           seed: int = DEFAULT_SEED) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """rliable ``library.get_interval_estimates``: per key a point estimate and a (2,) CI array."""
    points, cis = {}, {}
    for key, scores in score_dict.items():
        p, lo, hi = stratified_bootstrap_ci(scores, func, reps, confidence_interval_size, seed)
        points[key], cis[key] = p, np.array([lo, hi])
    return points, cis


def normalise(score: np.ndarray, low: float, high: float) -> np.ndarray:
    """(score - low) / (high - low): 0 = ``low`` (pretrained model), 1 = ``high`` (optimum / best known)."""
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError(f"normalisation bounds must be finite, got low={low}, high={high}")
    if high == low:
        raise ValueError(f"normalisation bounds are equal ({low}); the score cannot be normalised")
    return (np.asarray(score, float) - low) / (high - low)


# ---- per-point intervals with their stated coverage ---------------------------------------------
def t_interval(x: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval for the mean of i.i.d. values (one value per seed).

    mean +- t_{n-1, 1-alpha/2} * sd / sqrt(n). Exact coverage for normal seeds at any n >= 2; with one value
    the interval is (mean, nan, nan) -- one seed says nothing about the spread.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(x, float).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(_st.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


#: seed counts from which :func:`mean_interval` switches from Student-t to the bootstrap-t interval
BOOTSTRAP_T_MIN_N = 10
#: bootstrap-t resamples: with 999 the 2.5 % and 97.5 % quantiles are the 25th and 975th order statistics
BOOTSTRAP_T_REPS = 999


def _finite(x: Sequence[float]) -> np.ndarray:
    v = np.asarray(x, float).reshape(-1)
    return v[np.isfinite(v)]


def bootstrap_t_interval(x: Sequence[float], confidence: float = 0.95, reps: int = BOOTSTRAP_T_REPS,
                         seed: int = DEFAULT_SEED) -> tuple[float, float, float]:
    """(mean, low, high): studentised (bootstrap-t) interval for the mean (Efron & Tibshirani 1993, ch. 12).

    Per resample b the pivot t*_b = (mean*_b - mean) / se*_b; the interval is
    [mean - t*_(hi) * se, mean - t*_(lo) * se] with t*_(lo), t*_(hi) the order statistics of rank
    floor((reps + 1) * alpha / 2) and reps + 1 minus that. A resample with se* = 0 has pivot 0 when its
    mean equals the sample's and +-inf otherwise (so heavily tied values can give an infinite bound).
    Deterministic for a given ``seed``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = _finite(x)
    if v.size < 2:
        return (float(v.mean()) if v.size else float("nan")), float("nan"), float("nan")
    m, se = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    if se == 0:
        return m, m, m
    idx = np.random.default_rng(seed).integers(0, v.size, (reps, v.size))
    res = v[idx]
    mb, seb = res.mean(1), res.std(1, ddof=1) / math.sqrt(v.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        piv = (mb - m) / seb  # se* = 0: +-inf, or nan (0 / 0) when the resample's mean is the sample's
    piv = np.sort(np.where(np.isnan(piv), 0.0, piv))
    k = max(1, int(math.floor((reps + 1) * (1 - confidence) / 2)))
    return m, m - float(piv[reps - k]) * se, m - float(piv[k - 1]) * se


def mean_interval(x: Sequence[float], confidence: float = 0.95, method: str = "auto",
                  reps: int = BOOTSTRAP_T_REPS, seed: int = DEFAULT_SEED) -> tuple[float, float, float]:
    """(mean, low, high): the suite's interval for the mean of one value per seed (non-finite values dropped).

    Rule (``method="auto"``): Student-t for n < 10 seeds, bootstrap-t (:func:`bootstrap_t_interval`) for
    n >= 10; ``method="t"`` or ``"bootstrap-t"`` forces one. Chosen by simulated coverage of nominal 95 %
    intervals (200 000 samples for t; 4 000 to 20 000 for bootstrap-t, +-0.4 %), seeds normal or
    log-normal(0, sigma):

    ==============  =========  =========  =========  ===========
    seeds           t, n=3     t, n=5     t, n=10    boot-t n=10
    ==============  =========  =========  =========  ===========
    normal          0.950      0.951      0.950      0.949
    sigma = 0.25    0.943      0.940      0.943      0.943
    sigma = 0.5     0.924      0.916      0.922      0.940
    sigma = 1       0.840      0.823      0.841      0.907
    ==============  =========  =========  =========  ===========

    So the rule holds 93-97 % for normal seeds and log-normal skew up to sigma = 0.25 (skewness 0.78) at any
    n, and up to sigma = 0.5 (skewness 1.75) from 10 seeds. Below 10 seeds no method does better: with 3-5
    seeds the sample cannot show the skew, and bootstrap intervals undercover (BCa: 0.85 for normal seeds
    at n=5, 0.89 at n=10, so it was not chosen). One value gives (value, nan, nan).
    """
    if method not in ("auto", "t", "bootstrap-t"):
        raise ValueError(f"method must be 'auto', 't' or 'bootstrap-t', got {method!r}")
    n = _finite(x).size
    if method == "bootstrap-t" or (method == "auto" and n >= BOOTSTRAP_T_MIN_N):
        return bootstrap_t_interval(x, confidence, reps, seed)
    return t_interval(x, confidence)


# ---- paired tests over common seeds -------------------------------------------------------------
PerSeed = Union[Mapping, Sequence[float], np.ndarray]

#: largest n for the exact sign-flip test (2^20 = 1 048 576 sign patterns)
SIGNFLIP_MAX_N = 20


def pair_on_seeds(a: PerSeed, b: PerSeed) -> tuple[list, np.ndarray, np.ndarray]:
    """(seeds, a values, b values) over the seeds both have with finite values.

    Mappings (dict seed -> value, or a pandas Series indexed by seed) pair by key, in sorted key order;
    plain sequences pair by position (their seeds are 0..n-1) and must have equal length.
    """
    if hasattr(a, "keys") and hasattr(b, "keys"):
        seeds = sorted(set(a.keys()) & set(b.keys()))
        va = np.array([float(a[s]) for s in seeds], dtype=float)
        vb = np.array([float(b[s]) for s in seeds], dtype=float)
    elif hasattr(a, "keys") or hasattr(b, "keys"):
        raise TypeError("pair a mapping (seed -> value) with a mapping, or a sequence with a sequence")
    else:
        va, vb = np.asarray(a, float).reshape(-1), np.asarray(b, float).reshape(-1)
        if va.size != vb.size:
            raise ValueError(f"paired sequences differ in length: {va.size} and {vb.size}")
        seeds = list(range(va.size))
    keep = np.isfinite(va) & np.isfinite(vb)
    return [s for s, k in zip(seeds, keep) if k], va[keep], vb[keep]


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of a and b over n common seeds: effect = mean(a - b) with its t-interval
    (low, high) at the requested confidence, and the two-sided p-value of ``test`` ('t' or 'signflip')."""
    effect: float
    low: float
    high: float
    p_value: float
    n: int
    test: str


def paired_t_pvalue(d: np.ndarray) -> float:
    """Two-sided p of the paired t-test on differences d: 2 * P(T_{n-1} > |mean| / (sd / sqrt(n))).

    With zero spread: p = 1 when every difference is 0, p = 0 when they are equal and non-zero; nan for n < 2.
    """
    d = np.asarray(d, float)
    if d.size < 2:
        return float("nan")
    m, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 1.0 if m == 0 else 0.0
    return float(2 * _st.t.sf(abs(m) / (sd / math.sqrt(d.size)), d.size - 1))


def signflip_pvalue(d: np.ndarray) -> float:
    """Two-sided p of the exact sign-flip (paired permutation) test: the share of all 2^n sign patterns s
    with |sum(s * d)| >= |sum(d)|. Under H0 (differences symmetric about 0) every pattern is equally likely.

    The smallest attainable p is 2 / 2^n (the observed pattern and its mirror), so the test cannot reject at
    5 % with n <= 5 seeds (2/32 = 0.0625). n must be at most 20; nan for n < 1.
    """
    d = np.asarray(d, float).reshape(-1)
    n = d.size
    if n < 1:
        return float("nan")
    if n > SIGNFLIP_MAX_N:
        raise ValueError(f"the exact sign-flip test enumerates 2^n patterns; n = {n} > {SIGNFLIP_MAX_N}")
    observed = abs(float(d.sum()))
    tol = 1e-9 * float(np.abs(d).sum())  # sums of the same numbers in another order may differ by rounding
    bits = np.arange(n)
    hits = 0
    for start in range(0, 2 ** n, 2 ** 16):
        codes = np.arange(start, min(start + 2 ** 16, 2 ** n))[:, None]
        signs = 1.0 - 2.0 * ((codes >> bits) & 1)
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
    return hits / 2 ** n


def paired_difference(a: PerSeed, b: PerSeed, test: str = "t", confidence: float = 0.95) -> PairedTest:
    """Paired test of a against b over their common seeds (see :func:`pair_on_seeds`).

    effect = mean over seeds of a - b (units of the values), (low, high) its Student-t interval,
    p_value two-sided from the paired t-test (``test="t"``, the default: it can reject with the suite's
    5 seeds) or the exact sign-flip test (``test="signflip"``: no normality assumption, but its p is at
    least 2 / 2^n). Fewer than 2 common seeds: nan interval and p.
    """
    if test not in ("t", "signflip"):
        raise ValueError(f"test must be 't' or 'signflip', got {test!r}")
    _, va, vb = pair_on_seeds(a, b)
    d = va - vb
    effect, low, high = t_interval(d, confidence)
    if d.size < 2:
        p = float("nan")
    else:
        p = paired_t_pvalue(d) if test == "t" else signflip_pvalue(d)
    return PairedTest(effect, low, high, p, int(d.size), test)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: sorted ascending p_(1) <= ... <= p_(m),
    adj_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j)), returned in the input order.

    Rejecting where adj < alpha keeps the family-wise error rate <= alpha under any dependence. NaN
    p-values (untested comparisons) stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, float).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


@dataclass(frozen=True)
class Verdict:
    """Where the reference lies against ``other``: 'above' / 'below' when the Holm-adjusted p < alpha (by the
    sign of effect = mean over common seeds of reference - other), else 'undecided'. (low, high) is the
    unadjusted t-interval of the effect; seeds are the common seeds used."""
    other: str
    verdict: str
    effect: float
    low: float
    high: float
    p_value: float
    p_holm: float
    n_seeds: int
    seeds: tuple
    test: str


def _decide(effect: float, p_holm: float, alpha: float) -> str:
    if not (p_holm < alpha) or effect == 0:  # False for nan
        return "undecided"
    return "above" if effect > 0 else "below"


def verdict(reference: PerSeed, other: PerSeed, other_name: str = "other", test: str = "t",
            alpha: float = 0.05, confidence: float = 0.95) -> Verdict:
    """One comparison on its own (a family of one: p_holm = p_value); see :func:`verdict_table`."""
    return verdict_table(reference, {other_name: other}, test, alpha, confidence)[0]


def verdict_table(reference: PerSeed, others: Mapping[str, PerSeed], test: str = "t", alpha: float = 0.05,
                  confidence: float = 0.95) -> list[Verdict]:
    """One :class:`Verdict` per entry of ``others`` (in its order): each paired with ``reference`` on their
    common seeds, tested with :func:`paired_difference`, p-values Holm-adjusted across the table.

    Values are per seed (dict seed -> value or a Series indexed by seed) of any per-seed metric. Fewer than
    2 common seeds gives 'undecided' with nan p (and no place in the Holm family).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = list(others)
    tests = [paired_difference(reference, others[k], test, confidence) for k in names]
    seeds = [tuple(pair_on_seeds(reference, others[k])[0]) for k in names]
    adjusted = holm([t.p_value for t in tests])
    return [Verdict(str(k), _decide(t.effect, float(ph), alpha), t.effect, t.low, t.high, t.p_value, float(ph),
                    t.n, s, t.test) for k, t, ph, s in zip(names, tests, adjusted, seeds)]

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

from typing import Callable, Sequence, Union

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

"""Benchmark metrics: pure functions of arrays (numpy in, numpy/float out), plus thin task helpers.

Curves are indexed by queries used: entry ``i`` (0-based) is the metric after ``i + 1`` oracle queries, in
the order the queries were made. Values are the task's (maximised) oracle values in its own units.

* :func:`best_so_far`, :func:`top_k_mean_curve`, :func:`auc_top_k` (PMO, Gao et al. 2022)
* diversity: :func:`vendi_score` (RBF or cosine kernel), :func:`valid_vendi_score` (over valid designs
  only), :func:`mean_pairwise_distance`
* distribution distance: :func:`frechet_distance` / :func:`gaussian_frechet` (FID formula on any features)
* summaries: :func:`mean_sem`, :func:`diversity`
"""
from __future__ import annotations

import heapq
from typing import Any, Optional

import numpy as np

__all__ = [
    "best_so_far",
    "top_k_mean_curve",
    "auc_top_k",
    "vendi_score",
    "valid_vendi_score",
    "mean_pairwise_distance",
    "gaussian_frechet",
    "frechet_distance",
    "gaussian_fid",
    "mean_sem",
    "diversity",
]


def _as_np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _values(values: Any) -> np.ndarray:
    v = _as_np(values)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array (one per query), got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError(f"values contain NaN at query indices {np.flatnonzero(np.isnan(v))[:10].tolist()}")
    return v


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


# ---- sample-efficiency curves ------------------------------------------------------------------
def best_so_far(values: Any) -> np.ndarray:
    """(n,) oracle values in query order -> (n,) running maximum."""
    return np.maximum.accumulate(_values(values))


def top_k_mean_curve(values: Any, k: int) -> np.ndarray:
    """(n,) values -> (n,) mean of the k largest values among the first i+1 queries.

    While fewer than k queries were made (i + 1 < k) the mean of all i + 1 values is used. k=1 is
    :func:`best_so_far`. O(n log k).
    """
    v = _values(values)
    k = _check_k(k)
    heap: list[float] = []
    total = 0.0
    out = np.empty_like(v)
    for i, x in enumerate(v.tolist()):
        if len(heap) < k:
            heapq.heappush(heap, x)
            total += x
        elif x > heap[0]:
            total += x - heapq.heapreplace(heap, x)
        out[i] = total / len(heap)
    return out


def auc_top_k(values: Any, k: int = 10, budget: Optional[int] = None) -> float:
    """PMO area under the top-k curve, normalised by the budget (Gao et al. 2022, logged every query).

    ``(1/budget) * sum_{i=1..budget} topk_i`` with ``topk_i`` from :func:`top_k_mean_curve`; a run that
    stopped early (n < budget queries) is extended with its last value. budget defaults to n; more than
    ``budget`` values is an error. Units: those of the values.
    """
    v = _values(values)
    n = v.size
    budget = n if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    if n > budget:
        raise ValueError(f"got {n} values for budget {budget}; at most budget queries are allowed")
    curve = top_k_mean_curve(v, k)
    return float((curve.sum() + (budget - n) * curve[-1]) / budget)


# ---- diversity -------------------------------------------------------------------------------------
def _features(features: Any, min_rows: int) -> np.ndarray:
    f = _as_np(features)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2:
        raise ValueError(f"features must have shape (n, F), got {f.shape}")
    if f.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} feature rows, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f


def _sq_dists(a: np.ndarray, b: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Exact squared Euclidean distances (n_a, n_b) by direct differences, in row blocks."""
    rows = max(1, block // max(1, b.shape[0] * a.shape[1]))
    out = np.empty((a.shape[0], b.shape[0]))
    for s in range(0, a.shape[0], rows):
        d = a[s : s + rows, None, :] - b[None, :, :]
        out[s : s + rows] = np.einsum("ijk,ijk->ij", d, d)
    return out


def vendi_score(features: Any, kernel: str = "rbf", bandwidth: Optional[float] = None) -> float:
    """Vendi score (Friedman & Dieng 2023): exp(-sum_i lam_i log lam_i), lam = eigenvalues of K/n.

    features: (n, F). kernel ``"rbf"``: K_ij = exp(-|x_i - x_j|^2 / (2 h^2)) with h = ``bandwidth`` (in
    feature units, required); ``"cosine"``: K_ij = <x_i/|x_i|, x_j/|x_j|> (rows must be non-zero). Ranges
    from 1 (all identical) to n (all orthogonal / far apart); "effective number of distinct designs".
    """
    f = _features(features, 1)
    n = f.shape[0]
    if kernel == "rbf":
        if bandwidth is None or not np.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"rbf kernel needs a bandwidth > 0 (feature units), got {bandwidth!r}")
        K = np.exp(-_sq_dists(f, f) / (2.0 * float(bandwidth) ** 2))
    elif kernel == "cosine":
        norms = np.linalg.norm(f, axis=1)
        if (norms == 0).any():
            raise ValueError(f"cosine kernel needs non-zero feature rows; rows {np.flatnonzero(norms == 0)[:10].tolist()} are zero")
        u = f / norms[:, None]
        K = u @ u.T
    else:
        raise ValueError(f"kernel must be 'rbf' or 'cosine', got {kernel!r}")
    lam = np.linalg.eigvalsh((K + K.T) / (2.0 * n))
    lam = lam[lam > 0]
    return float(np.exp(-np.sum(lam * np.log(lam))))


def valid_vendi_score(features: Any, valid: Any, kernel: str = "rbf", bandwidth: Optional[float] = None) -> float:
    """Vendi score of the valid rows only: :func:`vendi_score` of ``features[valid]``, same kernel/bandwidth.

    features: (n, F); valid: (n,) bool. With no valid row the score is 0.0 (one valid row gives 1.0, as
    for any single design), so it lies in [0, n_valid] and is never NaN: designs that left the prior
    (or noise images) add nothing, however far apart they are.
    """
    f = _features(features, 1)
    v = _as_np(valid).astype(bool).reshape(-1)
    if v.shape[0] != f.shape[0]:
        raise ValueError(f"valid mask has {v.shape[0]} entries for {f.shape[0]} feature rows")
    return vendi_score(f[v], kernel, bandwidth) if v.any() else 0.0


def mean_pairwise_distance(features: Any) -> float:
    """Mean Euclidean distance over the n(n-1)/2 unordered pairs of rows of (n, F) features (n >= 2)."""
    f = _features(features, 2)
    n = f.shape[0]
    total = 0.0
    rows = max(1, (1 << 22) // max(1, n * f.shape[1]))
    for s in range(0, n, rows):
        d2 = _sq_dists(f[s : s + rows], f)
        i = np.arange(s, min(s + rows, n))[:, None]
        total += np.sqrt(d2[np.arange(n)[None, :] > i]).sum()
    return float(total / (n * (n - 1) / 2))


# ---- Fréchet distance ----------------------------------------------------------------------------
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_frechet(mu_a: Any, cov_a: Any, mu_b: Any, cov_b: Any) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mu_a, cov_a) and N(mu_b, cov_b):
    |mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a^{1/2} cov_b cov_a^{1/2})^{1/2}). Units: features^2."""
    mu_a, mu_b = _as_np(mu_a).reshape(-1), _as_np(mu_b).reshape(-1)
    cov_a, cov_b = np.atleast_2d(_as_np(cov_a)), np.atleast_2d(_as_np(cov_b))
    d = mu_a.size
    if mu_b.size != d or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu_a {mu_a.shape}, mu_b {mu_b.shape}, cov_a {cov_a.shape}, cov_b {cov_b.shape}"
        )
    sa = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh((sa @ cov_b @ sa + (sa @ cov_b @ sa).T) / 2)
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(0.0, np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt))


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """FID formula on two feature sets (n_a, F), (n_b, F): Gaussian fits with unbiased (ddof=1) covariance."""
    a, b = _features(feats_a, 2), _features(feats_b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


gaussian_fid = frechet_distance


# ---- summaries / task helpers ------------------------------------------------------------------
def mean_sem(x: Any) -> dict:
    """Mean and standard error (ddof=1) of a 1-D sample; sem is nan for a single value."""
    v = _values(x)
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "sem": sem, "n": int(v.size)}


def diversity(task: Any, designs: Any) -> dict:
    """Vendi score and mean pairwise distance in ``task.diversity_features`` space. The kernel is RBF with
    ``task.vendi_bandwidth`` when it is set, else cosine; the one used is reported.

    When the task defines validity (``task.valid_mask(designs)`` is not None) also ``n_valid`` and
    ``vendi_valid`` (:func:`valid_vendi_score`, same kernel): the diversity that invalid designs cannot win.
    """
    f = _as_np(task.diversity_features(designs))
    h = getattr(task, "vendi_bandwidth", None)
    kernel = "cosine" if h is None else "rbf"
    out = {
        "vendi": vendi_score(f, kernel=kernel, bandwidth=h),
        "vendi_kernel": kernel if h is None else f"rbf(h={h:g})",
        "mean_pairwise_distance": mean_pairwise_distance(f) if f.shape[0] > 1 else float("nan"),
    }
    valid_mask = getattr(task, "valid_mask", None)
    valid = None if valid_mask is None else valid_mask(designs)
    if valid is not None:
        valid = _as_np(valid).astype(bool)
        out["vendi_valid"] = valid_vendi_score(f, valid, kernel=kernel, bandwidth=h)
        out["n_valid"] = int(valid.sum())
    return out

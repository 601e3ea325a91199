"""Metrics checked against independent computations (brute-force loops, scipy)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist, pdist

from sqdf_bbo import metrics as M


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- curves ------------------------------------------------------------------------------------
def _brute_topk(values, k):
    return np.array([np.mean(sorted(values[: i + 1], reverse=True)[:k]) for i in range(len(values))])


def test_best_so_far_matches_loop():
    v = _rng().normal(size=200)
    expected = []
    best = -np.inf
    for x in v:
        best = max(best, x)
        expected.append(best)
    np.testing.assert_array_equal(M.best_so_far(v), expected)
    np.testing.assert_array_equal(M.best_so_far(torch.tensor(v)), expected)


@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_top_k_mean_curve_matches_brute_force(k):
    v = _rng(k).normal(size=250)
    v[50:60] = v[10]  # ties
    np.testing.assert_allclose(M.top_k_mean_curve(v, k), _brute_topk(v, k), rtol=0, atol=1e-12)
    if k == 1:
        np.testing.assert_array_equal(M.top_k_mean_curve(v, 1), M.best_so_far(v))


def test_top_k_early_queries_use_available_values():
    v = np.array([1.0, 3.0, 2.0])
    np.testing.assert_allclose(M.top_k_mean_curve(v, 10), [1.0, 2.0, 2.0])
    np.testing.assert_allclose(M.top_k_mean_curve(v, 2), [1.0, 2.0, 2.5])


def test_auc_top_k_pmo_definition():
    v = _rng(1).normal(size=137)
    for k, budget in [(10, 137), (10, 500), (1, 200), (100, 1000)]:
        curve = _brute_topk(v, k)
        total = 0.0
        for i in range(1, budget + 1):  # sum_{i=1..budget} topk_i, extended with the last value
            total += curve[min(i, len(v)) - 1]
        assert M.auc_top_k(v, k=k, budget=budget) == pytest.approx(total / budget, abs=1e-12)
    assert M.auc_top_k([2.0, 2.0], k=10, budget=4) == pytest.approx(2.0)
    assert M.auc_top_k([0.0, 4.0], k=1, budget=4) == pytest.approx((0 + 4 + 4 + 4) / 4)


def test_curve_input_errors():
    with pytest.raises(ValueError, match="budget 5"):
        M.auc_top_k(np.zeros(6), budget=5)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        M.top_k_mean_curve([1.0], 0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        M.best_so_far(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.best_so_far([1.0, np.nan])


# ---- diversity ---------------------------------------------------------------------------------
def _vendi_scipy(K):
    lam = scipy.linalg.eigh(K / K.shape[0], eigvals_only=True)
    lam = lam[lam > 1e-15]
    return np.exp(-(lam * np.log(lam)).sum())


def test_vendi_limits():
    x = np.tile([[1.0, 2.0, 3.0]], (20, 1))
    assert M.vendi_score(x, "rbf", 1.0) == pytest.approx(1.0, abs=1e-9)
    assert M.vendi_score(x, "cosine") == pytest.approx(1.0, abs=1e-9)
    far = 1000.0 * np.arange(15)[:, None] * np.ones((1, 3))
    assert M.vendi_score(far, "rbf", 1.0) == pytest.approx(15.0, abs=1e-9)
    assert M.vendi_score(np.eye(7) * 3.0, "cosine") == pytest.approx(7.0, abs=1e-9)
    # two tight clusters -> about 2
    y = np.concatenate([np.zeros((10, 2)), 50 + np.zeros((10, 2))]) + 1e-4 * _rng().normal(size=(20, 2))
    assert M.vendi_score(y, "rbf", 1.0) == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("h", [0.3, 1.0, 4.0])
def test_vendi_rbf_equals_scipy_entropy(h):
    x = _rng(2).normal(size=(40, 5))
    K = np.exp(-cdist(x, x, "sqeuclidean") / (2 * h**2))
    assert M.vendi_score(x, "rbf", h) == pytest.approx(_vendi_scipy(K), rel=1e-9)


def test_vendi_cosine_equals_scipy_entropy():
    x = _rng(3).normal(size=(30, 4)) + 0.5
    K = 1.0 - cdist(x, x, "cosine")
    assert M.vendi_score(x, "cosine") == pytest.approx(_vendi_scipy(K), rel=1e-9)
    # invariant to row scaling (cosine), not for rbf
    s = x * _rng(4).uniform(0.5, 3, size=(30, 1))
    assert M.vendi_score(s, "cosine") == pytest.approx(M.vendi_score(x, "cosine"), rel=1e-9)


def test_vendi_errors():
    with pytest.raises(ValueError, match="bandwidth > 0"):
        M.vendi_score(np.ones((3, 2)), "rbf")
    with pytest.raises(ValueError, match="'rbf' or 'cosine', got 'l1'"):
        M.vendi_score(np.ones((3, 2)), "l1", 1.0)
    with pytest.raises(ValueError, match="rows \\[1\\] are zero"):
        M.vendi_score(np.array([[1.0, 0], [0, 0]]), "cosine")


def test_mean_pairwise_distance_matches_pdist():
    for n, f in [(2, 1), (17, 3), (300, 6)]:
        x = _rng(n).normal(size=(n, f))
        assert M.mean_pairwise_distance(x) == pytest.approx(pdist(x).mean(), rel=1e-12)
    x = _rng(9).normal(size=(800, 2))  # exercises the row blocks
    assert M.mean_pairwise_distance(x) == pytest.approx(pdist(x).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        M.mean_pairwise_distance(np.ones((1, 3)))


# ---- Fréchet ---------------------------------------------------------------------------------------
def _fd_sqrtm(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def test_gaussian_frechet_closed_forms():
    # 1-D: (m1-m2)^2 + (s1-s2)^2
    assert M.gaussian_frechet([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, abs=1e-12)
    # commuting diagonal covariances: |mu|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu = np.array([1.0, -2.0, 0.5])
    expected = np.sum(mu**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.gaussian_frechet(mu, np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected, abs=1e-12)
    # identical Gaussians -> 0
    A = _rng().normal(size=(4, 4))
    S = A @ A.T + np.eye(4)
    assert M.gaussian_frechet(np.ones(4), S, np.ones(4), S) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_frechet_matches_sqrtm_formula():
    r = _rng(5)
    for d in (2, 6):
        A, B = r.normal(size=(d, d)), r.normal(size=(d, d))
        s1, s2 = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(d)
        mu1, mu2 = r.normal(size=d), r.normal(size=d)
        assert M.gaussian_frechet(mu1, s1, mu2, s2) == pytest.approx(_fd_sqrtm(mu1, s1, mu2, s2), rel=1e-8)


def test_frechet_distance_on_samples():
    r = _rng(6)
    a = r.normal(size=(500, 3)) @ np.diag([1.0, 2.0, 0.5])
    b = r.normal(size=(400, 3)) + np.array([1.0, 0, 0])
    expected = _fd_sqrtm(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert M.gaussian_fid(a, b) == M.frechet_distance(a, b)
    # large samples approach the population value 1 + (2-1)^2 + (0.5-1)^2
    big_a = r.normal(size=(200_000, 3)) @ np.diag([1.0, 2.0, 0.5])
    big_b = r.normal(size=(200_000, 3)) + np.array([1.0, 0, 0])
    assert M.frechet_distance(big_a, big_b) == pytest.approx(1 + 1 + 0.25, abs=0.03)
    with pytest.raises(ValueError, match="feature dims differ"):
        M.frechet_distance(a, b[:, :2])


# ---- summaries -------------------------------------------------------------------------------------
class _Task:
    vendi_bandwidth = None

    def diversity_features(self, x):
        return x.reshape(x.shape[0], -1).double()


def test_diversity_helper():
    x = torch.tensor(_rng(7).normal(size=(50, 3)))
    div = M.diversity(_Task(), x)
    assert div["vendi_kernel"] == "cosine"
    assert div["vendi"] == pytest.approx(_vendi_scipy(1 - cdist(x.numpy(), x.numpy(), "cosine")), rel=1e-9)
    assert div["mean_pairwise_distance"] == pytest.approx(pdist(x.numpy()).mean())
    t = _Task()
    t.vendi_bandwidth = 0.7
    K = np.exp(-cdist(x.numpy(), x.numpy(), "sqeuclidean") / (2 * 0.7**2))
    assert M.diversity(t, x)["vendi"] == pytest.approx(_vendi_scipy(K), rel=1e-9)

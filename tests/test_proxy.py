"""Optimistic proxies: UCB bonus vs numpy, bootstrap resamples, best-epoch restore, rank correlation."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from sqdf_bbo.proxy import ProxySettings, fit_proxy, proxy_settings

torch.set_num_threads(1)


def _data(n=300, d=4, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g) * 2 - 1
    y = (-(x**2).sum(1) + torch.sin(3 * x[:, 0])).double() + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def test_ucb_bonus_matches_numpy():
    x, y = _data()
    cfg = {"proxy": "ucb", "proxy_epochs": 5, "osm_alpha": 0.3, "osm_lambda": 1e-2, "osm_clipping": 1e9}
    proxy, _ = fit_proxy(x, y, proxy_settings(cfg), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        phi_d = proxy.net.phi((x - proxy.x_mean) / proxy.x_std)[0].double().numpy()
        xq = torch.rand(64, 4, generator=torch.Generator().manual_seed(2)) * 4 - 2
        phi_q = proxy.net.phi((xq - proxy.x_mean) / proxy.x_std)[0].double().numpy()
    sigma = np.cov(phi_d, rowvar=False, ddof=1)
    prec = np.linalg.inv(sigma + 1e-2 * np.eye(sigma.shape[0]))
    free = 0.3 * np.sqrt(np.einsum("bi,ij,bj->b", phi_q, prec, phi_q))
    clip = float(np.median(free))  # exercise both clipped and free bonuses
    proxy.osm_clipping = clip
    with torch.no_grad():
        got = proxy.bonus(xq).double().numpy()
        total = proxy(xq).double().numpy()
        mean = proxy.predict_mean(xq).double().numpy()
    want = np.minimum(free, clip)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
    # the bonus is added in standardised units and mapped back with the training std
    np.testing.assert_allclose(total - mean, proxy.y_std * want, rtol=2e-4, atol=1e-5)


def test_bootstrap_heads_resample_and_max():
    x, y = _data(n=200)
    proxy, stats = fit_proxy(x, y, proxy_settings({"proxy": "bootstrap", "proxy_heads": 4, "proxy_epochs": 20}),
                             generator=torch.Generator().manual_seed(0))
    idx = proxy.resample_indices
    n_train = stats["n_train"]
    assert n_train == 190 and stats["n_val"] == 10  # newest 5% held out
    assert idx.shape == (4, n_train)  # one resample per head, each of size n_train
    assert int(idx.min()) >= 0 and int(idx.max()) < n_train
    rows = {tuple(r.tolist()) for r in idx}
    assert len(rows) == 4, "heads must see different resamples"
    for r in idx:  # with replacement: duplicates present, ~63% unique
        frac_unique = len(set(r.tolist())) / n_train
        assert 0.5 < frac_unique < 0.75
    with torch.no_grad():
        heads = proxy.predict_heads(x[:50])
        assert (heads.std(0) > 0).all(), "heads trained on different data should disagree"
        torch.testing.assert_close(proxy(x[:50]), heads.max(0).values)


def test_best_epoch_is_restored_not_live_reference():
    # tiny noisy data, high lr: validation error is not monotone, so best != last
    x, y = _data(n=60, noise=0.8, seed=3)
    cfg = {"proxy": "none", "proxy_epochs": 150, "proxy_lr": 2e-2, "proxy_batch": 16, "proxy_val_frac": 0.2}
    best, sb = fit_proxy(x, y, proxy_settings(dict(cfg, proxy_select="best")), generator=torch.Generator().manual_seed(0))
    last, sl = fit_proxy(x, y, proxy_settings(dict(cfg, proxy_select="last")), generator=torch.Generator().manual_seed(0))
    hist = best.val_mae_history
    assert hist == last.val_mae_history  # same seed -> same training path
    assert sb["best_epoch"] == int(np.argmin(hist)) and sb["best_epoch"] != len(hist) - 1
    xv, yv = x[48:], y[48:]
    with torch.no_grad():
        mae_best = float((best.predict_mean(xv).double() - yv).abs().mean())
        mae_last = float((last.predict_mean(xv).double() - yv).abs().mean())
    assert mae_best == pytest.approx(min(hist), rel=1e-5)
    assert mae_last == pytest.approx(hist[-1], rel=1e-5)
    assert mae_best < mae_last
    assert sb["val_mae"] == pytest.approx(min(hist), rel=1e-5)


def test_rank_correlation_logged_and_correct():
    x, y = _data(n=400, noise=0.05)
    proxy, stats = fit_proxy(x, y, proxy_settings({"proxy": "bootstrap", "proxy_epochs": 60, "proxy_val_frac": 0.1}),
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = proxy.predict_mean(x[360:]).numpy()
    want = spearmanr(pred, y[360:].numpy()).statistic
    assert stats["val_spearman"] == pytest.approx(want, abs=1e-9)
    assert stats["val_spearman"] > 0.7
    assert np.isfinite(stats["val_spearman_optimistic"])


def test_gradient_original_units_and_continuation():
    x, y = _data(n=200)
    y_big = 100.0 + 10.0 * y
    proxy, _ = fit_proxy(x, y_big, proxy_settings({"proxy": "bootstrap", "proxy_epochs": 30}), generator=torch.Generator().manual_seed(0))
    xq = x[:8].clone().requires_grad_(True)
    out = proxy(xq)
    assert abs(float(out.detach().mean()) - float(y_big.mean())) < 3 * float(y_big.std())  # original units
    out.sum().backward()
    assert xq.grad is not None and xq.grad.abs().sum() > 0
    # continuing with 0 extra epochs on the same data reproduces the previous proxy exactly
    again, _ = fit_proxy(x, y_big, proxy_settings({"proxy": "bootstrap", "proxy_epochs": 0}), previous=proxy,
                         generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(again(x[:20]), proxy(x[:20]))


@pytest.mark.parametrize("bad", [{"proxy": "gp"}, {"proxy_select": "first"}, {"proxy_val_frac": 1.0},
                                 {"proxy_heads": 0}, {"proxy_lr": 0}])
def test_bad_config_is_named(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        proxy_settings(bad)


def test_settings_are_typed_and_checked_once_where_built():
    """proxy_settings() coerces and range-checks a dict once (unknown keys refused); fit_proxy takes the typed
    ProxySettings as it is and refuses a plain dict."""
    s = proxy_settings({"proxy_heads": "3", "proxy_lr": 1, "proxy_select": "last"})
    assert isinstance(s, ProxySettings) and (s.proxy_heads, s.proxy_lr, s.proxy_select) == (3, 1.0, "last")
    assert proxy_settings() == ProxySettings()
    with pytest.raises(ValueError, match="unknown setting.*'lr'.*for the proxy"):
        proxy_settings({"lr": 1e-3})
    x, y = _data(n=20)
    with pytest.raises(TypeError, match="ProxySettings"):
        fit_proxy(x, y, {"proxy_epochs": 1})


def test_laion_architecture_matches_the_oracle_head():
    """proxy_arch=laion: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropout 0.2/0.2/0.1, no activations:
    per head the parameter count of that stack, and the net is affine in eval mode."""
    from sqdf_bbo.proxy.mlp import EnsembleMLP

    net = EnsembleMLP(2, 768, arch="laion", generator=torch.Generator().manual_seed(0)).eval()
    widths = [768, 1024, 128, 64, 16, 1]
    per_head = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    assert sum(p.numel() for p in net.parameters()) == 2 * per_head
    assert [m.p for m in net.drops if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]
    x, y = torch.randn(3, 768), torch.randn(3, 768)
    with torch.no_grad():  # affine: f(x) + f(y) - f(0) = f(x + y)
        torch.testing.assert_close(net(x) + net(y) - net(torch.zeros(3, 768)), net(x + y), rtol=1e-4, atol=1e-4)
        net.train()
        assert not torch.allclose(net(x), net(x))  # dropout active in training mode only


def test_laion_proxy_fits_and_validates_without_dropout():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g)
    y = (X[:, 0] - 0.5 * X[:, 1]).double()
    proxy, stats = fit_proxy(X, y, proxy_settings({"proxy": "bootstrap", "proxy_arch": "laion", "proxy_epochs": 30,
                                                   "proxy_batch": 64}), generator=g)
    assert not proxy.training and stats["val_spearman"] > 0.8
    with pytest.raises(ValueError, match="proxy_arch='resnet' must be one of"):
        proxy_settings({"proxy_arch": "resnet"})


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-4, 4), min_size=n, max_size=n), st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))))
def test_spearman_equals_scipy_bit_for_bit(pair):
    """The numpy Spearman (average ranks, then Pearson) is scipy.stats.spearmanr's number exactly, ties included
    (the integers repeat); constant inputs give nan in both."""
    from sqdf_bbo.proxy import average_ranks, spearman
    a, b = (np.asarray(x, dtype=float) for x in pair)
    from scipy.stats import rankdata
    assert np.array_equal(average_ranks(a), rankdata(a)) and np.array_equal(average_ranks(b), rankdata(b))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = float(spearmanr(a, b).statistic)
    got = spearman(a, b)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_spearman_is_nan_on_non_finite_or_short_input():
    from sqdf_bbo.proxy import spearman
    assert math.isnan(spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])))
    assert math.isnan(spearman(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0])))
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0

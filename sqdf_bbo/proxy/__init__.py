"""Optimistic proxy reward models on a task's feature map (as in the official SQDF and SEIKO code).

    settings = proxy_settings({"proxy": "ucb", "proxy_epochs": 50})  # checked once; or an agent's
    proxy, stats = fit_proxy(features, values, settings, previous=None, generator=None)
    r_plus = proxy(feats)        # (B, F) -> (B,) optimistic value in the ORIGINAL value units

The settings are a :class:`ProxySettings` (typed, coerced and range-checked when built: by
:func:`proxy_settings` from a dict, or as part of an agent's settings, which inherit these fields).

Optimism (``settings.proxy``):
- ``bootstrap``: ``proxy_heads`` MLP heads, head h trained on its own with-replacement resample
  (size n_train) of the training split; optimistic value = max over heads;
- ``ucb``: one MLP head plus min(osm_alpha * sqrt(phi^T (Sigma + osm_lambda I)^{-1} phi), osm_clipping),
  phi = last-layer features, Sigma = sample covariance of phi over all data (bonus added in standardised
  units, then mapped back with the target std);
- ``none``: one MLP head, no bonus.

Training (as the official code): validation = the newest ``proxy_val_frac`` of the data (the rows are in
query order), the rest trains; Adam(``proxy_lr``), mini-batches of ``proxy_batch``, MSE averaged over
heads, ``proxy_epochs`` epochs; ``proxy_select="best"`` restores a deep copy of the epoch with the lowest
validation MAE (the official code keeps a live reference and so ends at the last epoch; ``last``
reproduces that). Targets are standardised with the training split's mean/std, inputs with the
feature mean/std of the first fit. With ``previous`` (a proxy from an earlier round with the same
architecture) training continues from its weights, as the official proxy is never re-initialised.
Architecture: ``proxy_arch`` (``mlp``, default: F -> hidden -> hidden -> 16 -> 1 with SiLU, so a
fit of ~2000 points takes a few seconds on one CPU core; ``laion``: the oracle head's architecture
F -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout and no activations, as the official code, the default of
the SD tier) and ``proxy_hidden`` (the ``mlp`` width, default 128).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sqdf_bbo.proxy.bootstrap import bootstrap_indices
from sqdf_bbo.proxy.mlp import ARCHS, EnsembleMLP
from sqdf_bbo.proxy.ucb import precision_matrix, ucb_bonus
from sqdf_bbo.settings import resolve, setting

Tensor = torch.Tensor

PROXY_KINDS = ("bootstrap", "ucb", "none")
SELECT_KINDS = ("best", "last")


@dataclass
class ProxySettings:
    """The proxy's settings: the one source of their defaults (agents inherit these fields)."""

    proxy: str = setting("bootstrap", "optimism: bootstrap (max over heads) | ucb (feature bonus) | none",
                         choices=PROXY_KINDS)
    proxy_heads: int = setting(4, "bootstrap heads", ge=1)
    proxy_epochs: int = setting(300, "training epochs per refit (continues from the last round's weights)", ge=0)
    proxy_lr: float = setting(1e-3, "Adam learning rate", gt=0)
    proxy_batch: int = setting(512, "mini-batch size", ge=1)
    proxy_val_frac: float = setting(0.05, "newest fraction of the data held out for early stopping", ge=0, lt=1)
    proxy_select: str = setting("best", "keep the best-validation epoch (best) or the last one (last)",
                                choices=SELECT_KINDS)
    osm_alpha: float = setting(0.01, "UCB bonus scale", ge=0)
    osm_lambda: float = setting(1e-3, "UCB ridge on the feature covariance", ge=0)
    osm_clipping: float = setting(10.0, "UCB bonus cap", ge=0)
    proxy_hidden: int = setting(128, "hidden width of the mlp heads", ge=1)
    proxy_arch: str = setting("mlp", "mlp (small SiLU MLP) | laion (the oracle head: 1024-128-64-16, dropout)",
                              choices=ARCHS)


def proxy_settings(overrides: Optional[dict] = None) -> ProxySettings:
    """A :class:`ProxySettings` from a dict of proxy keys over the defaults, each coerced to its type and
    range-checked (one-line ValueError naming the key; unknown keys are refused with the allowed list)."""
    return ProxySettings(**resolve(ProxySettings, dict(overrides or {}), owner="the proxy"))


class ProxyModel(nn.Module):
    """Fitted proxy. forward(feats (B, F)) -> (B,) optimistic value, original units, differentiable."""

    def __init__(self, net: EnsembleMLP, kind: str, x_mean: Tensor, x_std: Tensor, y_mean: float, y_std: float,
                 osm_alpha: float = 0.0, osm_clipping: float = 0.0):
        super().__init__()
        self.net = net
        self.kind = kind
        self.register_buffer("x_mean", x_mean.float().clone())
        self.register_buffer("x_std", x_std.float().clone())
        self.y_mean, self.y_std = float(y_mean), float(y_std)
        self.osm_alpha, self.osm_clipping = float(osm_alpha), float(osm_clipping)
        self.register_buffer("precision", torch.zeros(0, 0, dtype=torch.float64))
        self.resample_indices: Optional[Tensor] = None  # (H, n_train) bootstrap resamples, for inspection
        self.val_mae_history: list[float] = []

    def standardise(self, feats: Tensor) -> Tensor:
        return (feats - self.x_mean.to(feats.dtype)) / self.x_std.to(feats.dtype)

    def heads_std(self, feats: Tensor) -> Tensor:
        """(B, F) -> (H, B) per-head predictions in standardised target units (no bonus)."""
        return self.net(self.standardise(feats))

    def predict_heads(self, feats: Tensor) -> Tensor:
        """(B, F) -> (H, B) per-head predictions in original units (no bonus)."""
        return self.y_mean + self.y_std * self.heads_std(feats)

    def predict_mean(self, feats: Tensor) -> Tensor:
        """(B, F) -> (B,) mean over heads, original units (no optimism)."""
        return self.predict_heads(feats).mean(0)

    def bonus(self, feats: Tensor) -> Tensor:
        """(B, F) -> (B,) UCB bonus in standardised units (zeros unless kind == 'ucb')."""
        if self.kind != "ucb":
            return feats.new_zeros(feats.shape[0])
        phi = self.net.phi(self.standardise(feats))[0]
        return ucb_bonus(phi, self.precision, self.osm_alpha, self.osm_clipping)

    def forward(self, feats: Tensor) -> Tensor:
        h = self.heads_std(feats)
        if self.kind == "bootstrap":
            z = h.max(0).values
        elif self.kind == "ucb":
            z = h[0] + self.bonus(feats)
        else:
            z = h[0]
        return self.y_mean + self.y_std * z


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given their average rank (float64, shape of ``x``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]  # the first of each run of equal values, in sorted order
    group = first.cumsum()  # 1-based tie group of each sorted value
    starts = np.r_[np.nonzero(first)[0], len(x)]  # where each group starts (0-based), then n
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = 0.5 * (starts[group] + starts[group - 1] + 1)  # mean of ranks start+1 .. next start
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's correlation of the average ranks (nan when fewer than 3 points,
    a constant input or a non-finite value). Written with numpy so that a proxy fit does not import
    scipy.stats (about 0.4 s of a synthetic run's start-up); tests/test_proxy.py checks it equals
    ``scipy.stats.spearmanr``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(np.column_stack((average_ranks(a), average_ranks(b))), rowvar=False)[1, 0])


def fit_proxy(features: Tensor, values: Tensor, settings: ProxySettings, previous: Optional[ProxyModel] = None,
              generator: Optional[torch.Generator] = None) -> tuple[ProxyModel, dict[str, Any]]:
    """Fit the optimistic proxy on (features (n, F), values (n,)) in query order; see the module doc.
    ``settings``: a :class:`ProxySettings`, already checked (:func:`proxy_settings` builds one from a dict).

    Returns (proxy in eval mode, stats) with stats: n_train, n_val, train_mse (standardised), val_mae
    (original units, selected epoch), best_epoch, val_spearman (mean prediction vs held-out values),
    val_spearman_optimistic, fit_s.
    """
    t0 = time.time()
    if not isinstance(settings, ProxySettings):
        raise TypeError(f"fit_proxy takes a ProxySettings (sqdf_bbo.proxy.proxy_settings(dict) builds one), "
                        f"got {type(settings).__name__}")
    cfg = settings
    feats = torch.as_tensor(features).detach().float().reshape(len(features), -1)
    y = torch.as_tensor(values, dtype=torch.float64).detach().reshape(-1)
    n = feats.shape[0]
    if n != y.shape[0]:
        raise ValueError(f"features has {n} rows but values has {y.shape[0]}")
    if n < 2:
        raise ValueError(f"fit_proxy needs at least 2 observations, got {n}")
    if not (torch.isfinite(feats).all() and torch.isfinite(y).all()):
        raise ValueError("fit_proxy got non-finite features or values")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    kind = cfg.proxy
    heads = cfg.proxy_heads if kind == "bootstrap" else 1

    n_val = int(math.floor(cfg.proxy_val_frac * n))
    if cfg.proxy_val_frac > 0 and n_val == 0 and n >= 10:
        n_val = 1
    n_tr = n - n_val
    x_tr, y_tr, x_val, y_val = feats[:n_tr], y[:n_tr], feats[n_tr:], y[n_tr:]
    y_mean = float(y_tr.mean())
    y_std = float(y_tr.std()) if n_tr > 1 and float(y_tr.std()) > 0 else 1.0

    F = feats.shape[1]
    net = EnsembleMLP(heads, F, hidden=cfg.proxy_hidden, generator=g, arch=cfg.proxy_arch)
    same = (isinstance(previous, ProxyModel) and previous.net.arch() == net.arch())
    if same:
        net.load_state_dict(previous.net.state_dict())
        x_mean, x_std = previous.x_mean.clone(), previous.x_std.clone()
    else:
        x_mean = feats.mean(0)
        x_std = feats.std(0) if n > 1 else torch.ones(F)
        x_std = torch.where(x_std > 1e-8, x_std, torch.ones_like(x_std))
    model = ProxyModel(net, kind, x_mean, x_std, y_mean, y_std, cfg.osm_alpha, cfg.osm_clipping)

    xs_tr = model.standardise(x_tr)
    ys_tr = ((y_tr - y_mean) / y_std).float()
    xs_val = model.standardise(x_val)
    if kind == "bootstrap":
        idx = bootstrap_indices(n_tr, heads, g)
    else:
        idx = torch.arange(n_tr).unsqueeze(0)
    model.resample_indices = idx

    opt = torch.optim.Adam(net.parameters(), lr=cfg.proxy_lr)
    bs = cfg.proxy_batch
    best_mae, best_epoch, best_state = float("inf"), -1, None
    history: list[float] = []
    last_mse = float("nan")
    for epoch in range(cfg.proxy_epochs):
        order = torch.gather(idx, 1, torch.argsort(torch.rand(idx.shape, generator=g), dim=1))
        net.train()
        tot, cnt = 0.0, 0
        for b in range(0, n_tr, bs):
            ib = order[:, b:b + bs]  # (H, b)
            pred = net(xs_tr[ib])
            loss = ((pred - ys_tr[ib]) ** 2).mean(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * ib.shape[1]
            cnt += ib.shape[1]
        last_mse = tot / max(cnt, 1)
        if n_val > 0:
            net.eval()  # dropout off for validation
            with torch.no_grad():
                mae = float((y_mean + y_std * net(xs_val).double() - y_val).abs().mean())
            history.append(mae)
            if mae < best_mae:
                best_mae, best_epoch = mae, epoch
                if cfg.proxy_select == "best":
                    best_state = copy.deepcopy(net.state_dict())  # a real copy, not a live reference
    if cfg.proxy_select == "best" and best_state is not None:
        net.load_state_dict(best_state)
    model.val_mae_history = history
    model.eval()
    with torch.no_grad():
        if kind == "ucb":
            phi_all = net.phi(model.standardise(feats))[0]
            model.precision = precision_matrix(phi_all, cfg.osm_lambda)
        stats: dict[str, Any] = {"n_train": n_tr, "n_val": n_val, "train_mse": last_mse,
                                 "best_epoch": best_epoch if cfg.proxy_select == "best" else len(history) - 1}
        if n_val > 0:
            mean_val = model.predict_mean(x_val).double()
            opt_val = model(x_val).double()
            stats["val_mae"] = float((mean_val - y_val).abs().mean()) if heads == 1 else float(
                (model.predict_heads(x_val).double() - y_val).abs().mean())
            stats["val_spearman"] = spearman(mean_val.numpy(), y_val.numpy())
            stats["val_spearman_optimistic"] = spearman(opt_val.numpy(), y_val.numpy())
            if kind == "ucb":
                stats["val_bonus_mean"] = float(model.bonus(x_val).mean()) * y_std
        else:
            stats.update(val_mae=float("nan"), val_spearman=float("nan"), val_spearman_optimistic=float("nan"))
    model.requires_grad_(False)
    stats["fit_s"] = time.time() - t0
    return model, stats


__all__ = ["fit_proxy", "ProxyModel", "EnsembleMLP", "precision_matrix", "ucb_bonus", "bootstrap_indices",
           "spearman", "PROXY_KINDS", "ProxySettings", "proxy_settings"]

"""UCB optimism bonus from the last-layer feature covariance (as in the official SQDF and SEIKO code).

bonus(phi) = min(alpha * sqrt(phi^T (Sigma + lambda I)^{-1} phi), clip), with Sigma the sample
covariance of phi over the whole dataset (centred, divided by n - 1, as ``torch.cov``). The bonus is in
the proxy's *standardised* target units and is differentiable w.r.t. phi.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def precision_matrix(phi_data: Tensor, lam: float) -> Tensor:
    """(Sigma + lam I)^{-1} from data features phi_data (n, m); float64, shape (m, m). ``lam``: the
    ``osm_lambda`` setting (>= 0, range-checked when the settings were built)."""
    phi = phi_data.double()
    n, m = phi.shape
    if n < 2:
        cov = torch.zeros(m, m, dtype=torch.float64)
    else:
        cov = torch.cov(phi.T)
    return torch.linalg.inv(cov + lam * torch.eye(m, dtype=torch.float64))


def ucb_bonus(phi: Tensor, precision: Tensor, alpha: float, clip: float) -> Tensor:
    """(B, m) features -> (B,) bonus min(alpha * sqrt(phi^T P phi), clip); differentiable in phi."""
    P = precision.to(phi.dtype)
    quad = ((phi @ P) * phi).sum(-1).clamp(min=0)
    # sqrt has an infinite derivative at 0; the tiny floor only matters for phi == 0 exactly
    return torch.clamp(alpha * torch.sqrt(quad + 1e-30), max=clip)

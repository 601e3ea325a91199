"""Ensemble MLP regressor used by every proxy flavour (bootstrap, UCB, plain).

H heads are evaluated in one batched call (weights of shape (H, in, out)), so a 4-head bootstrap
costs about one MLP on CPU. Architectures per head (``arch``):
- ``mlp`` (default): F -> hidden -> hidden -> feat_dim -> 1 with SiLU after every hidden layer;
- ``laion``: the oracle head's architecture, as the official SQDF/SEIKO proxies:
  F -> 1024 -> 128 -> 64 -> 16 -> 1, dropout 0.2, 0.2, 0.1 after the first three layers, no activations.
``phi`` (the feat_dim-d input of the last linear layer) is the last-layer feature the UCB bonus uses
(the prediction is linear in phi).
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


class EnsembleLinear(nn.Module):
    """H independent linear layers: (H, B, in) -> (H, B, out). PyTorch's default (Kaiming-uniform) init."""

    def __init__(self, heads: int, d_in: int, d_out: int, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        w = (torch.rand((heads, d_in, d_out), generator=generator) * 2 - 1) * bound
        b = (torch.rand((heads, 1, d_out), generator=generator) * 2 - 1) * bound
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


ARCHS = ("mlp", "laion")


class EnsembleMLP(nn.Module):
    """H-head MLP on standardised inputs. forward: (H, B, F) or (B, F) -> (H, B) standardised values."""

    def __init__(self, heads: int, d_in: int, hidden: int = 128, feat_dim: int = 16,
                 generator: torch.Generator | None = None, arch: str = "mlp"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"proxy_arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if arch == "laion":
            widths, drops, feat_dim, self.act = [d_in, 1024, 128, 64, 16], [0.2, 0.2, 0.1, 0.0], 16, nn.Identity()
        else:
            widths, drops, self.act = [d_in, hidden, hidden, feat_dim], [0.0, 0.0, 0.0], nn.SiLU()
        self.heads, self.d_in, self.hidden, self.feat_dim, self.arch_name = heads, d_in, hidden, feat_dim, arch
        self.body = nn.ModuleList(EnsembleLinear(heads, a, b, generator) for a, b in zip(widths[:-1], widths[1:]))
        self.drops = nn.ModuleList(nn.Dropout(p) if p > 0 else nn.Identity() for p in drops)
        self.head = EnsembleLinear(heads, feat_dim, 1, generator)

    def _broadcast(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x.unsqueeze(0).expand(self.heads, -1, -1)
        if x.ndim != 3 or x.shape[0] != self.heads:
            raise ValueError(f"expected (B, {self.d_in}) or ({self.heads}, B, {self.d_in}) inputs, got {tuple(x.shape)}")
        return x

    def phi(self, x: Tensor) -> Tensor:
        """Last-layer features (H, B, feat_dim)."""
        h = self._broadcast(x)
        for layer, drop in zip(self.body, self.drops):
            h = drop(self.act(layer(h)))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.phi(x)).squeeze(-1)

    def arch(self) -> dict:
        return dict(heads=self.heads, d_in=self.d_in, hidden=self.hidden, feat_dim=self.feat_dim, arch=self.arch_name)

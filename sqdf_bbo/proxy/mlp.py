"""Ensemble MLP regressor used by every proxy flavour (bootstrap, UCB, plain).

H heads are evaluated in one batched call (weights of shape (H, in, out)), so a 4-head bootstrap
costs about one MLP on CPU. Architecture per head: F -> hidden -> hidden -> feat_dim -> 1 with SiLU
after every hidden layer; ``phi`` (the feat_dim-d input of the last linear layer, after its SiLU) is
the last-layer feature the UCB bonus uses (the prediction is linear in phi).
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


class EnsembleMLP(nn.Module):
    """H-head MLP on standardised inputs. forward: (H, B, F) or (B, F) -> (H, B) standardised values."""

    def __init__(self, heads: int, d_in: int, hidden: int = 128, feat_dim: int = 16,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.heads, self.d_in, self.hidden, self.feat_dim = heads, d_in, hidden, feat_dim
        self.l1 = EnsembleLinear(heads, d_in, hidden, generator)
        self.l2 = EnsembleLinear(heads, hidden, hidden, generator)
        self.l3 = EnsembleLinear(heads, hidden, feat_dim, generator)
        self.l4 = EnsembleLinear(heads, feat_dim, 1, generator)
        self.act = nn.SiLU()

    def _broadcast(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x.unsqueeze(0).expand(self.heads, -1, -1)
        if x.ndim != 3 or x.shape[0] != self.heads:
            raise ValueError(f"expected (B, {self.d_in}) or ({self.heads}, B, {self.d_in}) inputs, got {tuple(x.shape)}")
        return x

    def phi(self, x: Tensor) -> Tensor:
        """Last-layer features (H, B, feat_dim)."""
        h = self._broadcast(x)
        h = self.act(self.l1(h))
        h = self.act(self.l2(h))
        return self.act(self.l3(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.l4(self.phi(x)).squeeze(-1)

    def arch(self) -> dict:
        return dict(heads=self.heads, d_in=self.d_in, hidden=self.hidden, feat_dim=self.feat_dim)

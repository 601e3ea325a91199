"""The run's optimistic reward r̂⁺ as one component, shared by the fine-tuners and the inference-time peers.

    opt = OptimisticReward()
    opt.add(features, values)                   # every observation: proxy features (n, F), values (n,)
    stats = opt.refit(settings, generator, dp)  # fit r̂⁺ on all of them (continuing from the last fit)
    r = opt(features)                           # (B, F) -> (B,) in standardised units

Standardised units: (r̂⁺ − m0)/s0 with m0, s0 the mean and standard deviation of the first fit's observed
values, frozen for the run, so one reward-per-nat ``beta`` means the same on every task. Only features are
kept, not designs (15 000 Stable Diffusion images would take ~48 GB). An agent holds one of these (its
state is checkpointed with the agent's) instead of inheriting the bookkeeping.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from sqdf_bbo.checkpoint import checkpointable

Tensor = torch.Tensor


@checkpointable
class OptimisticReward:
    """Observations' proxy features and values, the fitted proxy (``model``, None before the first fit) and
    the frozen standardisation (``offset``, ``scale``)."""

    def __init__(self) -> None:
        self.model: Optional[torch.nn.Module] = None
        self.features: list[Tensor] = []  # (n_i, F) per observed batch, on the CPU
        self.values: list[Tensor] = []  # (n_i,) float64 per observed batch
        self.offset: Optional[float] = None
        self.scale: Optional[float] = None

    @property
    def fitted(self) -> bool:
        return self.model is not None

    def add(self, features: Tensor, values: Tensor) -> None:
        """Store one batch of observations: features (n, F), values (n,)."""
        self.features.append(features.detach().cpu())
        self.values.append(torch.as_tensor(values, dtype=torch.float64).cpu())

    def refit(self, settings: Any, generator: Optional[torch.Generator] = None, dp: Any = None) -> dict[str, Any]:
        """Fit r̂⁺ on every stored observation (``sqdf_bbo.proxy.fit_proxy``, continuing from the previous fit);
        non-finite values or features are left out (counted in ``dropped_nonfinite``). The first fit freezes
        the standardisation. Under data parallelism every process takes rank 0's proxy. Returns the fit's
        statistics."""
        from sqdf_bbo.proxy import fit_proxy

        feats, values = torch.cat(self.features), torch.cat(self.values)
        finite = torch.isfinite(values) & torch.isfinite(feats.reshape(len(feats), -1)).all(dim=1)
        dropped = int((~finite).sum())  # NaN / ±inf oracle answers carry no usable signal
        feats, values = feats[finite], values[finite]
        if self.scale is None:
            self.offset = float(values.mean())
            self.scale = float(values.std()) if len(values) > 1 and values.std() > 0 else 1.0
        self.model, stats = fit_proxy(feats, values, settings, previous=self.model, generator=generator)
        self.model.eval().requires_grad_(False)
        stats["dropped_nonfinite"] = dropped
        if dp is not None:  # one proxy for all processes: rank 0's (its stats are the ones logged)
            dp.broadcast_parameters(list(self.model.parameters()) + list(self.model.buffers()))
        return stats

    def __call__(self, features: Tensor) -> Tensor:
        """Optimistic reward of features (B, F) in standardised units, (B,); differentiable."""
        return (self.model(features) - self.offset) / self.scale

"""SVDD: soft value-based decoding (Li et al. 2024), an inference-time peer that never changes the model
(official code masa-ue/SVDD-image, variant "PM").

The soft-optimal step from z_k samples p_ref(z'|z_k)·exp(v_{k+1}(z')/α); SVDD approximates it by importance
resampling from M pretrained proposals. Per design (batched), for k = 0..N-1:

    ε̂ = ε_ref(z_k, τ_k)                           (cached from the chosen candidate of step k-1)
    z'(m) = μ_k(z_k, ε̂) + s_k ξ(m),  m = 1..M      (the pretrained transition, η = the run's eta > 0)
    k < N-1: v(m) = r̂⁺(decode(Tweedie(z'(m), ε_ref(z'(m), τ_{k+1}))))   ("PM": one pretrained call each)
    k = N-1: v(m) = r̂⁺(decode(z'(m)))             (``select_last=True``; False = the official plain step)
    α = 0: m* = argmax v (official);  α > 0: m* ~ Categorical(softmax(v/α))
    z_{k+1} = z'(m*)

``improve()`` only refits r̂⁺; before the first refit the proposals are plain pretrained samples. The
setting ``temperature`` is the paper's α (named apart from SQDF's ``alpha``, which task defaults set).

KL to the pretrained model: with α = 0 and a continuous value every selecting step is a best-of-M, so the
path KL is exactly J·(log M − (M−1)/M), J = the number of selecting steps (N with ``select_last``, else
N−1); the harness reports it as ``path_kl`` (``analytic_path_kl``). For α > 0 it lies below J·log M and
has no closed form: ``path_kl`` is then NaN (the frontier sweeps M at the official α = 0).
η must be > 0: with η = 0 all M candidates coincide and SVDD is the pretrained sampler.
Cost per design: M pretrained calls and M proxy calls per step. One process only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from baselines.best_of_n import best_of_n_kl
from sqdf_bbo.agents.online import ProxyGuidedAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def svdd_select(values: Tensor, alpha: float, generator: torch.Generator) -> Tensor:
    """Chosen candidate per row of ``values`` (B, M): argmax (α = 0) or a draw from softmax(v/α). (B,) long."""
    if alpha == 0:
        return values.argmax(dim=1)
    probs = torch.softmax(values.double() / alpha, dim=1)
    return torch.multinomial(probs, 1, generator=generator).reshape(-1)


def _repeat(cond: Any, M: int) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond.repeat_interleave(M, dim=0)
    return [c for c in cond for _ in range(M)]


class SVDDAgent(ProxyGuidedAgent):
    """Value-guided decoding of the frozen pretrained model with the optimistic proxy."""

    steers_sampling: ClassVar[bool] = True

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        candidates: int = setting(20, "M: pretrained candidates per step (official image setting 20)", ge=1)
        temperature: float = setting(0.0, "α, temperature of the resampling (0 = argmax, the official rule)", ge=0)
        select_last: bool = setting(True, "also select at the last step (exact target); False = official")
        sample_batch: int = setting(64, "designs decoded at once (each carries M candidates)", ge=1)

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if not float(c["eta"]) > 0:
            raise ValueError(f"SVDD needs eta > 0 (with eta=0 all candidates coincide), got eta={c['eta']}")
        return c

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.policy = self.reference  # nothing is trained

    def analytic_path_kl(self) -> float:
        """J·(log M − (M−1)/M) nats for α = 0 (0 before the first proxy); NaN for α > 0 (no closed form)."""
        M, N = self.cfg.candidates, self.schedule.num_steps
        if not self.optimistic.fitted or M == 1:
            return 0.0
        if self.cfg.temperature > 0:
            return float("nan")
        J = N if self.cfg.select_last else N - 1
        return J * best_of_n_kl(M)

    def value(self, z: Tensor, k_next: int, cond: Any = None) -> tuple[Tensor, Tensor]:
        """(v (B,), ε_ref(z, τ_{k_next}) or None) for candidates z at grid index k_next (N = final)."""
        N = self.schedule.num_steps
        if k_next == N:
            return self.reward(z), None
        eps = self.reference_eps(z, self.schedule.timestep_batch(k_next, z.shape[0], z.device), cond)
        return self.reward(self.schedule.predict_x0(z, eps, k_next)), eps

    @torch.no_grad()
    def decode_batch(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        """n value-guided designs (n, *design_shape)."""
        M, N, sched = self.cfg.candidates, self.schedule.num_steps, self.schedule
        alpha = self.cfg.temperature
        shape = tuple(self.reference.latent_shape)
        z = self.reference.initial_noise(n, generator, sched)
        eps = None
        cond_m = _repeat(cond, M)
        for k in range(N):
            if eps is None:
                eps = self.reference_eps(z, sched.timestep_batch(k, n, z.device), cond)
            mu, s = sched.mean(z, eps, k), sched.step_std(k, z)
            xi = torch.randn((n, M, *shape), generator=generator, dtype=z.dtype).to(z.device)
            s = s.unsqueeze(1) if s.ndim else s  # a scalar for an int step
            cands = (mu.unsqueeze(1) + s * xi).reshape(n * M, *shape)
            if k == N - 1 and not self.cfg.select_last:
                return self.policy.decode(cands.reshape(n, M, *shape)[:, 0])
            v, eps_c = self.value(cands, k + 1, cond_m)
            pick = svdd_select(v.reshape(n, M).cpu(), alpha, generator).to(z.device)
            rows = torch.arange(n, device=z.device) * M + pick
            z = cands[rows]
            eps = None if eps_c is None else eps_c[rows]
        return self.policy.decode(z)

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        if not self.optimistic.fitted or self.cfg.candidates == 1:  # plain pretrained samples
            return self._propose_local(n, generator, cond)
        bs = self.cfg.sample_batch
        return torch.cat([self.decode_batch(min(bs, n - i), generator, None if cond is None else cond[i:i + bs])
                          for i in range(0, n, bs)]).detach()

    def improve(self) -> dict[str, float]:
        stats = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.round += 1
        kl = self.analytic_path_kl()
        if not math.isnan(kl):
            stats["analytic_path_kl"] = kl
        return stats

"""Adjoint Matching (Domingo-Enrich, Drozdzal, Karrer, Chen 2024) on the online harness.

Target: the tilt p*(x) ∝ p_pre(x)·exp(λ r̂⁺(x)), λ = 1/``alpha`` (``alpha`` = KL weight per nat of path
KL, reward in standardised units). This is the optimum only for a *memoryless* schedule; for DDPM/DDIM that is
η = 1, so the agent refuses any other ``eta``. One optimizer step of ``improve()``:

1. sample ``train_batch`` trajectories x_0..x_N from the current policy (η = 1, no grad);
2. terminal adjoint ã_N = -λ ∇_x r̂⁺(x_N) (through the decoder and proxy);
3. lean adjoint, backward: ã_k = (∂μ_k^base/∂x_k)^T ã_{k+1}, one vector-Jacobian product through the frozen
   pretrained mean per step (``torch.autograd.grad`` with ``grad_outputs=ã_{k+1}``, not a Jacobian row sum);
   its forward passes give μ_k^base(x_k), which step 4 reuses;
4. loss L = mean_b (N/|S|) Σ_{k∈S} ‖(μ_k^θ(x_k) - μ_k^base(x_k))/s_k + s_k ã‖² (sum over elements), with
   x and ã detached, so θ gets gradient only through ε_θ at the selected steps S. Its minimiser is
   μ^θ = μ^base - s_k² ã.
5. S = all N steps (``am_steps=None``) or ``am_steps`` distinct steps drawn uniformly per update
   (the factor N/|S| keeps the loss an unbiased estimate of the full sum).

Which adjoint step k's control is paired with (``adjoint_index``):
- ``"k+1"`` (default): ã = ã_{k+1} = ∇_{x_{k+1}}[-λ r(x_N)], the adjoint at the state that step k's
  mean μ_k produces. This is the discrete-exact choice: ∂L/∂μ_k^θ = (2/s_k²)(Δμ_k + s_k² ã_{k+1}) is 2λ times
  the gradient of β·KL_k - r(x_N) with β = ``alpha`` (KL_k = ‖Δμ_k‖²/(2s_k²), the exact Gaussian step KL),
  so ``alpha`` is the common ``beta`` at every step (tests/test_kl_scale.py checks the identity).
- ``"k"``: ã = ã_k (the adjoint at the step's input, as in the flow-matching reference code and an
  unofficial SD trainer). ã_k = J_k^T ã_{k+1}, J_k = ∂μ_k^base/∂x_k, differs from ã_{k+1} by O(1/N) in the
  continuous limit, but on coarse grids the difference is large (at N = 10 on the synthetic tier
  |ã_k| is 0.47-0.87 of |ã_{k+1}| at intermediate steps), so the reward pull is damped and the effective
  KL weight is up to ≈ 2 ``alpha``: ``"k"`` is NOT on the common beta scale. It is kept for comparison
  with that code; a per-step rescaling of beta could not repair it exactly, since J_k is a matrix.

KL scale: with ``"k+1"`` the loss divided by 2λ is β·Σ_k KL_k minus a term linear in the reward gradient,
so ``alpha`` = 1/λ is the common ``beta`` (reward units per nat of exact path KL;
sqdf_bbo/agents/kl_scale.py): a nat of path KL costs ``alpha`` reward units, exactly as for SQDF at
alpha_SQDF = beta·D/2 and SEIKO at kl_weight = beta·D. (At their defaults SQDF (alpha 1, beta = 2/D) and
SEIKO (kl_weight 1, beta = 1/D) are regularised D/2 and D times more weakly than Adjoint Matching at
alpha 1; compare methods at one beta.)

Defaults: no official image code or hyperparameters are public; alpha = 1 (λ = 1), AdamW lr 1e-3
(AlignProp/SEIKO's lr), wd 1e-4, grad clip 1.0, all steps. Scaled for the synthetic tier: 32 trajectories
per step and 20 steps per round, identical to every other baseline (``baselines._common.BaselineSettings``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from baselines._common import BaselineSettings, check_choice
from sqdf_bbo.agents.kl_scale import resolve_beta
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def lean_adjoint(eps_base, schedule: DDIMSchedule, latents: Tensor, terminal: Tensor,
                 cond: Any = None) -> tuple[Tensor, Tensor]:
    """Lean adjoint along a recorded chain.

    latents: (B, N+1, *shape) states x_0..x_N (detached here); terminal: (B, *shape) ã_N (e.g. -λ∇r(x_N)).
    Returns (adjoints, base_eps): adjoints (B, N+1, *shape) with ã_N = terminal and ã_k = VJP of μ_k^base at
    x_k with ã_{k+1}; base_eps (B, N, *shape) the base model's ε̂(x_k), detached, which the loss reuses.
    """
    B, N1 = latents.shape[:2]
    N = schedule.num_steps
    if N1 != N + 1:
        raise ValueError(f"latents must hold N+1={N + 1} states, got {N1}")
    if terminal.shape != latents[:, -1].shape:
        raise ValueError(f"terminal adjoint shape {tuple(terminal.shape)} != state shape {tuple(latents[:, -1].shape)}")
    adj, eps = [None] * (N + 1), [None] * N
    adj[N] = terminal.detach()
    for k in range(N - 1, -1, -1):
        x = latents[:, k].detach().requires_grad_(True)
        with torch.enable_grad():
            t = schedule.timestep_batch(k, B, x.device)
            e = eps_base(x, t, cond)
            mu = schedule.mean(x, e, k)
            (a,) = torch.autograd.grad(mu, x, grad_outputs=adj[k + 1])
        adj[k], eps[k] = a.detach(), e.detach()
    adjoints = torch.stack(adj, dim=1)
    return adjoints, torch.stack(eps, dim=1)


def adjoint_matching_loss(eps_policy, eps_base, schedule: DDIMSchedule, latents: Tensor, adjoints: Tensor,
                          steps: Optional[Tensor] = None, cond: Any = None, index: str = "k+1",
                          base_eps: Optional[Tensor] = None) -> Tensor:
    """mean_b (N/|S|) Σ_{k∈S} ‖(μ^θ_k - μ^base_k)/s_k + s_k ã‖² with ã = ã_k (index 'k') or ã_{k+1} ('k+1').

    latents, adjoints: (B, N+1, *shape), both treated as constants; steps: (S,) long step indices (None = all);
    base_eps: (B, N, *shape) the base model's ε̂(x_k) already computed (by ``lean_adjoint``),
    used instead of calling ``eps_base`` again.
    """
    check_choice("adjoint_index", index, ("k", "k+1"))
    B = latents.shape[0]
    N = schedule.num_steps
    if steps is None:
        steps = torch.arange(N)
    steps = steps.to(torch.long).cpu()
    if steps.ndim != 1 or len(steps) == 0 or (steps < 0).any() or (steps >= N).any():
        raise ValueError(f"steps must be a non-empty 1-D tensor of indices in [0, {N - 1}], got {steps.tolist()}")
    S = len(steps)
    shape = latents.shape[2:]
    x = latents[:, steps].detach().reshape(B * S, *shape)
    a = adjoints[:, steps + (1 if index == "k+1" else 0)].detach().reshape(B * S, *shape)
    ks = steps.repeat(B)  # row b*S + j has step steps[j]
    t = schedule.timestep_batch(ks, B * S, x.device)
    cond_rep = None
    if cond is not None:
        cond_rep = cond.repeat_interleave(S, dim=0) if isinstance(cond, Tensor) else [c for c in cond for _ in range(S)]
    eps_p = eps_policy(x, t, cond_rep)
    if base_eps is not None:
        eps_b = base_eps[:, steps].detach().reshape(B * S, *shape)
    else:
        with torch.no_grad():
            eps_b = eps_base(x, t, cond_rep)
    s = schedule.step_std(ks, x)
    resid = (schedule.mean(x, eps_p, ks) - schedule.mean(x, eps_b, ks)) / s + s * a
    per_row = resid.pow(2).reshape(B, S, -1).sum(dim=(1, 2))
    return per_row.mean() * (N / S)


class AdjointMatchingAgent(OnlineFinetuneAgent):
    """Adjoint Matching with the memoryless DDPM (η = 1) schedule and the lean adjoint."""

    @dataclass
    class Settings(BaselineSettings):
        lr: float = setting(1e-3, "AdamW learning rate", gt=0)
        alpha: float = setting(1.0, "KL weight per nat of path KL; reward multiplier lambda = 1/alpha", gt=0)
        beta: Optional[float] = setting(None, "common KL scale: reward units per nat of path KL (= alpha)", ge=0)
        am_steps: Optional[int] = setting(None, "distinct steps per update (None = all N steps)", ge=1)
        adjoint_index: str = setting("k+1", "pair the control at x_k with ã_{k+1} (discrete-exact, on the common "
                                     "beta scale) or ã_k (reference code; off the beta scale)", choices=("k", "k+1"))

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if abs(float(c["eta"]) - 1.0) > 1e-12:
            raise ValueError(f"Adjoint Matching needs the memoryless schedule eta=1 during fine-tuning, got eta={c['eta']}")
        resolve_beta(c, overrides, "alpha", lambda b: b, lambda a: a)
        if not float(c["alpha"]) > 0:
            raise ValueError(f"alpha (= beta) must be > 0 (lambda = 1/alpha), got {c['alpha']}")
        if c["am_steps"] is not None and c["am_steps"] > int(c["num_steps"]):
            raise ValueError(f"am_steps must be <= num_steps={c['num_steps']} or None, got {c['am_steps']}")
        return c

    @property
    def lam(self) -> float:
        return 1.0 / self.cfg.alpha

    def terminal_adjoint(self, xN: Tensor) -> tuple[Tensor, Tensor]:
        """ã_N = -λ ∇ r̂⁺(x_N), shape of xN; also returns r̂⁺(x_N) (B,)."""
        x = xN.detach().requires_grad_(True)
        with torch.enable_grad():
            r = self.reward(x)
            (g,) = torch.autograd.grad(r.sum(), x)
        return -self.lam * g.detach(), r.detach()

    def improve(self) -> dict[str, Any]:
        """One Adjoint Matching round: refit r̂⁺; per update, roll out the current
        policy without grad, solve the lean adjoint backwards from ã_N = -λ∇r̂⁺(x_N) under the pretrained
        model, regress the policy's drift onto it, step."""
        c = self.cfg
        B, N = c.train_batch, self.schedule.num_steps
        self.begin_round()
        for _ in self.round_steps():
            traj = self.sample(B, self.generator)
            aN, r = self.terminal_adjoint(traj.final)
            adj, base_eps = lean_adjoint(self.reference_eps, self.schedule, traj.latents, aN, traj.cond)
            steps = None  # all steps, or am_steps of them drawn without replacement
            if c.am_steps is not None:
                steps = torch.randperm(N, generator=self.generator)[: c.am_steps].sort().values
            loss = adjoint_matching_loss(self.policy_eps, self.reference_eps, self.schedule, traj.latents, adj,
                                         steps, traj.cond, c.adjoint_index, base_eps)
            loss.backward()
            self.record_step({"loss": loss.item(), "reward": r.mean().item(), "grad_norm": self.clip_and_step(),
                              "adjoint_norm0": float(adj[:, 0].reshape(B, -1).norm(dim=1).mean())})
        return self.end_round()

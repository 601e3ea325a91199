"""FIND: a learned initial-noise distribution, trained by policy gradient against the optimistic proxy
(after the official FIND code); the pretrained model's transitions are never changed.

The policy is q_φ(u) = N(μ, diag σ²) over the *whitened* initial noise u (D,), mapped to the chain's first
latent by the backbone's own affine map x_0 = m₀ + K u (:func:`initial_affine`: K = I, m₀ = 0 for N(0, I)
noise; the image tier's moment-matched Gaussian N(m₀, K Kᵀ) otherwise). μ = 0, σ = 1 is the pretrained
model. Per optimizer step (``inner_steps`` steps reuse one batch, as the official p_step):

    every inner_steps steps:  u_i ~ q_φ (i = 1..train_batch), x_0 = m₀ + K u_i, run the frozen pretrained
                              chain, r_i = r̂⁺(design_i) (standardised units), log q_old(u_i) = log q_φ(u_i)
    A_i   = r_i − mean_{j≠i} r_j                     (leave-one-out baseline: the official value net
                                                       V(μ, σ) estimates the same E_q[r], unbiased here)
    ρ_i   = q_φ(u_i) / q_old(u_i)        clip_against = sampler (default; PPO-style, min of clipped/unclipped)
    ρ_i   = q_φ(u_i) / N(u_i; 0, I)      clip_against = base    (official: q_old is the base; loss −A·clamp(ρ))
    loss  = −mean_i[A_i ρ_i (clipped)] + beta · KL(q_φ ‖ N(0, I))
    KL    = ½ Σ_d (σ_d² + μ_d² − 1 − log σ_d²)        (nats; the official L2 on (μ, σ − 1) replaced by it)

At ρ = 1 the gradient is that of E_q[r] − beta·KL, so the fixed point is the exact tilt
q*(u) ∝ N(u; 0, I)·exp(E[r | u]/beta); for a reward linear in u, r = c·u, it is N(c/beta, I).

KL to the pretrained model: the transitions are the pretrained ones, so the exact path KL is the KL of the
initial-noise laws, which is invariant under the affine map: ``analytic_path_kl`` = KL(q_φ ‖ N(0, I)) in
closed form (0 before the first proxy exists). On the common KL scale the setting ``beta`` is the method's
own knob (reward units per nat), so the frontier sweeps it. AdamW runs without weight decay (a decay would
pull μ towards 0 and bias the tilt). One process only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from sqdf_bbo.agents.online import OnlineFinetuneAgent, ProxyGuidedAgent
from sqdf_bbo.backbones.base import Backbone
from sqdf_bbo.diffusion import sample_trajectory
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def initial_affine(backbone, schedule) -> tuple[Tensor, Optional[Tensor]]:
    """(m₀ (D,), K (D, D) or None = identity), float64, with backbone.initial_noise = law of m₀ + K u,
    u ~ N(0, I_D). Handles the default N(0, I) noise and the image tier's moment-matched Gaussian
    (``data_moments``: covariance a₀ L Lᵀ + (1 − a₀) I, mean √a₀ m); other initial laws raise ValueError."""
    D = int(math.prod(backbone.latent_shape))
    moments = getattr(backbone, "data_moments", None)
    if moments is not None:
        mean, chol = (t.double().cpu() for t in moments)
        a0 = float(schedule.alpha[0])
        cov = a0 * chol @ chol.T + (1 - a0) * torch.eye(D, dtype=torch.float64)
        return a0 ** 0.5 * mean.reshape(D), torch.linalg.cholesky(cov)
    if type(backbone).initial_noise is not Backbone.initial_noise:
        raise ValueError(f"FIND needs a Gaussian initial noise it can whiten; {type(backbone).__name__} overrides "
                         "initial_noise with an unknown law")
    return torch.zeros(D, dtype=torch.float64), None


def gaussian_kl_to_standard(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − 2 log σ), nats (scalar, differentiable)."""
    return 0.5 * (torch.exp(2 * log_sigma) + mu ** 2 - 1 - 2 * log_sigma).sum()


class InitialNoise(nn.Module):
    """q_φ(u) = N(μ, diag σ²) over the whitened initial noise u (D,); parameters μ, log σ in float64."""

    def __init__(self, dim: int):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """u (n, D) ~ q_φ, no grad."""
        xi = torch.randn((n, self.mu.numel()), generator=generator, dtype=torch.float64)
        return (self.mu + torch.exp(self.log_sigma) * xi).detach()

    def log_prob(self, u: Tensor) -> Tensor:
        """log q_φ(u) (n,), nats, differentiable in μ and log σ."""
        z = (u - self.mu) * torch.exp(-self.log_sigma)
        return (-0.5 * z ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    def kl(self) -> Tensor:
        return gaussian_kl_to_standard(self.mu, self.log_sigma)


def standard_log_prob(u: Tensor) -> Tensor:
    """log N(u; 0, I) (n,)."""
    return (-0.5 * u ** 2 - 0.5 * math.log(2 * math.pi)).sum(dim=1)


def leave_one_out_advantage(r: Tensor) -> Tensor:
    """A_i = r_i − mean_{j≠i} r_j for rewards r (n,), n ≥ 2."""
    n = r.shape[0]
    return r - (r.sum() - r) / (n - 1)


def find_loss(noise: InitialNoise, u: Tensor, r: Tensor, logq_old: Tensor, beta: float, clip: float,
              against: str = "sampler") -> tuple[Tensor, dict[str, float]]:
    """FIND's loss on one batch (module docstring): u (n, D), r (n,) standardised rewards, logq_old (n,)
    log-densities of the distribution that drew u. Returns (loss, statistics)."""
    adv = leave_one_out_advantage(r.double())
    logq = noise.log_prob(u)
    if against == "sampler":
        ratio = torch.exp(logq - logq_old)
        pg = -torch.minimum(adv * ratio, adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    elif against == "base":
        ratio = torch.exp(logq - standard_log_prob(u))
        pg = -(adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    else:
        raise ValueError(f"clip_against must be 'sampler' or 'base', got {against!r}")
    kl = noise.kl()
    loss = pg + beta * kl
    clipped = ((ratio < 1 - clip) | (ratio > 1 + clip)).double().mean()
    return loss, {"pg_loss": float(pg.detach()), "kl": float(kl.detach()), "clip_frac": float(clipped),
                  "reward_mean": float(r.mean())}


class FINDAgent(OnlineFinetuneAgent):
    """Policy-gradient training of the initial-noise distribution; the pretrained transitions are frozen."""

    steers_sampling: ClassVar[bool] = True  # designs come from propose() (the learned noise), KL in closed form

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        beta: float = setting(0.1, "common KL scale: loss = −E[r̂⁺] + beta·KL(q ‖ N(0, I)), reward units per nat",
                              gt=0)
        train_batch: int = setting(32, "trajectories per sampled batch (the leave-one-out baseline needs 2)", ge=2)
        inner_steps: int = setting(5, "optimizer steps on each sampled batch (official p_step 5)", ge=1)
        updates_per_round: int = setting(40, "optimizer steps per round", ge=0)
        lr: float = setting(0.02, "AdamW learning rate on (μ, log σ) (official 1e-3 for 150 steps on SD latents)",
                            gt=0)
        weight_decay: float = setting(0.0, "AdamW weight decay (0: a decay would bias μ towards 0)", ge=0)
        max_grad_norm: float = setting(0.1, "gradient-norm clip (official 0.1)", gt=0)
        ratio_clip: float = setting(0.2, "ε of the ratio clip [1 − ε, 1 + ε] (official 0.2)", gt=0, lt=1)
        clip_against: str = setting("sampler", "ratio against the batch's sampler (PPO-style) or the base N(0, I) "
                                               "(official; stalls once q leaves the trust region)",
                                    choices=("sampler", "base"))

    #: (m₀, K) are rebuilt from the backbone and schedule
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("noise_shift", "noise_factor")

    def __init__(self, task, config=None, seed: int = 0):
        # ProxyGuidedAgent's setup only: the LoRA policy of OnlineFinetuneAgent is not needed (nothing but
        # the noise distribution is trained); the round helpers and the optimizer plumbing are reused
        ProxyGuidedAgent.__init__(self, task, config, seed)
        self.policy = self.reference
        self.global_step = 0
        self.round_progress: Optional[dict] = None
        self.noise_shift, self.noise_factor = initial_affine(self.reference, self.schedule)
        self.noise = InitialNoise(self.noise_shift.numel())
        self.batch: Optional[dict] = None  # the batch the current inner steps reuse: u, r, logq_old

    # ---- the learned initial noise ----------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.noise.parameters())

    def analytic_path_kl(self) -> float:
        """KL(q_φ ‖ N(0, I)) nats: the exact path KL (transitions unchanged); 0 before the first proxy."""
        return 0.0 if not self.optimistic.fitted else float(self.noise.kl().detach())

    def latents_from_noise(self, u: Tensor) -> Tensor:
        """Chain start x_0 (n, *latent_shape) = m₀ + K u for whitened noise u (n, D)."""
        x = u if self.noise_factor is None else u @ self.noise_factor.T
        x = x + self.noise_shift
        param = next(self.reference.parameters())
        return x.reshape(len(u), *self.reference.latent_shape).to(param.dtype).to(param.device)

    @torch.no_grad()
    def designs_from_noise(self, u: Tensor, generator: torch.Generator, cond: Any = None) -> Tensor:
        """Designs (n, *design_shape) of the frozen pretrained chain started at whitened noises u (n, D),
        in ``sample_batch`` chunks; ``cond``: n conditions or None (drawn when the task has them)."""
        n = len(u)
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        bs, out = self.cfg.sample_batch, []
        for i in range(0, n, bs):
            c = None if cond is None else cond[i:i + bs]
            tr = sample_trajectory(self.reference_eps, self.schedule, self.latents_from_noise(u[i:i + bs]),
                                   cond=c, generator=generator)
            out.append(self.reference.decode(tr.final))
        return torch.cat(out)

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        if not self.optimistic.fitted:  # q = the pretrained initial law: the plain pretrained samples
            return self._propose_local(n, generator, cond)
        return self.designs_from_noise(self.noise.sample(n, generator), generator, cond).detach()

    # ---- one round ----------------------------------------------------------------------------------
    def draw_batch(self) -> dict[str, Tensor]:
        """A fresh batch from q_φ: whitened noises u (B, D), proxy rewards r (B,), log q_φ(u) (B,)."""
        self.reference.eval()  # round_steps() put the policy (= the frozen reference) in train mode
        u = self.noise.sample(self.cfg.train_batch, self.generator)
        designs = self.designs_from_noise(u, self.generator)
        with torch.no_grad():
            r = self.reward_of_designs(designs).double().cpu()
            logq = self.noise.log_prob(u).detach()
        return {"u": u, "r": r, "logq_old": logq}

    def improve(self) -> dict[str, float]:
        if self.begin_round():
            self.batch = None
        inner, beta = self.cfg.inner_steps, self.cfg.beta
        for step in self.round_steps():
            if self.batch is None or step % inner == 0:
                self.batch = self.draw_batch()
            b = self.batch
            loss, info = find_loss(self.noise, b["u"], b["r"], b["logq_old"], beta,
                                   self.cfg.ratio_clip, self.cfg.clip_against)
            loss.backward()
            info["grad_norm"] = self.clip_and_step()
            self.record_step(info)
        stats = self.end_round()
        stats["analytic_path_kl"] = self.analytic_path_kl()
        with torch.no_grad():
            stats["sigma_mean"] = float(torch.exp(self.noise.log_sigma).mean())
            stats["mu_norm"] = float(self.noise.mu.norm())
        return stats

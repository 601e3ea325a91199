"""DiffusionNFT (Zheng et al. 2025): negative-aware fine-tuning on the forward process, in the ε-prediction
DDIM form (official NVlabs/DiffusionNFT ``train_nft_sd3.py``).

Two implicit policies from the trained ε_θ and the sampling policy's ε_old, guidance strength β_NFT:
ε⁺ = β ε_θ + (1 - β) ε_old and ε⁻ = (1 + β) ε_old - β ε_θ; the positive one is pulled towards samples the
proxy likes, the negative one towards the rest. Per optimizer step (``updates_per_round`` per round):

    x_0 ~ θ_old (no grad, the harness sampler with the old weights),  A = z-score of r̂⁺(x_0) over the batch
    r = clamp(clip(A, -c, c) / (2c) + 1/2, 0, 1),                     c = ``adv_clip``
    for ⌊``timestep_fraction`` · N⌋ DDIM grid steps k in random order (gradients accumulated, one step):
        ε ~ N(0, I),  x_t = √a_k x_0 + √(1-a_k) ε
        x̂± = (x_t - √(1-a_k) ε±) / √a_k,  w± = stopgrad(mean_d |x̂± - x_0|) ≥ 1e-5    (adaptive weighting)
        ℓ = (c/β) [ r mean_d (x̂⁺ - x_0)² / w⁺ + (1 - r) mean_d (x̂⁻ - x_0)² / w⁻ ] + κ mean_d (ε_θ - ε_ref)²
    AdamW step on θ (LoRA), then θ_old <- δ θ_old + (1 - δ) θ with δ = decay(step):
        type 0: 0;  type 1: min(0.001 step, 0.5) (official default);  type 2: 0 before step 75, then
        min(0.0075 (step - 75), 0.999)

κ (``kl_coef``) is the KL-to-pretrained term the upstream maintainers found necessary against collapse
(official 1e-4). NFT has no exact map onto the common ``beta`` scale: to first order one update's target is
the old policy tilted by exp(A/(c β_NFT)), so β_NFT acts as a KL weight relative to θ_old, not to the
pretrained model. Its frontier knob is β_NFT (``frontier_knob``: 0.1, 1, 10, 100 at the default κ, the learning rate at its
default); the harness measures the path KL of the fine-tuned sampler as for every fine-tuner. The official
run evaluates an EMA(0.9) of θ; here the policy itself is evaluated, as for every method. The old policy is
a full copy of the policy module (LoRA included).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from baselines._common import BaselineSettings
from sqdf_bbo.agents.base import DiffusionAgent
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def nft_weights(rewards: Tensor, clip: float) -> Tensor:
    """Optimality probabilities r in [0, 1] from proxy rewards (B,): batch z-score, clip at ±c, affine map."""
    A = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-4)
    return (A.clamp(-clip, clip) / (2 * clip) + 0.5).clamp(0, 1)


def nft_loss(eps_theta: Tensor, eps_old: Tensor, eps_ref: Tensor, x0: Tensor, x_t: Tensor, a: float, r: Tensor,
             beta: float, clip: float, kappa: float, adaptive: bool = True) -> Tensor:
    """Per-sample DiffusionNFT loss (B,) at one timestep with ᾱ = ``a``; tensors (B, *shape), r (B,)."""
    def x_hat(eps):
        return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def mean_d(v):
        return v.flatten(1).mean(1)

    pos = x_hat(beta * eps_theta + (1 - beta) * eps_old) - x0
    neg = x_hat((1 + beta) * eps_old - beta * eps_theta) - x0
    w_pos = mean_d(pos.abs()).detach().clamp(min=1e-5) if adaptive else torch.ones(len(x0), device=x0.device)
    w_neg = mean_d(neg.abs()).detach().clamp(min=1e-5) if adaptive else torch.ones(len(x0), device=x0.device)
    policy = (clip / beta) * (r * mean_d(pos ** 2) / w_pos + (1 - r) * mean_d(neg ** 2) / w_neg)
    return policy + kappa * mean_d((eps_theta - eps_ref) ** 2)


def old_policy_decay(step: int, kind: int) -> float:
    """δ of θ_old <- δ θ_old + (1 - δ) θ after optimizer step ``step`` (official decay types 0, 1, 2)."""
    if kind == 0:
        return 0.0
    if kind == 1:
        return min(0.001 * step, 0.5)
    if kind == 2:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    raise ValueError(f"decay_type must be 0, 1 or 2, got {kind!r}")


class DiffusionNFTAgent(OnlineFinetuneAgent):
    """Forward-process fine-tuning with implicit positive/negative policies; see the module docstring."""

    #: the frontier sweeps β_NFT (benchmarks/frontier.py, THE GRID RULE)
    frontier_knob = ("nft_beta", (0.1, 1.0, 10.0, 100.0))

    @dataclass
    class Settings(BaselineSettings):
        nft_beta: float = setting(1.0, "β_NFT: guidance strength of the implicit policies (official 1.0)", gt=0)
        kl_coef: float = setting(1e-4, "κ: weight of mean_d(ε_θ - ε_ref)², the KL-to-pretrained term", ge=0)
        adv_clip: float = setting(5.0, "c: advantage clip (adv_clip_max)", gt=0)
        timestep_fraction: float = setting(0.99, "fraction of the DDIM grid used per sample", gt=0, le=1)
        decay_type: int = setting(1, "θ_old update: 0 on-policy, 1 min(0.001 step, 0.5), 2 delayed", choices=(0, 1, 2))
        adaptive_weighting: bool = setting(True, "divide by stopgrad(mean |x̂± - x_0|) (official)")
        lr: float = setting(3e-4, "AdamW learning rate (official 3e-4)", gt=0)

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.old = copy.deepcopy(self.policy).eval().requires_grad_(False)

    def old_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.old(x, t, cond)

    def improve(self) -> dict[str, Any]:
        """One DiffusionNFT round: refit r̂⁺; per update, sample clean x_0 from the old
        policy, weight them by r̂⁺, take the negative-aware denoising loss (plus the KL to the pretrained
        model) at a fraction of the timesteps, step, then move the old policy towards the new one."""
        c = self.cfg
        sched, N, B = self.schedule, self.schedule.num_steps, c.train_batch
        n_k = max(1, int(c.timestep_fraction * N))
        self.begin_round()
        for _ in self.round_steps():
            with torch.no_grad():
                traj = DiffusionAgent.sample(self, B, self.generator, eps_fn=self.old_eps)
                x0, cond = traj.final.detach(), traj.cond
                r = nft_weights(self.reward(x0).double(), c.adv_clip).to(x0.dtype)
            ks = torch.randperm(N, generator=self.generator)[:n_k].tolist()
            total = 0.0
            for k in ks:
                t = sched.timestep_batch(k, B, x0.device)
                a = float(sched.alpha[k])
                eps = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype).to(x0.device)
                x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
                with torch.no_grad():
                    e_old, e_ref = self.old_eps(x_t, t, cond), self.reference_eps(x_t, t, cond)
                loss = nft_loss(self.policy_eps(x_t, t, cond), e_old, e_ref, x0, x_t, a, r, c.nft_beta,
                                c.adv_clip, c.kl_coef, c.adaptive_weighting).mean()
                (loss / len(ks)).backward()
                total += loss.item() / len(ks)
            grad_norm = self.clip_and_step()
            delta = old_policy_decay(self.global_step, c.decay_type)
            with torch.no_grad():  # old ← δ·old + (1-δ)·policy
                for p_old, p in zip(self.old.parameters(), self.policy.parameters()):
                    p_old.mul_(delta).add_(p.detach(), alpha=1 - delta)
            self.record_step({"loss": total, "grad_norm": grad_norm, "old_decay": delta, "r_mean": float(r.mean())})
        return self.end_round()

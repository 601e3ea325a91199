"""SEIKO (Uehara, Zhao et al. 2024) on the online harness (after the paper and its official code).

The outer loop (fresh queries per round, refit of the optimistic proxy: ``proxy=bootstrap`` = max over
heads or ``proxy=ucb`` = feature-covariance bonus, both in ``sqdf_bbo.proxy``) is the shared
:class:`OnlineFinetuneAgent`. Per round the policy p^(i) maximises E_p[r̂⁺(x_N)] - β·KL(p‖p^(i-1)) by
reward backprop through the DDIM chain (η = 1, fixed noises, every model call checkpointed):

    loss = -mean_b r̂⁺(x_N) + kl_weight · Σ_k mean_b KL_k,   KL_k = mean_elements (μ_k^θ - μ_k^ref)² / (2 s_k²)

with both models evaluated on the same x_k (gradient flows through x_k along the chain and through μ^θ in
the KL). The KL reference is the **previous round's** model (``kl_reference="previous"``, SEIKO's
``current_unet``; a frozen copy taken at the start of each round, so round 1 uses the pretrained model);
``kl_reference="pretrained"`` uses p_pre instead (SQDF's choice). Truncation as in SEIKO's code: at every
step k draw u ~ randint[0, N] and detach both models' ε̂ if k < u (per-step redraw shared by the batch);
``truncation="none"`` gives full backprop.

KL scale: SEIKO's KL is a per-element mean, so ``kl_weight`` weighs a nat of path KL at kl_weight/D
(D = latent elements); the common ``beta`` (reward units per nat, sqdf_bbo/agents/kl_scale.py) sets
kl_weight = beta·D. With ``kl_reference="previous"`` each round's KL is to the previous round's model, so
over R rounds the regularisation towards p_pre compounds to roughly beta/R (exact for "pretrained").

Defaults: SEIKO ``config/*.py:aesthetic()``: AdamW lr 1e-3, wd 0.1, grad clip 5.0; official loss
0.01·|r̂⁺ - 10| + 0.01·kl, i.e. (up to the common factor 0.01 that Adam ignores, and |r - 10| = 10 - r while
r < 10) kl_weight = 1 relative to -r̂⁺; we keep 1 with r̂⁺ in standardised units and SEIKO's per-element-mean
KL. Scaled for the synthetic tier: 32 trajectories per step (official 64) and 20 steps per round (official
5 epochs x 2), the same ``train_batch``/``updates_per_round`` as every other baseline
(``baselines._common.BaselineSettings``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.utils.checkpoint

from baselines._common import (CHECKPOINT_DOC, BaselineSettings, Checkpointing, uses_checkpointing, draw_noise,
    truncated_chain)
from sqdf_bbo.agents.kl_scale import latent_elements, resolve_beta
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.diffusion import gaussian_kl
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def seiko_step_kl(mu_theta: Tensor, mu_ref: Tensor, std: Tensor) -> Tensor:
    """SEIKO's per-step KL, per sample (B,): mean over elements of (μ^θ - μ^ref)² / (2 s²)."""
    return gaussian_kl(mu_theta, mu_ref, std, reduction="mean")


def per_step_truncation_mask(batch: int, num_steps: int, generator: torch.Generator) -> Tensor:
    """(B, N) bool: step k carries gradient iff k >= u_k, u_k ~ randint[0, N] drawn once per step."""
    u = torch.randint(0, num_steps + 1, (num_steps,), generator=generator)
    live = torch.arange(num_steps) >= u
    return live[None, :].expand(batch, num_steps).clone()


class SEIKOAgent(OnlineFinetuneAgent):
    """Reward backprop with a per-step KL to the previous round's model (or the pretrained one)."""

    @dataclass
    class Settings(BaselineSettings):
        lr: float = setting(1e-3, "AdamW learning rate (SEIKO aesthetic())", gt=0)
        weight_decay: float = setting(0.1, "AdamW weight decay", ge=0)
        max_grad_norm: float = setting(5.0, "global gradient-norm clip", gt=0)
        kl_weight: float = setting(1.0, "native KL weight on Σ_k mean_d KL_k (see beta)", ge=0)
        beta: Optional[float] = setting(None, "common KL scale: reward units per nat of path KL; kl_weight = beta·D", ge=0)
        kl_reference: str = setting("previous", "KL to the previous round's model (SEIKO) or the pretrained one",
                                    choices=("previous", "pretrained"))
        truncation: str = setting("per_step", "per-step random gradient truncation (SEIKO code) or full backprop",
                                  choices=("per_step", "none"))
        checkpoint: Checkpointing = setting("auto", CHECKPOINT_DOC)

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        D = latent_elements(task)
        return resolve_beta(c, overrides, "kl_weight", lambda b: b * D, lambda w: w / D)

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.kl_model = self.reference

    def frozen_kl_reference(self) -> torch.nn.Module:
        """This round's KL reference: a frozen copy of the policy p^(i-1), or the pretrained model."""
        if self.cfg.kl_reference == "previous":
            return copy.deepcopy(self.policy).requires_grad_(False).eval()
        return self.reference

    def kl_ref_eps(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        return self.kl_model(x, t, cond)

    def chain_with_kl(self, x0: Tensor, noises: Tensor, cond=None, mask=None) -> tuple[Tensor, Tensor]:
        """Differentiable chain and SEIKO's KL: returns x_N (B, *shape) and kl = Σ_k mean_b KL_k (scalar)."""
        sched = self.schedule
        ckpt = uses_checkpointing(self)
        kls = []

        def hook(k, x, t, eps, live):
            if bool(live.any()) and ckpt:
                eps_ref = torch.utils.checkpoint.checkpoint(self.kl_ref_eps, x, t, cond, use_reentrant=False)
            elif bool(live.any()):
                eps_ref = self.kl_ref_eps(x, t, cond)
            else:
                with torch.no_grad():
                    eps_ref = self.kl_ref_eps(x, t, cond)
            if not bool(live.all()):
                m = live.reshape(-1, *([1] * (eps_ref.ndim - 1)))
                eps_ref = torch.where(m, eps_ref, eps_ref.detach())
            kls.append(seiko_step_kl(sched.mean(x, eps, k), sched.mean(x, eps_ref, k), sched.step_std(k, x)).mean())

        xN = truncated_chain(self.policy_eps, sched, x0, noises, cond, checkpoint=ckpt, mask=mask, step_hook=hook)
        return xN, torch.stack(kls).sum()

    def seiko_loss(self, x0: Tensor, noises: Tensor, cond=None, mask=None) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, r̂⁺(x_N) (B,), kl): loss = -mean_b r̂⁺(x_N) + kl_weight · Σ_k mean_b mean_d KL_k."""
        xN, kl = self.chain_with_kl(x0, noises, cond, mask)
        r = self.reward(xN)
        return -r.mean() + self.cfg.kl_weight * kl, r, kl

    def improve(self) -> dict[str, Any]:
        """One SEIKO round: refit r̂⁺; freeze this round's KL reference; per update,
        run the chain with gradient, loss = -r̂⁺(x_N) + kl_weight · Σ_k KL_k, step."""
        B = self.cfg.train_batch
        if self.begin_round():
            self.kl_model = self.frozen_kl_reference()
        for _ in self.round_steps():
            x0, noises, cond = draw_noise(self, B)
            mask = None
            if self.cfg.truncation == "per_step":
                mask = per_step_truncation_mask(B, self.schedule.num_steps, self.generator)
            loss, r, kl = self.seiko_loss(x0, noises, cond, mask)
            if loss.requires_grad:  # the per-step redraw can detach every step (prob. prod_k (N-k)/(N+1)); then no update
                loss.backward()
            self.record_step({"loss": loss.item(), "reward": r.mean().item(), "kl": kl.item(),
                              "grad_norm": self.clip_and_step()})
        return self.end_round()

"""RAFT: reward-ranked fine-tuning (Dong et al. 2023), the "fine-tune on the proxy's best samples" peer
(official OptimalScale/LMFlow, notebook experimental/RAFT-diffusion).

Per round, after the proxy refit (r̂⁺ in standardised units), a new AdamW and ``iterations`` times:

    sample B = ``samples_per_iteration`` designs from the current policy (no grad, the harness sampler)
    select  global: the top ⌊ρ B⌋ by r̂⁺ (ρ = ``keep_fraction``)
            local:  the best of each group of K = round(1/ρ) consecutive samples
    U = ``updates_per_round`` / ``iterations`` steps on the selected clean latents x_0 (mini-batches of
    ``train_batch``):
        t ~ U{0..T-1},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε
        L = mean ‖ε_θ(x_t, t, c) - ε‖²        (plain denoising MSE, the pretraining loss; LoRA, AdamW, clip)

The selected latents are used directly (no image round trip). Global ranking is the default on the
unconditional tiers; with prompts, ``local`` ranks within the K samples of one prompt slot.

KL: with an exact fit, global selection maps π to π restricted to its top-ρ set, log(1/ρ) nats per
iteration (local: log K - (K-1)/K); the fit is not exact, so the harness measures the path KL of the
fine-tuned sampler as for every fine-tuner. RAFT's loss has no reward-unit term, so it has no ``beta``:
its knob on the frontier is ρ (``frontier_knob``: 0.03, 0.1, 0.25, 0.5, i.e. 3.5 to 0.69 nats per exact
iteration; the learning rate stays at its default). An optional κ‖ε_θ - ε_ref‖² penalty would not be on
the common scale either and is not implemented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from baselines._common import BaselineSettings
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def raft_select(scores: Tensor, keep_fraction: float, mode: str = "global") -> Tensor:
    """Indices of the kept samples: the top ⌊ρ B⌋ (global) or each group of K = round(1/ρ)'s argmax (local;
    a trailing partial group is dropped). scores (B,) -> (n_kept,) long."""
    B = scores.shape[0]
    if mode == "global":
        return torch.topk(scores, max(1, int(math.floor(keep_fraction * B + 1e-9)))).indices
    if mode == "local":
        K = max(1, round(1 / keep_fraction))
        groups = B // K
        if groups == 0:
            raise ValueError(f"local selection needs at least K = {K} samples, got {B}")
        return torch.arange(groups) * K + scores[:groups * K].reshape(groups, K).argmax(dim=1)
    raise ValueError(f"mode must be 'global' or 'local', got {mode!r}")


def denoising_loss(eps_fn, x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor, cond: Any = None) -> Tensor:
    """mean ‖ε_θ(√ᾱ_t x0 + √(1-ᾱ_t) ε, t) - ε‖² over batch and elements (the DDPM pretraining loss)."""
    a = alphas_cumprod.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.ndim - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return torch.mean((eps_fn(x_t, t, cond) - noise) ** 2)


class RAFTAgent(OnlineFinetuneAgent):
    """Fine-tunes the policy with the denoising loss on its own proxy-best samples."""

    #: the frontier sweeps the kept fraction ρ (benchmarks/frontier.py, THE GRID RULE)
    frontier_knob = ("keep_fraction", (0.03, 0.1, 0.25, 0.5))

    @dataclass
    class Settings(BaselineSettings):
        keep_fraction: float = setting(0.2, "ρ: fraction of the samples kept (LMFlow default 0.2)", gt=0, le=1)
        selection: str = setting("global", "global: top ρB; local: best of each group of 1/ρ",
                                 choices=("global", "local"))
        samples_per_iteration: int = setting(160, "B: policy samples ranked per iteration", ge=1)
        iterations: int = setting(1, "sample-select-train iterations per round (updates_per_round split evenly)",
                                  ge=1)
        lr: float = setting(1e-3, "AdamW learning rate", gt=0)
        weight_decay: float = setting(1e-2, "AdamW weight decay (train_text_to_image_lora.py)", ge=0)

    def improve(self) -> dict[str, Any]:
        stats: dict[str, Any] = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.optimizer = self.make_optimizer()
        acp = self.policy.scheduler.alphas_cumprod
        T = int(self.policy.scheduler.config.num_train_timesteps)
        rho, bs = self.cfg.keep_fraction, self.cfg.train_batch
        losses, kept_reward, all_reward = [], [], []
        I, U = self.cfg.iterations, self.cfg.updates_per_round
        for it in range(I):
            # 1. sample from the current policy
            self.policy.eval()
            trajs = self.sample_batched(self.cfg.samples_per_iteration, self.generator)
            z = torch.cat([tr.final for tr in trajs]).detach()
            conds = [c for tr in trajs for c in tr.cond] if trajs[0].cond is not None else None
            # 2. select by the optimistic proxy
            with torch.no_grad():
                r = torch.cat([self.reward(z[i:i + bs]) for i in range(0, len(z), bs)]).detach().cpu()
            keep = raft_select(r, rho, self.cfg.selection)
            x0 = z[keep.to(z.device)]
            cond = None if conds is None else [conds[i] for i in keep.tolist()]
            kept_reward.append(float(r[keep].mean()))
            all_reward.append(float(r.mean()))
            # 3. denoising-loss steps on the kept samples
            self.policy.train()
            for _ in range(U // I + (it < U % I)):
                idx = torch.randint(len(x0), (min(bs, len(x0)),), generator=self.generator)
                t = torch.randint(0, T, (len(idx),), generator=self.generator).to(x0.device)
                noise = torch.randn(x0[idx].shape, generator=self.generator, dtype=x0.dtype).to(x0.device)
                c = None if cond is None else [cond[i] for i in idx.tolist()]
                loss = denoising_loss(self.policy_eps, x0[idx], t, noise, acp, c)
                loss.backward()
                stats["grad_norm"] = self.clip_and_step()
                losses.append(loss.item())
        self.policy.eval()
        self.round += 1
        stats.update(denoise_loss=sum(losses) / max(1, len(losses)), kept_proxy_reward=sum(kept_reward) / len(kept_reward),
                     sampled_proxy_reward=sum(all_reward) / len(all_reward))
        return stats

"""The one interface every diffusion backbone implements (vector MLP, pixel UNet, Stable Diffusion).

A backbone is an epsilon-prediction denoiser plus a decoder from latent space to design space:

    eps = backbone(x_t, t, cond)      x_t: (B, *latent_shape), t: (B,) long DDIM/DDPM timesteps
    designs = backbone.decode(z)      z: (B, *latent_shape) -> (B, *design_shape), differentiable

``scheduler`` is the diffusers ``DDIMScheduler`` the model was trained with (clip_sample=False,
set_alpha_to_one=False, steps_offset=1, so every step of the sampler has a positive std).
Conditions are opaque to agents: they come from ``TaskInfo.sample_conditions`` (None for
unconditional tiers) and are passed through unchanged.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import DDIMScheduler
from torch import nn


def default_scheduler(beta_schedule: str = "squaredcos_cap_v2", **kw) -> DDIMScheduler:
    """A DDIM scheduler safe for the denoising-MDP math: no clipping, last step std > 0."""
    cfg = dict(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=False,
               set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    cfg.update(kw)
    return DDIMScheduler(**cfg)


class Backbone(nn.Module):
    """Abstract epsilon-prediction denoiser with a differentiable decoder."""

    latent_shape: tuple[int, ...] = ()
    scheduler: DDIMScheduler

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:  # noqa: D401
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, *latent_shape) -> design (B, *design_shape). Identity by default."""
        return z

    def initial_noise(self, n: int, generator: torch.Generator, schedule: Any) -> torch.Tensor:
        """x_0 of the sampling chain on ``schedule`` (a DDIMSchedule), (n, *latent_shape): N(0, I) by default.
        Every sampler (agents, the harness, the peers) draws it here, so they share one initial distribution."""
        param = next(self.parameters())
        return torch.randn((n, *self.latent_shape), generator=generator, dtype=param.dtype).to(param.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Design -> latent (inverse of decode), used for pretraining. Identity by default."""
        return x

    def lora_targets(self) -> Optional[list[str]]:
        """Module names peft's LoRA should wrap, or None if the backbone is fine-tuned in full."""
        return None

    def add_lora(self, rank: int) -> None:
        """Wrap ``lora_targets()`` with peft LoRA (alpha = rank, Gaussian A, zero B so the output is
        unchanged); afterwards only the LoRA weights require grad."""
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=self.lora_targets(),
                         init_lora_weights="gaussian")
        inject_adapter_in_model(cfg, self)
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name)

"""The one interface every diffusion backbone implements (vector MLP, pixel UNet, Stable Diffusion).

A backbone is an epsilon-prediction denoiser plus a decoder from latent space to design space:

    eps = backbone(x_t, t, cond)      x_t: (B, *latent_shape), t: (B,) long DDIM/DDPM timesteps
    designs = backbone.decode(z)      z: (B, *latent_shape) -> (B, *design_shape), differentiable

``scheduler`` is the noise schedule the model was trained with: for the embedded backbones a
:class:`sqdf_bbo.diffusion.scheduler.NoiseScheduler` (diffusers' ``DDIMScheduler`` numbers without importing
diffusers; clip_sample=False, set_alpha_to_one=False, steps_offset=1, so every step of the sampler has a
positive std), for Stable Diffusion diffusers' own scheduler.
Conditions are opaque to agents: they come from ``TaskInfo.sample_conditions`` (None for
unconditional tiers) and are passed through unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from sqdf_bbo.diffusion.scheduler import NoiseScheduler


def default_scheduler(beta_schedule: str = "squaredcos_cap_v2", **kw) -> NoiseScheduler:
    """A DDIM noise schedule safe for the denoising-MDP math: no clipping, last step std > 0 (diffusers'
    ``DDIMScheduler`` numbers, computed without importing diffusers: sqdf_bbo/diffusion/scheduler.py)."""
    from sqdf_bbo.diffusion.scheduler import NoiseScheduler

    cfg = dict(num_train_timesteps=1000, beta_schedule=beta_schedule, clip_sample=False,
               set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    cfg.update(kw)
    return NoiseScheduler(**cfg)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo). Without
    them PyTorch emulates bf16 and autocast is slower than fp32 (measured on an AVX-512 Xeon without BF16:
    1024² GEMM 29 GFLOP/s in bf16 against 120 in fp32; the 16×16 UNet's forward 2.3× slower)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype_for(precision: str) -> Optional[torch.dtype]:
    """``run.precision`` -> the autocast dtype of the backbones' forward pass (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        native = (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) or cpu_has_native_bf16()
        return torch.bfloat16 if native else None
    raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")


def with_execution_options(make_backbone, compute_dtype: Optional[torch.dtype] = None,
                           channels_last: bool = False):
    """A backbone factory whose backbones compute their forward pass under autocast to ``compute_dtype``
    (None: in the input's dtype) and, if ``channels_last``, convolutional ones in the NHWC memory format
    (``run.precision`` and ``run.channels_last``)."""
    def make():
        backbone = make_backbone()
        backbone.compute_dtype = compute_dtype
        if channels_last:
            backbone.use_channels_last()
        return backbone
    return make


class Backbone(nn.Module):
    """Abstract epsilon-prediction denoiser with a differentiable decoder.

    ``compute_dtype`` (set by ``run.precision``): when not None, the forward pass runs under
    ``torch.autocast`` to that dtype and its output is cast back to the input's dtype. (Stable Diffusion's
    policy and reference views have their own switch, ``task.autocast``.)"""

    latent_shape: tuple[int, ...] = ()
    scheduler: Any
    compute_dtype: Optional[torch.dtype] = None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.compute_dtype is None:
            return super().__call__(*args, **kwargs)
        x_t = args[0] if args else kwargs["x_t"]
        with torch.autocast(device_type=x_t.device.type, dtype=self.compute_dtype):
            eps = super().__call__(*args, **kwargs)
        return eps.to(x_t.dtype)

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

    def use_channels_last(self) -> None:
        """Compute in channels_last memory format where that helps (``run.channels_last``); a no-op here."""

    def lora_targets(self) -> Optional[list[str]]:
        """Module names peft's LoRA should wrap, or None if the backbone is fine-tuned in full."""
        return None

    def add_lora(self, rank: int) -> None:
        """Wrap ``lora_targets()`` with peft LoRA (alpha = rank, Gaussian A, zero B so the output is
        unchanged); afterwards only the LoRA weights require grad. The wrapped layers run peft's arithmetic
        through a lean forward (sqdf_bbo/backbones/lora.py: same result, less per-layer Python)."""
        from peft import LoraConfig, inject_adapter_in_model

        from sqdf_bbo.backbones.lora import use_lean_forward

        cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=self.lora_targets(),
                         init_lora_weights="gaussian")
        inject_adapter_in_model(cfg, self)
        use_lean_forward(self)
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name)

"""Vector backbone: an MLP epsilon-prediction denoiser with a sinusoidal timestep embedding.

Latents live in the task's normalised design space u in roughly [-1, 1]^d; ``decode`` maps them
affinely to the task's bounds (x = lo + (u + 1)/2 (hi - lo)), differentiably and without clipping.
Pretrained by :func:`sqdf_bbo.pretrain.vector.pretrain_mlp` on exact samples of the task's prior (infinite
data, DDPM loss);
weights live in ``sqdf_bbo/backbones/weights/mlp_<prior>.safetensors`` with a JSON record of the
command, seed, steps, final loss, wall time and sha256.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from sqdf_bbo.backbones.base import Backbone, default_scheduler

WEIGHTS_DIR = Path(__file__).parent / "weights"


class SinusoidalTimesteps(nn.Module):
    """t (B,) -> (B, num_channels) sinusoidal embedding, cosines first: [cos(t ω_i), sin(t ω_i)] with
    ω_i = 10000^(−i/half), i < half = num_channels // 2. The arithmetic (float32, in this order) of diffusers'
    ``Timesteps(num_channels, flip_sin_to_cos=True, downscale_freq_shift=0)``, which the committed weights
    were trained with, written here so the vector tier does not import diffusers (start-up cost)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
        exponent = exponent / half
        emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
        if self.num_channels % 2 == 1:
            emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
        return emb


class TimestepMLP(nn.Module):
    """(B, in) -> (B, out): linear_1, SiLU, linear_2 (diffusers' ``TimestepEmbedding`` layout and names, so
    the state-dict keys of the committed weights and the LoRA targets stay ``time_embed.linear_1`` / ``_2``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, out_channels)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_channels, out_channels)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.lin2(self.act(self.lin1(self.act(self.norm(h))) + temb))


class MLPDenoiser(Backbone):
    """eps_theta(u_t, t): (B, d), (B,) long -> (B, d). ``lo``/``hi``: (d,) design bounds."""

    def __init__(self, dim: int, lo: torch.Tensor, hi: torch.Tensor, width: int = 256, depth: int = 4,
                 temb_dim: int = 64):
        super().__init__()
        self.latent_shape = (dim,)
        self.arch = dict(dim=dim, width=width, depth=depth, temb_dim=temb_dim)
        self.scheduler = default_scheduler("squaredcos_cap_v2")
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32).clone())
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32).clone())
        self.time_proj = SinusoidalTimesteps(temb_dim)
        self.time_embed = TimestepMLP(temb_dim, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([ResidualBlock(width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.repeat(x_t.shape[0])
        temb = self.time_embed(self.time_proj(t).to(x_t.dtype))
        h = self.inp(x_t)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo.to(z.dtype), self.hi.to(z.dtype)
        return lo + (z + 1) / 2 * (hi - lo)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lo.to(x.dtype), self.hi.to(x.dtype)
        return 2 * (x - lo) / (hi - lo) - 1

    def lora_targets(self) -> list[str]:
        return ["inp", "lin1", "lin2", "out", "time_embed.linear_1", "time_embed.linear_2"]

    def add_lora(self, rank: int) -> None:
        """Wrap ``lora_targets()`` with the hand-written LoRA of sqdf_bbo/backbones/lora.py (alpha = rank,
        Gaussian A, zero B: the output is unchanged; peft's layout, arithmetic and init draws, without peft);
        afterwards only the LoRA weights require grad."""
        from sqdf_bbo.backbones.lora import add_lora

        add_lora(self, self.lora_targets(), r=rank, lora_alpha=rank, init_lora_weights="gaussian")
        for name, p in self.named_parameters():
            p.requires_grad_("lora_" in name)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def weights_path(prior_name: str) -> Path:
    return WEIGHTS_DIR / f"mlp_{prior_name}.safetensors"


def load_mlp(prior_name: str, lo: torch.Tensor, hi: torch.Tensor) -> MLPDenoiser:
    """Load the committed pretrained MLP for a prior; verifies the recorded sha256."""
    path = weights_path(prior_name)
    meta_path = path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(
            f"no pretrained weights at {path}; create them with "
            f"`python -m sqdf_bbo.pretrain vector --prior {prior_name}`"
        )
    meta = json.loads(meta_path.read_text())
    digest = sha256_file(path)
    if digest != meta["sha256"]:
        raise RuntimeError(f"checksum mismatch for {path}: {digest} != recorded {meta['sha256']}")
    model = MLPDenoiser(lo=lo, hi=hi, **meta["arch"])
    model.load_state_dict(load_file(str(path)), strict=False)  # lo/hi come from the task, not the file
    missing = set(model.state_dict()) - set(load_file(str(path))) - {"lo", "hi"}
    if missing:
        raise RuntimeError(f"weights at {path} lack {sorted(missing)}")
    return model.requires_grad_(False).eval()

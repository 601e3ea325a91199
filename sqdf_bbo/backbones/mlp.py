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
from pathlib import Path
from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import load_file
from torch import nn

from sqdf_bbo.backbones.base import Backbone, default_scheduler

WEIGHTS_DIR = Path(__file__).parent / "weights"


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
        self.time_proj = Timesteps(temb_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(temb_dim, width)
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

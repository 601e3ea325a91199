"""Tiny pixel-space diffusion backbone for the embedded image tier (pretraining: sqdf_bbo/pretrain/image.py).

``PixelUNet`` wraps a ``diffusers.UNet2DModel`` (config C of the embedded tier's design: blocks (32, 64, 64),
one layer per block, no attention, GroupNorm 8; ~1.06 M parameters) as an epsilon-prediction
:class:`~sqdf_bbo.backbones.base.Backbone`:

    latent z  : (B, 3, S, S) image in [-1, 1] (pixel space, no autoencoder)
    decode(z) : (B, 3, S, S) image in [0, 1] = clamp((z + 1) / 2)

Pretraining (``python -m sqdf_bbo.pretrain image --size 16 ...``, :mod:`sqdf_bbo.pretrain.image`): DDPM eps-MSE on natural patches
(:func:`sqdf_bbo.data.build_patches`), cosine schedule (``default_scheduler``), AdamW, EMA; the EMA
weights are written as safetensors + ``.sha256`` + a JSON with the UNet config, command, wall time
and final loss to ``sqdf_bbo/backbones/weights/``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from sqdf_bbo.backbones.base import Backbone, default_scheduler
from sqdf_bbo.data.checksum import verify_checksum

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "unet16"


def unet_config(size: int = 16) -> dict:
    """UNet2DModel kwargs of config C at resolution ``size`` (divisible by 4)."""
    if size % 4 or size < 8:
        raise ValueError(f"size must be a multiple of 4 and >= 8, got {size}")
    return dict(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=[32, 64, 64], down_block_types=["DownBlock2D"] * 3,
        up_block_types=["UpBlock2D"] * 3, norm_num_groups=8,
    )


class PixelUNet(Backbone):
    """eps = forward(x_t (B,3,S,S), t (B,) long); decode maps [-1,1] latents to [0,1] images."""

    def __init__(self, unet: UNet2DModel, scheduler=None):
        super().__init__()
        self.unet = unet
        size = int(unet.config.sample_size)
        self.latent_shape = (int(unet.config.in_channels), size, size)
        self.scheduler = scheduler if scheduler is not None else default_scheduler()

    #: whether the UNet computes in channels_last (NHWC) layout (``run.channels_last``); inputs and outputs
    #: stay in the standard layout
    channels_last: bool = False

    def use_channels_last(self) -> None:
        """Convolution weights and activations in channels_last: the same function up to float rounding,
        14 % faster forward and 27 % faster forward + backward on a 2-core CPU (benchmarks/perf_unet.py)."""
        self.unet.to(memory_format=torch.channels_last)
        self.channels_last = True

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if self.channels_last:
            return self.unet(x_t.contiguous(memory_format=torch.channels_last), t).sample.contiguous()
        return self.unet(x_t, t).sample

    #: (mean (D,), Cholesky factor (D, D)) of the training images in latent units, float64, or None; set by
    #: :func:`load_pretrained_unet`. With them, :meth:`initial_noise` matches the forward marginal.
    data_moments: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def initial_noise(self, n: int, generator: torch.Generator, schedule: Any) -> torch.Tensor:
        """x_0 of the chain: a Gaussian with the first two moments of the forward marginal q(x_tau0) at the
        schedule's first timestep, sqrt(a0) (m + L z1) + sqrt(1 - a0) z2 (m, L L^T: mean and covariance of
        the training images). DDIM's first timestep is not pure noise (a0 = 0.0056 at tau0 = 951 with 20
        steps), and starting from N(0, I) there gave over-saturated samples: phi-FD 173 vs 82 (256 samples,
        docs/tasks/image.md). Without ``data_moments``: N(0, I)."""
        if self.data_moments is None:
            return super().initial_noise(n, generator, schedule)
        mean, chol = self.data_moments
        a0 = float(schedule.alpha[0])
        z1 = torch.randn((n, mean.numel()), generator=generator, dtype=torch.float64)
        z2 = torch.randn((n, mean.numel()), generator=generator, dtype=torch.float64)
        x = a0 ** 0.5 * (mean + z1 @ chol.T) + (1 - a0) ** 0.5 * z2
        param = next(self.parameters())
        return x.reshape(n, *self.latent_shape).to(param.dtype).to(param.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) latent in [-1,1] -> image in [0,1] (clamped; gradient 0 outside)."""
        return ((z + 1) * 0.5).clamp(0, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) image in [0,1] -> latent in [-1,1]."""
        return x * 2 - 1

    def lora_targets(self) -> list[str]:
        """ResNet convolutions and time projections (config C has no attention)."""
        return ["conv1", "conv2", "time_emb_proj"]

    @torch.no_grad()
    def denoising_loss(self, z: torch.Tensor, n_t: int = 10, seed: int = 0) -> torch.Tensor:
        """Per-sample eps-MSE, (B,), averaged over ``n_t`` evenly spaced timesteps with fixed noise.

        A Monte Carlo proxy of the (negative) ELBO up to weighting: lower = more typical under the model.
        """
        g = torch.Generator().manual_seed(seed)
        T = self.scheduler.config.num_train_timesteps
        ts = torch.linspace(T / (2 * n_t), T - T / (2 * n_t), n_t).long()
        acp = self.scheduler.alphas_cumprod.to(z.dtype)
        out = torch.zeros(z.shape[0], dtype=torch.float64)
        for t in ts:
            eps = torch.randn(z.shape, generator=g, dtype=z.dtype)
            a = acp[t]
            x_t = a.sqrt() * z + (1 - a).sqrt() * eps
            pred = self(x_t, t.repeat(z.shape[0]))
            out += ((pred - eps) ** 2).flatten(1).mean(1).double()
        return out / n_t


@functools.lru_cache(maxsize=4)
def training_moments(size: int, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), Cholesky factor (D, D)) of n train patches in latent units [-1, 1], float64 (1e-6 jitter);
    deterministic in (size, n, seed), about a second."""
    from sqdf_bbo.data import build_patches

    x = (build_patches(n, size, "train", seed=seed) * 2 - 1).flatten(1).double()
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=torch.float64)
    return x.mean(0), torch.linalg.cholesky(cov)


def _paths(name: str, weights_dir: Path) -> tuple[Path, Path]:
    return weights_dir / f"{name}.safetensors", weights_dir / f"{name}.json"


def load_pretrained_unet(name: str = DEFAULT_NAME, weights_dir: Optional[str | Path] = None,
                         frozen: bool = True) -> PixelUNet:
    """The committed pretrained PixelUNet ``name`` (sha256-verified), frozen and in eval mode."""
    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    st, js = _paths(name, weights_dir)
    if not js.exists():
        have = sorted(p.stem for p in weights_dir.glob("unet*.json"))
        raise FileNotFoundError(f"no pretrained UNet {name!r} in {weights_dir}; available: {have or 'none'}"
                                f" (build with `python -m sqdf_bbo.pretrain image`)")
    verify_checksum(st)
    meta = json.loads(js.read_text())
    unet = UNet2DModel(**meta["unet_config"])
    unet.load_state_dict(load_file(str(st)))
    model = PixelUNet(unet, default_scheduler(**meta.get("scheduler_overrides", {})))
    init = meta.get("initial_noise", {"kind": "gaussian_matched", "n": 20000, "seed": 0})
    if init["kind"] == "gaussian_matched":
        model.data_moments = training_moments(int(unet.config.sample_size), int(init["n"]), int(init["seed"]))
    if frozen:
        model.requires_grad_(False).eval()
    return model

"""Vector backbone: an MLP epsilon-prediction denoiser with a sinusoidal timestep embedding.

Latents live in the task's normalised design space u in roughly [-1, 1]^d; ``decode`` maps them
affinely to the task's bounds (x = lo + (u + 1)/2 (hi - lo)), differentiably and without clipping.
Pretrained by :func:`pretrain_mlp` on exact samples of the task's prior (infinite data, DDPM loss);
weights live in ``sqdf_bbo/backbones/weights/mlp_<prior>.safetensors`` with a JSON record of the
command, seed, steps, final loss, wall time and sha256.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import load_file, save_file
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


def pretrain_mlp(
    sample_prior_u: Callable[[int, torch.Generator], torch.Tensor],
    model: MLPDenoiser,
    steps: int = 4000,
    batch: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 500,
) -> dict:
    """DDPM epsilon-matching on fresh prior samples each step. Returns {'final_loss', 'wall_s', ...}.

    ``sample_prior_u(n, generator)`` draws (n, d) prior samples in the normalised latent space.
    final_loss is the mean loss over the last 10% of steps.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sched = model.scheduler
    acp = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.02)
    model.train()
    t0 = time.time()
    tail = []
    for step in range(steps):
        x0 = sample_prior_u(batch, g).float()
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = acp[t].unsqueeze(1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = ((model(xt, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        if step >= int(0.9 * steps):
            tail.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"step {step:6d} loss {loss.item():.4f}", flush=True)
    model.eval()
    return {"final_loss": sum(tail) / max(len(tail), 1), "wall_s": time.time() - t0, "steps": steps,
            "batch": batch, "lr": lr, "seed": seed}


def save_mlp(model: MLPDenoiser, prior_name: str, record: dict) -> Path:
    """Write weights + JSON metadata (arch, training record, sha256) atomically."""
    from sqdf_bbo.io import atomic_write_bytes, atomic_write_json

    path = weights_path(prior_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in ("lo", "hi")}
    save_file(state, str(tmp))
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    meta = {"arch": model.arch, "sha256": sha256_file(path), **record}
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def pretrain_vector_main(argv: Optional[list[str]] = None) -> None:
    """CLI: ``python -m sqdf_bbo.pretrain vector --prior ackley [--steps 4000 --seed 0]``."""
    from sqdf_bbo.tasks.synthetic import PRIOR_NAMES, make_prior_and_bounds

    p = argparse.ArgumentParser(prog="python -m sqdf_bbo.pretrain vector")
    p.add_argument("--prior", default="all", help=f"one of {', '.join(PRIOR_NAMES)} or 'all'")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args(argv)
    names = PRIOR_NAMES if args.prior == "all" else [args.prior]
    for name in names:
        if name not in PRIOR_NAMES:
            raise SystemExit(f"error: unknown prior {name!r}; allowed: {', '.join(PRIOR_NAMES)}, all")
        prior, lo, hi = make_prior_and_bounds(name)
        torch.manual_seed(args.seed)
        model = MLPDenoiser(dim=prior.dim, lo=lo, hi=hi, width=args.width, depth=args.depth)
        rec = pretrain_mlp(prior.sample, model, steps=args.steps, batch=args.batch, seed=args.seed)
        rec["command"] = (f"python -m sqdf_bbo.pretrain vector --prior {name} --steps {args.steps} "
                          f"--batch {args.batch} --seed {args.seed} --width {args.width} --depth {args.depth}")
        rec["torch"] = torch.__version__
        path = save_mlp(model, name, rec)
        print(f"{name}: final loss {rec['final_loss']:.4f} in {rec['wall_s']:.1f}s -> {path}")

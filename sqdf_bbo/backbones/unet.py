"""Tiny pixel-space diffusion backbone for the embedded image tier, and its pretraining.

``PixelUNet`` wraps a ``diffusers.UNet2DModel`` (config C of embedded-defaults §3: blocks (32, 64, 64),
one layer per block, no attention, GroupNorm 8; ~1.06 M parameters) as an epsilon-prediction
:class:`~sqdf_bbo.backbones.base.Backbone`:

    latent z  : (B, 3, S, S) image in [-1, 1] (pixel space, no autoencoder)
    decode(z) : (B, 3, S, S) image in [0, 1] = clamp((z + 1) / 2)

Pretraining (``python -m sqdf_bbo.pretrain image --size 16 ...``): DDPM eps-MSE on natural patches
(:func:`sqdf_bbo.data.build_patches`), cosine schedule (``default_scheduler``), AdamW, EMA; the EMA
weights are written as safetensors + ``.sha256`` + a JSON with the UNet config, command, wall time
and final loss to ``sqdf_bbo/backbones/weights/``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from sqdf_bbo.backbones.base import Backbone, default_scheduler
from sqdf_bbo.data.checksum import verify_checksum, write_checksum

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

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.unet(x_t, t).sample

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
    if frozen:
        model.requires_grad_(False).eval()
    return model


# ---- pretraining -------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sqdf_bbo.pretrain image",
                                description="Pretrain the tiny pixel UNet on natural patches.")
    p.add_argument("--size", type=int, default=16, help="patch side in pixels (multiple of 4)")
    p.add_argument("--steps", type=int, default=6000, help="optimizer steps (upper bound)")
    p.add_argument("--max-minutes", type=float, default=28.0, help="wall-clock bound; stops early")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--n-train", type=int, default=60000, help="number of training patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None, help="output stem (default unet<size>)")
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: only at end)")
    p.add_argument("--fd-samples", type=int, default=512, help="samples for the final Fréchet distance (0: skip)")
    p.add_argument("--fd-steps", type=int, nargs="+", default=[20, 50], help="DDIM steps (eta 1) for the FD")
    p.add_argument("--eval-only", action="store_true",
                   help="only measure FD of the saved weights --name, add it to its JSON, write the sample grid")
    p.add_argument("--grid", default="results/image_pretrained_samples.png", help="sample grid PNG ('' to skip)")
    p.add_argument("--init", default=None,
                   help="continue from the saved weights of this name (EMA weights start both nets; fresh AdamW)")
    p.add_argument("--distill", action="store_true",
                   help="distil a consistency model from the saved weights --name (sqdf_bbo/consistency.py) on the "
                        "--cm-num-steps DDIM grid; writes cm_<name>.safetensors/.json/.sha256")
    p.add_argument("--cm-num-steps", type=int, default=20, help="DDIM grid of the CM (the agent's num_steps)")
    p.add_argument("--cm-lr", type=float, default=1e-4)
    p.add_argument("--cm-ema", type=float, default=0.95)
    return p


def cm_name(name: str = DEFAULT_NAME) -> str:
    return f"cm_{name}"


def load_consistency_unet(name: str = DEFAULT_NAME, weights_dir: Optional[str | Path] = None):
    """The committed consistency model distilled from PixelUNet ``name``: a frozen
    :class:`sqdf_bbo.consistency.ConsistencyModel` with ``num_steps`` = its DDIM grid size. Checks the CM's
    sha256 and that its teacher is the current ``name`` weights (FileNotFoundError / RuntimeError)."""
    from sqdf_bbo.consistency import ConsistencyModel
    from sqdf_bbo.data.checksum import sha256_of

    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    st, js = _paths(cm_name(name), weights_dir)
    if not js.exists():
        raise FileNotFoundError(f"no consistency model {st}; create it with "
                                f"`python -m sqdf_bbo.pretrain image --distill --name {name}`")
    verify_checksum(st)
    meta = json.loads(js.read_text())
    teacher_sha = sha256_of(_paths(name, weights_dir)[0])
    if meta["teacher_sha256"] != teacher_sha:
        raise RuntimeError(f"{st.name} was distilled from teacher {meta['teacher_sha256'][:12]}, but {name} is "
                           f"{teacher_sha[:12]}; re-run `python -m sqdf_bbo.pretrain image --distill --name {name}`")
    unet = UNet2DModel(**meta["unet_config"])
    unet.load_state_dict(load_file(str(st)))
    cm = ConsistencyModel(PixelUNet(unet, default_scheduler()), meta["sigma_data"], meta["timestep_scaling"])
    cm.num_steps = int(meta["num_steps"])
    return cm.eval().requires_grad_(False)


def distill_unet(name: str, steps: int, batch: int, num_steps: int, lr: float, ema: float, seed: int,
                 n_train: int, command: str) -> dict:
    """Consistency distillation of the committed PixelUNet ``name`` on natural training patches."""
    from sqdf_bbo.consistency import distill_consistency, evaluate_consistency
    from sqdf_bbo.data import build_patches
    from sqdf_bbo.data.checksum import sha256_of

    teacher = load_pretrained_unet(name)
    size = teacher.latent_shape[-1]
    data = build_patches(n_train, size, "train", seed=seed + 300) * 2 - 1
    sample = lambda n, g: data[torch.randint(len(data), (n,), generator=g)]  # noqa: E731
    cm, rec = distill_consistency(teacher, sample, num_steps=num_steps, steps=steps, batch=batch, lr=lr,
                                  ema=ema, seed=seed, log_every=100)
    held = build_patches(512, size, "heldout", seed=seed + 301) * 2 - 1
    ev = evaluate_consistency(cm, teacher, num_steps, lambda n, g: held[:n], n=256, seed=10_000 + seed)
    rec.update(heldout_cm_mse_vs_ddim=ev["cm_mse"], heldout_tweedie_mse_vs_ddim=ev["tweedie_mse"],
               backbone="unet", teacher=f"{name}.safetensors", teacher_sha256=sha256_of(_paths(name, WEIGHTS_DIR)[0]),
               command=command, torch=torch.__version__, n_train=n_train)
    save_unet(cm.net.unet, WEIGHTS_DIR, cm_name(name), rec)
    return rec


@torch.no_grad()
def sample_images(model: PixelUNet, n: int, num_steps: int = 20, eta: float = 1.0, seed: int = 0,
                  batch: int = 64) -> torch.Tensor:
    """n DDIM(eta) samples decoded to images, (n, 3, S, S) in [0, 1]; deterministic in ``seed``."""
    from sqdf_bbo.diffusion import DDIMSchedule, sample_trajectory

    sched = DDIMSchedule.from_scheduler(model.scheduler, num_steps, eta)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        x0 = torch.randn((min(batch, n - i), *model.latent_shape), generator=g)
        out.append(model.decode(sample_trajectory(model, sched, x0, generator=g).final))
    return torch.cat(out)


def evaluate_unet(name: str, n: int = 512, steps: tuple[int, ...] = (20, 50), seed: int = 0,
                  grid: str = "") -> dict:
    """Fréchet distance (oracle phi features, see tasks/image.py) of n samples vs held-out patches, per
    number of DDIM steps, with data-vs-data and baseline references; optionally a sample grid PNG."""
    from sqdf_bbo.data import build_patches
    from sqdf_bbo.tasks.image import AestheticTask

    model = load_pretrained_unet(name)
    task = AestheticTask(unet=name)  # its FD / denoising loss / oracle read the committed weights
    res: dict[str, Any] = {"fd_samples": n, "fd_space": "RandAesthetic phi, z-scored, 512-d; ref = 5000 held-out patches"}
    t0 = time.time()
    for k in steps:
        x = sample_images(model, n, num_steps=k, seed=seed)
        res[f"fd_ddim{k}"] = round(task.frechet_distance(x), 3)
        res[f"denoise_loss_ddim{k}"] = round(float(task.denoising_loss(x).mean()), 4)
        res[f"aesthetic_ddim{k}"] = round(float(task.evaluate_true(x).mean()), 4)
        if k == steps[0] and grid:
            Path(grid).parent.mkdir(parents=True, exist_ok=True)
            real = build_patches(64, model.latent_shape[-1], "heldout", seed=seed + 1)
            task.render(x[:64], grid, title=f"{name}: DDIM-{k} (eta 1) samples, FD {res[f'fd_ddim{k}']:.1f}",
                        reference=real, reference_label="held-out natural patches")
    real = build_patches(n, model.latent_shape[-1], "heldout", seed=seed + 1)
    res["fd_heldout_patches"] = round(task.frechet_distance(real), 3)
    res["fd_train_patches"] = round(task.frechet_distance(build_patches(n, model.latent_shape[-1], "train", seed=seed + 2)), 3)
    res["fd_flat_patches"] = round(task.frechet_distance(real.mean((2, 3), keepdim=True).expand_as(real).contiguous()), 3)
    res["fd_shuffled_pixels"] = round(task.frechet_distance(
        real.flatten(2)[:, :, torch.randperm(real[0, 0].numel(), generator=torch.Generator().manual_seed(seed))]
        .reshape(real.shape)), 3)
    res["denoise_loss_heldout"] = round(float(task.denoising_loss(real).mean()), 4)
    res["aesthetic_heldout"] = round(float(task.evaluate_true(real).mean()), 4)
    res["eval_wall_s"] = round(time.time() - t0, 1)
    return res


def save_unet(model_unet: UNet2DModel, out: Path, name: str, meta: dict) -> None:
    """Write ``name``.safetensors (+ .sha256) and ``name``.json atomically-enough (temp then rename)."""
    out.mkdir(parents=True, exist_ok=True)
    st, js = _paths(name, out)
    tmp = st.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model_unet.state_dict().items()}, str(tmp))
    os.replace(tmp, st)
    meta = dict(meta, sha256=write_checksum(st), unet_config=_config_dict(model_unet))
    tmpj = js.with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmpj, js)


def _config_dict(unet: UNet2DModel) -> dict:
    keys = unet_config(unet.config.sample_size).keys()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in unet.config.items() if k in keys}



def pretrain_image_main(argv: Optional[list[str]] = None) -> dict:
    """CLI entry: pretrain, save EMA weights + log JSON; returns the log dict."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    name = args.name or f"unet{args.size}"
    out = Path(args.out)
    if args.distill:
        rec = distill_unet(name, args.steps, args.batch, args.cm_num_steps, args.cm_lr, args.cm_ema, args.seed,
                           args.n_train,
                           "python -m sqdf_bbo.pretrain image " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
        print(json.dumps(rec, indent=2), flush=True)
        return rec
    if args.eval_only:
        if out.resolve() != WEIGHTS_DIR:
            raise SystemExit(f"error: --eval-only works on the committed weights in {WEIGHTS_DIR}, not --out {out}")
        res = evaluate_unet(name, args.fd_samples, tuple(args.fd_steps), args.seed, args.grid)
        js = _paths(name, out)[1]
        meta = json.loads(js.read_text())
        meta["sample_quality"] = dict(res, command="python -m sqdf_bbo.pretrain image " + " ".join(
            shlex.quote(a) for a in (argv or sys.argv[1:])))
        js.write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(res, indent=2), flush=True)
        return meta
    cmd = "python -m sqdf_bbo.pretrain image " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.time()
    from sqdf_bbo.data import build_patches

    data = build_patches(args.n_train, args.size, "train", seed=args.seed) * 2 - 1  # latents in [-1,1]
    unet = UNet2DModel(**unet_config(args.size))
    ema = UNet2DModel(**unet_config(args.size))
    prev = None
    if args.init:
        prev_model = load_pretrained_unet(args.init, out, frozen=False)
        unet.load_state_dict(prev_model.unet.state_dict())
        prev = json.loads(_paths(args.init, out)[1].read_text())
        prev = {k: prev.get(k) for k in ("command", "steps", "wall_s", "final_loss", "init_from")}
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = default_scheduler()
    acp = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    loss_avg, hist = None, []
    step = 0
    meta = dict(command=cmd, seed=args.seed, size=args.size, batch=args.batch, lr=args.lr, ema=args.ema,
                n_train=args.n_train, threads=args.threads, torch=torch.__version__, init_from=prev,
                scheduler="DDIM/DDPM squaredcos_cap_v2, eps-prediction, 1000 steps")
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(data), (args.batch,), generator=g)
        x0 = data[idx]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, eps)
        for grp in opt.param_groups:
            grp["lr"] = args.lr * min(1.0, step / max(1, args.warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        loss_avg = loss.item() if loss_avg is None else 0.99 * loss_avg + 0.01 * loss.item()
        if step % 100 == 0:
            hist.append((step, round(time.time() - t0, 1), round(loss_avg, 5)))
            print(f"step {step} loss(ema-avg) {loss_avg:.4f} wall {time.time() - t0:.0f}s", flush=True)
        done = (time.time() - t0) / 60 > args.max_minutes
        if (args.save_every and step % args.save_every == 0) or done:
            save_unet(ema, out, name, dict(meta, steps=step, wall_s=round(time.time() - t0, 1),
                                          final_loss=loss_avg, loss_history=hist, complete=False))
        if done:
            break
    meta.update(steps=step, stopped_by_time=step < args.steps, wall_s=round(time.time() - t0, 1),
                final_loss=loss_avg, loss_history=hist, complete=True)
    save_unet(ema, out, name, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_history"}), flush=True)
    if args.fd_samples > 0 and out.resolve() == WEIGHTS_DIR:
        rest = [a for a in (argv or []) if a not in ("--eval-only",)]
        return pretrain_image_main(rest + ["--eval-only", "--name", name])
    return meta

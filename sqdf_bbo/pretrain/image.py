"""Pretraining, consistency distillation and evaluation of the tiny pixel UNet (``python -m sqdf_bbo.pretrain
image ...``); the model itself is :mod:`sqdf_bbo.backbones.unet`."""
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
from safetensors.torch import save_file

from sqdf_bbo.backbones.base import default_scheduler
from sqdf_bbo.backbones.unet import WEIGHTS_DIR, PixelUNet, _paths, load_pretrained_unet, unet_config
from sqdf_bbo.consistency import cm_name
from sqdf_bbo.data.checksum import write_checksum


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sqdf_bbo.pretrain image",
                                description="Pretrain the tiny pixel UNet on natural patches.")
    p.add_argument("--size", type=int, default=16, help="patch side in pixels (multiple of 4)")
    p.add_argument("--steps", type=int, default=30000, help="total optimizer steps of the run (sets the LR schedule)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock bound of this invocation: saves the checkpoint and stops; --resume continues")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop this invocation after this many steps (checkpointed; --resume continues)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (after warm-up)")
    p.add_argument("--lr-min", type=float, default=1e-4, help="cosine decay floor, reached at --steps")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--n-train", type=int, default=60000, help="number of training patches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-dir", default=None,
                   help="resumable training state (default runs/pretrain/<name>): model, EMA, AdamW moments and "
                        "the RNG state in safetensors, step and settings in JSON")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --ckpt-dir exactly where it stopped (same settings required)")
    p.add_argument("--name", default=None, help="output stem (default unet<size>)")
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: only when stopping)")
    p.add_argument("--fd-samples", type=int, default=512, help="samples for the final Fréchet distance (0: skip)")
    p.add_argument("--fd-steps", type=int, nargs="+", default=[20, 50], help="DDIM steps for the FD")
    p.add_argument("--fd-eta", type=float, nargs="+", default=[1.0],
                   help="DDIM eta values for the FD (1: the tiers' sampler; 0: deterministic DDIM); the grid and the "
                        "extra statistics use the first")
    p.add_argument("--eval-only", action="store_true",
                   help="only measure FD of the saved weights --name, add it to its JSON, write the sample grid")
    p.add_argument("--grid", default="results/image_pretrained_samples.png", help="sample grid PNG ('' to skip)")
    p.add_argument("--init", default=None,
                   help="warm start from the saved weights of this name (EMA weights start both nets; fresh AdamW "
                        "and schedule); to continue a run exactly use --resume")
    p.add_argument("--distill", action="store_true",
                   help="distil a consistency model from the saved weights --name (sqdf_bbo/consistency.py) on the "
                        "--cm-num-steps DDIM grid; writes cm_<name>.safetensors/.json/.sha256")
    p.add_argument("--cm-num-steps", type=int, default=20, help="DDIM grid of the CM (the agent's num_steps)")
    p.add_argument("--cm-lr", type=float, default=1e-4)
    p.add_argument("--cm-ema", type=float, default=0.95)
    return p

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
        x0 = model.initial_noise(min(batch, n - i), g, sched)
        out.append(model.decode(sample_trajectory(model, sched, x0, generator=g).final))
    return torch.cat(out)

def evaluate_unet(name: str, n: int = 512, steps: tuple[int, ...] = (20, 50), seed: int = 0,
                  grid: str = "", etas: tuple[float, ...] = (1.0,)) -> dict:
    """Fréchet distance (oracle phi features, see tasks/image.py) of n samples vs held-out patches, per
    number of DDIM steps and eta (keys ``fd_ddim<k>`` for eta 1, ``fd_ddim<k>_eta<e>`` otherwise), with
    data-vs-data and baseline references; optionally a sample grid PNG (first steps and eta)."""
    from sqdf_bbo.data import build_patches
    from sqdf_bbo.tasks.image import AestheticTask

    model = load_pretrained_unet(name)
    task = AestheticTask(unet=name)  # its FD / denoising loss / oracle read the committed weights
    res: dict[str, Any] = {"fd_samples": n, "fd_space": "RandAesthetic phi, z-scored, 512-d; ref = 5000 held-out patches"}
    t0 = time.time()
    first = None
    for k in steps:
        for eta in etas:
            x = sample_images(model, n, num_steps=k, eta=eta, seed=seed)
            key = f"ddim{k}" if eta == 1.0 else f"ddim{k}_eta{eta:g}"
            res[f"fd_{key}"] = round(task.frechet_distance(x), 3)
            res[f"denoise_loss_{key}"] = round(float(task.denoising_loss(x).mean()), 4)
            res[f"aesthetic_{key}"] = round(float(task.evaluate_true(x).mean()), 4)
            if first is not None:
                continue
            first = x
            if grid:
                Path(grid).parent.mkdir(parents=True, exist_ok=True)
                real = build_patches(64, model.latent_shape[-1], "heldout", seed=seed + 1)
                task.render(x[:64], grid, title=f"{name}: DDIM-{k} (eta {eta:g}) samples, FD {res[f'fd_{key}']:.1f}",
                            reference=real, reference_label="held-out natural patches")
    moments, model.data_moments = model.data_moments, None  # the same sampler started from N(0, I)
    res[f"fd_ddim{steps[0]}_standard_normal_start"] = round(task.frechet_distance(
        sample_images(model, n, num_steps=steps[0], seed=seed)), 3)
    model.data_moments = moments
    real = build_patches(n, model.latent_shape[-1], "heldout", seed=seed + 1)
    res["fd_heldout_patches"] = round(task.frechet_distance(real), 3)
    res["fd_train_patches"] = round(task.frechet_distance(build_patches(n, model.latent_shape[-1], "train", seed=seed + 2)), 3)
    res["fd_flat_patches"] = round(task.frechet_distance(real.mean((2, 3), keepdim=True).expand_as(real).contiguous()), 3)
    res["fd_shuffled_pixels"] = round(task.frechet_distance(
        real.flatten(2)[:, :, torch.randperm(real[0, 0].numel(), generator=torch.Generator().manual_seed(seed))]
        .reshape(real.shape)), 3)
    res["denoise_loss_heldout"] = round(float(task.denoising_loss(real).mean()), 4)
    res["aesthetic_heldout"] = round(float(task.evaluate_true(real).mean()), 4)
    x = first
    res[f"clipped_pixels_ddim{steps[0]}"] = round(float(((x <= 1e-3) | (x >= 1 - 1e-3)).float().mean()), 4)
    res["clipped_pixels_heldout"] = round(float(((real <= 1e-3) | (real >= 1 - 1e-3)).float().mean()), 4)
    res[f"valid_ddim{steps[0]}"] = round(float(task.valid_mask(x).double().mean()), 4)
    res["initial_noise"] = "gaussian_matched" if moments is not None else "standard_normal"
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

#: settings that must match for --resume to continue a run exactly
RESUME_KEYS = ("size", "steps", "batch", "lr", "lr_min", "warmup", "ema", "n_train", "seed", "init")


def learning_rate(step: int, peak: float, floor: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor`` at step ``total``."""
    if step <= warmup:
        return peak * step / max(1, warmup)
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))


def save_train_state(ckpt: Path, unet: UNet2DModel, ema: UNet2DModel, opt: torch.optim.Optimizer,
                     gen: torch.Generator, record: dict) -> None:
    """Write ``state.safetensors`` (weights, EMA, AdamW moments, generator state) and ``state.json`` (step,
    settings, loss history, AdamW hyper-parameters); no pickle. Temp files then rename, tensors first."""
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).detach().contiguous()
    tensors["rng.generator"] = gen.get_state()
    tmp = ckpt / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, ckpt / "state.safetensors")
    rec = dict(record, optimizer_param_groups=osd["param_groups"])
    tmpj = ckpt / "state.json.tmp"
    tmpj.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmpj, ckpt / "state.json")


def load_train_state(ckpt: Path, unet: UNet2DModel, ema: UNet2DModel, opt: torch.optim.Optimizer,
                     gen: torch.Generator) -> dict:
    """Inverse of :func:`save_train_state`; returns the JSON record."""
    from safetensors.torch import load_file

    rec = json.loads((ckpt / "state.json").read_text())
    t = load_file(str(ckpt / "state.safetensors"))
    unet.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": rec["optimizer_param_groups"]})
    gen.set_state(t["rng.generator"])
    return rec


def pretrain_image_main(argv: Optional[list[str]] = None) -> dict:
    """CLI entry: pretrain (resumably), write the EMA weights + JSON record when the run is complete;
    returns the record. Runs with ``--threads`` threads and restores the caller's thread count after (a
    library caller, e.g. a test process that later forks, keeps its own)."""
    args = _parser().parse_args(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _pretrain_image(args, argv)
    finally:
        torch.set_num_threads(before)


def _pretrain_image(args: argparse.Namespace, argv: Optional[list[str]]) -> dict:
    name = args.name or f"unet{args.size}"
    out = Path(args.out)
    cmd = "python -m sqdf_bbo.pretrain image " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.distill:
        rec = distill_unet(name, args.steps, args.batch, args.cm_num_steps, args.cm_lr, args.cm_ema, args.seed,
                           args.n_train, cmd)
        print(json.dumps(rec, indent=2), flush=True)
        return rec
    if args.eval_only:
        if out.resolve() != WEIGHTS_DIR:
            raise SystemExit(f"error: --eval-only works on the committed weights in {WEIGHTS_DIR}, not --out {out}")
        res = evaluate_unet(name, args.fd_samples, tuple(args.fd_steps), args.seed, args.grid, tuple(args.fd_eta))
        js = _paths(name, out)[1]
        meta = json.loads(js.read_text())
        meta["sample_quality"] = dict(res, command=cmd)
        js.write_text(json.dumps(meta, indent=2) + "\n")
        print(json.dumps(res, indent=2), flush=True)
        return meta
    for key in ("steps", "batch", "n_train", "warmup", "threads"):
        v = getattr(args, key)
        if v < (0 if key == "warmup" else 1):
            raise SystemExit(f"error: --{key.replace('_', '-')} must be a positive integer, got {v}")
    ckpt = Path(args.ckpt_dir or Path("runs") / "pretrain" / name)
    settings = {k: getattr(args, k) for k in RESUME_KEYS}
    if not args.resume and (ckpt / "state.json").exists():
        raise SystemExit(f"error: {ckpt} already holds a pretraining run; continue it with --resume or pick "
                         f"another --ckpt-dir")
    if args.resume and not (ckpt / "state.json").exists():
        raise SystemExit(f"error: --resume: no pretraining state in {ckpt} (state.json missing)")
    t0 = time.time()
    from sqdf_bbo.data import build_patches

    torch.manual_seed(args.seed)
    data = build_patches(args.n_train, args.size, "train", seed=args.seed) * 2 - 1  # latents in [-1,1]
    unet = UNet2DModel(**unet_config(args.size))
    ema = UNet2DModel(**unet_config(args.size))
    init_from = None
    if args.init:
        unet.load_state_dict(load_pretrained_unet(args.init, out, frozen=False).unet.state_dict())
        prev = json.loads(_paths(args.init, out)[1].read_text())
        init_from = {k: prev.get(k) for k in ("command", "steps", "wall_s", "final_loss", "init_from")}
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    acp = default_scheduler().alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    rec = dict(settings=settings, step=0, wall_s=0.0, loss_avg=None, loss_history=[], invocations=[])
    if args.resume:
        rec = load_train_state(ckpt, unet, ema, opt, g)
        if rec["settings"] != settings:
            diff = {k: (rec["settings"].get(k), v) for k, v in settings.items() if rec["settings"].get(k) != v}
            raise SystemExit(f"error: --resume with other settings than the run in {ckpt}: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        print(f"resuming {ckpt} at step {rec['step']}", flush=True)
    rec["invocations"].append(dict(command=cmd, start_step=rec["step"], threads=args.threads))
    start, wall0, loss_avg = rec["step"], rec["wall_s"], rec["loss_avg"]
    step = start
    stop_at = args.steps if args.stop_after is None else min(args.steps, start + args.stop_after)

    def checkpoint() -> None:
        rec.update(step=step, wall_s=round(wall0 + time.time() - t0, 1), loss_avg=loss_avg)
        save_train_state(ckpt, unet, ema, opt, g, rec)

    while step < stop_at:
        step += 1
        idx = torch.randint(len(data), (args.batch,), generator=g)
        x0 = data[idx]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, eps)
        for grp in opt.param_groups:
            grp["lr"] = learning_rate(step, args.lr, args.lr_min, args.warmup, args.steps)
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
            rec["loss_history"].append((step, round(wall0 + time.time() - t0, 1), round(loss_avg, 5)))
            print(f"step {step} loss(ema-avg) {loss_avg:.4f} wall {wall0 + time.time() - t0:.0f}s", flush=True)
        timed_out = args.max_minutes is not None and (time.time() - t0) / 60 > args.max_minutes
        if (args.save_every and step % args.save_every == 0) or timed_out:
            checkpoint()
        if timed_out:
            break
    checkpoint()
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps}; continue with the same command plus --resume", flush=True)
        return dict(rec, complete=False)
    meta = dict(command=cmd, invocations=rec["invocations"], seed=args.seed, size=args.size, batch=args.batch,
                lr=args.lr, lr_min=args.lr_min, warmup=args.warmup, lr_schedule="linear warm-up, cosine decay",
                ema=args.ema, n_train=args.n_train, torch=torch.__version__, init_from=init_from,
                data_split="tiles of 64 px, 20 % held out (sqdf_bbo/data/patches.py)",
                scheduler="DDIM/DDPM squaredcos_cap_v2, eps-prediction, 1000 steps", steps=step,
                wall_s=rec["wall_s"], final_loss=loss_avg, loss_history=rec["loss_history"], complete=True)
    save_unet(ema, out, name, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_history"}), flush=True)
    if args.fd_samples > 0 and out.resolve() == WEIGHTS_DIR:
        return pretrain_image_main(["--eval-only", "--name", name, "--fd-samples", str(args.fd_samples),
                                    "--fd-steps", *map(str, args.fd_steps), "--grid", args.grid,
                                    "--threads", str(args.threads)])
    return meta

"""Pretraining of the vector MLP denoisers on exact samples of the synthetic priors (``python -m
sqdf_bbo.pretrain vector --prior all``); the model itself is :mod:`sqdf_bbo.backbones.mlp`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import save_file

from sqdf_bbo.backbones.mlp import MLPDenoiser, sha256_file, weights_path


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

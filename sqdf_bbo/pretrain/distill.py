"""CLI of consistency distillation for the vector MLPs (``python -m sqdf_bbo.pretrain consistency --backbone mlp
--prior ackley``); the distillation itself is :mod:`sqdf_bbo.consistency`."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from sqdf_bbo.consistency import cm_weights_path, distill_consistency, evaluate_consistency, save_consistency


def distill_main(argv: Optional[list[str]] = None) -> None:
    """CLI: ``python -m sqdf_bbo.pretrain consistency --backbone mlp --prior ackley``."""
    from sqdf_bbo.backbones.mlp import load_mlp, sha256_file, weights_path
    from sqdf_bbo.tasks.synthetic import PRIOR_NAMES, make_prior_and_bounds

    p = argparse.ArgumentParser(prog="python -m sqdf_bbo.pretrain consistency")
    p.add_argument("--backbone", default="mlp", help="mlp (other backbones: call distill_consistency directly)")
    p.add_argument("--prior", default="ackley", help=f"one of {', '.join(PRIOR_NAMES)} (comma-separated) or 'all'")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.95)
    p.add_argument("--num-steps", type=int, default=50, help="DDIM grid size (the agent's num_steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.backbone != "mlp":
        raise SystemExit(f"error: unknown --backbone {args.backbone!r}; allowed: mlp")
    torch.set_num_threads(args.threads)
    names = PRIOR_NAMES if args.prior == "all" else args.prior.split(",")
    for name in names:
        if name not in PRIOR_NAMES:
            raise SystemExit(f"error: unknown prior {name!r}; allowed: {', '.join(PRIOR_NAMES)}, all")
        prior, lo, hi = make_prior_and_bounds(name)
        teacher = load_mlp(name, lo.float(), hi.float())
        sample = lambda n, g: prior.sample(n, g).float()  # noqa: E731
        cm, rec = distill_consistency(teacher, sample, num_steps=args.num_steps, steps=args.steps,
                                      batch=args.batch, lr=args.lr, ema=args.ema, seed=args.seed)
        ev = evaluate_consistency(cm, teacher, args.num_steps, sample, n=1024, seed=10_000 + args.seed)
        rec.update({"heldout_cm_mse_vs_ddim": ev["cm_mse"], "heldout_tweedie_mse_vs_ddim": ev["tweedie_mse"]})
        rec.update({"arch": teacher.arch, "backbone": "mlp", "prior": name,
                    "teacher": weights_path(name).name, "teacher_sha256": sha256_file(weights_path(name)),
                    "command": (f"python -m sqdf_bbo.pretrain consistency --backbone mlp --prior {name} "
                                f"--steps {args.steps} --batch {args.batch} --lr {args.lr} --ema {args.ema} "
                                f"--num-steps {args.num_steps} --seed {args.seed}"),
                    "torch": torch.__version__})
        path = save_consistency(cm, cm_weights_path("mlp", name, args.num_steps), rec)
        print(f"{name}: cd loss {rec['final_loss']:.5f}; held-out MSE vs {args.num_steps}-step DDIM: "
              f"CM {ev['cm_mse']:.5f}, Tweedie {ev['tweedie_mse']:.5f}; {rec['wall_s']:.0f}s -> {path}", flush=True)

"""Calibration of the image tier's naturalness gate (the ``-manifold`` rule): which fraction of each kind of
image passes, and what the plain and the manifold oracle pay for it.

    python -m benchmarks.perf.image_calibration [--n 512] [--runs RUN_FOLDER ...] [--csv results/image_calibration.csv]

Rows: held-out natural patches (not the gate's calibration patches), train patches, DDIM-20 samples of the
committed pretrained UNet, flat mean-colour patches, uniform noise, pixel ascent on the oracle O from
held-out patches (the saturated noise a collapsing fine-tuner ends in) and, per ``--runs`` folder, the
designs that run queried in its last round (``designs/round<k>.npy``). Columns: pass rate of the gate,
mean oracle O on ``aesthetic`` and on ``aesthetic-manifold``, mean ground truth A, mean JPEG size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def last_round_designs(run_dir: Path) -> tuple[str, torch.Tensor]:
    """(label, designs (n, 3, S, S) in [0, 1]) of the last round a run queried."""
    files = sorted((run_dir / "designs").glob("round*.npy"), key=lambda p: int(p.stem[5:]))
    if not files:
        raise SystemExit(f"error: {run_dir} has no designs/round<k>.npy (an image-tier run folder is needed)")
    x = np.load(files[-1])
    cfg = json.loads((run_dir / "config.json").read_text())
    t = torch.from_numpy(x).float()
    if x.dtype == np.uint8:  # image tasks store uint8 (Task.design_array)
        t = t / 255.0
    return f"{cfg['method']} (last round of {cfg['task']}, budget {cfg['budget']}, seed {cfg['seed']})", t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.image_calibration")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--csv", default="results/image_calibration.csv")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import pandas as pd

    from sqdf_bbo.backbones.unet import load_pretrained_unet
    from sqdf_bbo.data import build_patches
    from sqdf_bbo.oracles.rand_aesthetic import load_rand_aesthetic, pixel_ascent
    from sqdf_bbo.pretrain.image import sample_images
    from sqdf_bbo.tasks import make_task
    from sqdf_bbo.tasks.image import jpeg_kb

    plain, mani = make_task("aesthetic"), make_task("aesthetic-manifold")
    S, n = plain.size, a.n
    g = torch.Generator().manual_seed(a.seed)
    held = build_patches(n, S, "heldout", seed=a.seed + 31)
    sets = {
        "held-out natural patches": held,
        "train natural patches": build_patches(n, S, "train", seed=a.seed + 32),
        "pretrained UNet, DDIM-20 (eta 1)": sample_images(load_pretrained_unet(plain.cfg["unet"]), n, 20, seed=a.seed),
        "flat mean-colour patches": held.mean((2, 3), keepdim=True).expand_as(held).contiguous(),
        "uniform noise": torch.rand(n, 3, S, S, generator=g),
        "pixel ascent on O (64, 400 Adam steps)": pixel_ascent(load_rand_aesthetic(S), held[:64]),
    }
    for r in a.runs:
        label, x = last_round_designs(Path(r))
        sets[label] = x
    rows = []
    for name, x in sets.items():
        x = x.clamp(0, 1)
        rows.append({"images": name, "n": len(x), "gate_pass": float(mani.valid_mask(x).double().mean()),
                     "oracle_O": float(plain.evaluate_true(x).mean()),
                     "manifold_O": float(mani.evaluate_true(x).mean()),
                     "ground_truth_A": float(plain.extra_values(x)["ground_truth_A"].mean()),
                     "jpeg_kb": float(jpeg_kb(x).mean())})
    df = pd.DataFrame(rows)
    if a.csv:
        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(a.csv, index=False, float_format="%.4g")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"worst value of aesthetic-manifold: {mani.worst_value:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

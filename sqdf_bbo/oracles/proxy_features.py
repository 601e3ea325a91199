"""The image proxy feature map agents see: a frozen random conv net that is NOT the oracle's.

Differs from RandAesthetic's phi in seed (4321 vs 1234), depth (3 vs 4 layers), kernels (5,3,3 vs 3x3),
widths (32, 64, 128), activation (SiLU vs GELU) and output size (256 vs 512). Mean/std pooled and
z-scored with statistics on natural training patches; weights and statistics are committed with a
sha256 (``sqdf_bbo/tasks/assets/proxy_features<size>.safetensors``). Build:

    python -m sqdf_bbo.oracles.proxy_features --build --size 16

features(x): (B, 3, S, S) in [0, 1] -> (B, 256), differentiable, frozen.
"""
from __future__ import annotations

import functools
import json
import shlex
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sqdf_bbo.data.checksum import verify_checksum, write_checksum
from sqdf_bbo.oracles.encoders import RandomConvEncoder, ZScored, batched, build_cli

ASSETS = Path(__file__).resolve().parents[1] / "tasks" / "assets"
PROXY_SEED = 4321
FEATURE_DIM = 256


def make_encoder() -> RandomConvEncoder:
    return RandomConvEncoder([32, 64, 128], [5, 3, 3], [1, 2, 2], act="silu", seed=PROXY_SEED)


def asset_path(size: int) -> Path:
    return ASSETS / f"proxy_features{size}.safetensors"


@functools.lru_cache(maxsize=4)
def load_proxy_features(size: int = 16) -> ZScored:
    """The committed proxy feature map (sha256-verified), frozen. Shared instance: do not modify."""
    st = asset_path(size)
    if not st.exists():
        raise FileNotFoundError(f"no proxy feature weights for size {size} ({st}); build with "
                                f"`python -m sqdf_bbo.oracles.proxy_features --build --size {size}`")
    verify_checksum(st)
    t = load_file(str(st))
    enc = make_encoder()
    enc.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("enc.")})
    z = ZScored(enc, t["feat_mean"], t["feat_std"])
    z.requires_grad_(False).eval()
    return z


def build(size: int = 16, n_fit: int = 16000, seed: int = 0, out: Path = ASSETS, argv=None) -> dict:
    from sqdf_bbo.data import build_patches

    t0 = time.time()
    x = build_patches(n_fit, size, "train", seed=seed + 200)
    enc = make_encoder()
    f = batched(enc, x).double()
    tensors = {f"enc.{k}": v.contiguous() for k, v in enc.state_dict().items()}
    tensors.update(feat_mean=f.mean(0).float(), feat_std=f.std(0).clamp(min=1e-6).float())
    out.mkdir(parents=True, exist_ok=True)
    st = out / f"proxy_features{size}.safetensors"
    save_file(tensors, str(st))
    meta = dict(what="proxy feature map for the image tier (not the oracle's encoder)",
                command="python -m sqdf_bbo.oracles.proxy_features " + " ".join(map(shlex.quote, argv or [])),
                size=size, seed=PROXY_SEED, widths=enc.widths, kernels=enc.kernels, strides=enc.strides,
                act=enc.act, feature_dim=enc.out_dim, n_fit=n_fit, patch_seed=seed + 200,
                torch=torch.__version__, wall_s=round(time.time() - t0, 1), sha256=write_checksum(st))
    st.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> None:
    build_cli("sqdf_bbo.oracles.proxy_features", build, argv)


if __name__ == "__main__":
    main()

"""RandAesthetic: an embedded, documented STAND-IN for the LAION aesthetic predictor.

Structure copied from CLIP + LAION head: a frozen embedding and a small fitted head.

1. Ground truth ``A(x)`` (hand-designed, what the head was fitted to): six statistics of an image
   x in [0,1]^{3xSxS}, each z-scored with its mean/std on natural training patches, *saturated* at
   its natural range and weighted (1, 1, .5, .5, .5, .5): colourfulness (Hasler-Suesstrunk), RMS
   luminance contrast, mean |Laplacian| of luminance (sharpness), left-right symmetry
   1 - mean|x - flip(x)|, centre-vs-frame colour difference (L2 of mean RGB of the central half vs the
   rest), exposure -|mean luminance - .5|. Saturation, twice (smooth, width ``SAT_WIDTH``): each
   z_i -> soft_min(z_i, c_i) with c_i the 99th percentile of z_i on the fit patches, then the weighted sum
   -> soft_min(sum, C) with C the best value of that sum on the 16k fit patches. So A < C: no image beats
   the best natural patch. Unsaturated, pixel ascent pushed A from natural values (held-out max 7.8) to
   29.8 with saturated high-frequency noise; with the per-statistic caps alone it still reached 10.3 (a
   natural patch never maxes all six at once). The build records the check for the final A
   (``ascent_a_max`` vs ``heldout_a_max`` in the JSON); telling a hacked image from a great natural one is
   the job of the ``aesthetic-manifold`` task's naturalness gate.
2. Encoder phi: seeded random conv net 3->32->64->128->256 (3x3, GELU, He-normal, seed 1234; strides
   1,2,2,1 at 16x16 and 1,2,2,2 at 32x32), global mean and std pooling -> 512 features, z-scored.
3. Oracle ``O(x) = w . phi_z(x) + b``: ridge (lambda = 10) fitted in closed form to A on 16k natural
   training patches; R^2 on held-out patches is stored in the JSON beside the weights.

O is differentiable and over-optimisable (its maximum is off the image manifold), like the real
predictor: log A beside O to see reward hacking. Build (commits weights + stats + sha256):

    python -m sqdf_bbo.oracles.rand_aesthetic --build --size 16
"""
from __future__ import annotations

import functools
import json
import shlex
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sqdf_bbo.data.checksum import verify_checksum, write_checksum
from sqdf_bbo.oracles.encoders import RandomConvEncoder, ZScored, batched, build_cli

ASSETS = Path(__file__).resolve().parents[1] / "tasks" / "assets"
GT_NAMES = ("colourfulness", "contrast", "sharpness", "symmetry", "centre_frame", "exposure")
GT_WEIGHTS = (1.0, 1.0, 0.5, 0.5, 0.5, 0.5)
PHI_SEED = 1234
RIDGE_LAMBDA = 10.0
SAT_QUANTILE = 0.99  # each z-scored statistic saturates at this quantile of natural fit patches
SAT_WIDTH = 0.25  # z units over which the saturation bends


def soft_min(z: torch.Tensor, cap: torch.Tensor, width: float = SAT_WIDTH) -> torch.Tensor:
    """Smooth min(z, cap) = cap - width * softplus((cap - z) / width); < cap everywhere, -> z far below."""
    return cap - width * F.softplus((cap - z) / width)


def _strides(size: int) -> list[int]:
    return [1, 2, 2, 1] if size <= 16 else [1, 2, 2, 2]


def make_phi(size: int) -> RandomConvEncoder:
    """The oracle's random encoder at resolution ``size`` (weights are later replaced by committed ones)."""
    return RandomConvEncoder([32, 64, 128, 256], [3, 3, 3, 3], _strides(size), act="gelu", seed=PHI_SEED)


def _std(v: torch.Tensor, dim) -> torch.Tensor:
    return (v.var(dim=dim, unbiased=False) + 1e-8).sqrt()


def gt_statistics(x: torch.Tensor) -> torch.Tensor:
    """The six raw statistics, (B, 3, H, W) in [0, 1] -> (B, 6) (order :data:`GT_NAMES`); differentiable."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colour = (_std(rg.flatten(1), 1) ** 2 + _std(yb.flatten(1), 1) ** 2).sqrt() + 0.3 * (
        rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2 + 1e-8).sqrt()
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    contrast = _std(lum.flatten(1), 1)
    lap_k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype, device=x.device)
    sharp = F.conv2d(lum[:, None], lap_k.view(1, 1, 3, 3)).abs().flatten(1).mean(1)
    sym = 1 - (x - x.flip(-1)).abs().flatten(1).mean(1)
    H, W = x.shape[-2:]
    mask = torch.zeros(H, W, dtype=x.dtype, device=x.device)
    mask[H // 4: H - H // 4, W // 4: W - W // 4] = 1
    centre = (x * mask).sum((-2, -1)) / mask.sum()
    frame = (x * (1 - mask)).sum((-2, -1)) / (1 - mask).sum()
    cf = ((centre - frame) ** 2).sum(1).add(1e-8).sqrt()
    expo = -(lum.flatten(1).mean(1) - 0.5).abs()
    return torch.stack([colour, contrast, sharp, sym, cf, expo], dim=1)


class RandAesthetic(nn.Module):
    """O(x) (B,) oracle, A(x) (B,) ground truth, features(x) (B, 512) z-scored phi. x: (B,3,S,S) in [0,1]."""

    def __init__(self, size: int, tensors: dict[str, torch.Tensor], meta: dict | None = None):
        super().__init__()
        self.size = size
        self.meta = meta or {}
        phi = make_phi(size)
        phi.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("phi.")})
        self.phi = ZScored(phi, tensors["feat_mean"], tensors["feat_std"])
        for k in ("gt_mean", "gt_std", "gt_cap", "gt_total_cap", "gt_weights", "head_w", "head_b"):
            self.register_buffer(k, tensors[k].float().clone())
        self.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi(x)

    def ground_truth(self, x: torch.Tensor) -> torch.Tensor:
        """A(x), (B,): saturated z-scored statistics, weighted, saturated again; < :attr:`ground_truth_bound`."""
        return bounded_score(gt_statistics(x), self.gt_mean, self.gt_std, self.gt_cap, self.gt_weights,
                             self.gt_total_cap)

    @property
    def ground_truth_bound(self) -> float:
        """sup_x A(x) = C, the best natural fit patch's (per-statistic saturated) score."""
        return float(self.gt_total_cap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi(x) @ self.head_w + self.head_b


def bounded_score(stats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cap: torch.Tensor,
                  weights: torch.Tensor, total_cap: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 6) raw statistics -> (B,) A = soft_min(sum_i w_i soft_min((s_i - mean_i) / std_i, cap_i), C);
    without ``total_cap`` C the outer saturation is skipped."""
    a = soft_min((stats - mean) / std, cap) @ weights
    return a if total_cap is None else soft_min(a, total_cap)


def pixel_ascent(score, x0: torch.Tensor, steps: int = 400, lr: float = 0.05) -> torch.Tensor:
    """Adam on sigmoid-parametrised pixels, maximising ``score`` (B,) from images x0 (B, 3, S, S) in [0, 1];
    the attack a collapsing fine-tuner approximates. Returns the final images (detached)."""
    p = torch.logit(x0.detach().clamp(1e-3, 1 - 1e-3)).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        loss = -score(torch.sigmoid(p)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.sigmoid(p).detach()



def asset_path(size: int) -> Path:
    return ASSETS / f"rand_aesthetic{size}.safetensors"


@functools.lru_cache(maxsize=4)
def load_rand_aesthetic(size: int = 16) -> RandAesthetic:
    """The committed oracle at resolution ``size`` (sha256-verified). Shared instance: do not modify."""
    st = asset_path(size)
    if not st.exists():
        have = sorted(p.stem for p in ASSETS.glob("rand_aesthetic*.safetensors"))
        raise FileNotFoundError(f"no RandAesthetic weights for size {size} ({st}); available: {have or 'none'};"
                                f" build with `python -m sqdf_bbo.oracles.rand_aesthetic --build --size {size}`")
    verify_checksum(st)
    meta = json.loads(st.with_suffix(".json").read_text())
    return RandAesthetic(size, load_file(str(st)), meta)


def ridge_fit(z: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge on centred targets: w = (Z'Z + lam I)^-1 Z'(y - ybar), b = ybar (float64)."""
    z, y = z.double(), y.double()
    ybar = y.mean()
    w = torch.linalg.solve(z.T @ z + lam * torch.eye(z.shape[1], dtype=z.dtype), z.T @ (y - ybar))
    return w, ybar


def build(size: int = 16, n_fit: int = 16000, n_val: int = 4000, seed: int = 0, out: Path = ASSETS,
          argv: list[str] | None = None) -> dict:
    """Fit and write rand_aesthetic<size>.safetensors/.json/.sha256; returns the metadata."""
    from sqdf_bbo.data import build_patches

    t0 = time.time()
    x = build_patches(n_fit, size, "train", seed=seed + 100)
    xv = build_patches(n_val, size, "heldout", seed=seed + 100)
    s = gt_statistics(x).double()
    gt_mean, gt_std = s.mean(0), s.std(0)
    gt_cap = torch.quantile((s - gt_mean) / gt_std, SAT_QUANTILE, dim=0)
    gt_w = torch.tensor(GT_WEIGHTS, dtype=torch.float64)
    gt_total_cap = bounded_score(s, gt_mean, gt_std, gt_cap, gt_w).max()
    a = bounded_score(s, gt_mean, gt_std, gt_cap, gt_w, gt_total_cap)
    av = bounded_score(gt_statistics(xv).double(), gt_mean, gt_std, gt_cap, gt_w, gt_total_cap)
    phi = make_phi(size)
    f = batched(phi, x).double()
    f_mean, f_std = f.mean(0), f.std(0).clamp(min=1e-6)
    w, b = ridge_fit((f - f_mean) / f_std, a, RIDGE_LAMBDA)
    pred_v = ((batched(phi, xv).double() - f_mean) / f_std) @ w + b
    r2 = 1 - ((pred_v - av) ** 2).mean() / av.var(unbiased=False)
    tensors = {f"phi.{k}": v.contiguous() for k, v in phi.state_dict().items()}
    tensors.update(feat_mean=f_mean.float(), feat_std=f_std.float(), gt_mean=gt_mean.float(),
                   gt_std=gt_std.float(), gt_cap=gt_cap.float(), gt_total_cap=gt_total_cap.float().reshape(()), gt_weights=gt_w.float(), head_w=w.float(),
                   head_b=b.float().reshape(()))
    oracle = RandAesthetic(size, tensors)
    # the hacking check of the docstring: pixel ascent on A and on O from held-out patches
    start = xv[:64]
    hacked_a = oracle.ground_truth(pixel_ascent(oracle.ground_truth, start))
    hacked_o = pixel_ascent(oracle, start)
    out.mkdir(parents=True, exist_ok=True)
    st = out / f"rand_aesthetic{size}.safetensors"
    save_file(tensors, str(st))
    meta = dict(
        what="RandAesthetic stand-in aesthetic oracle (see sqdf_bbo/oracles/rand_aesthetic.py)",
        command="python -m sqdf_bbo.oracles.rand_aesthetic " + " ".join(map(shlex.quote, argv or [])),
        size=size, phi_seed=PHI_SEED, phi_widths=phi.widths, phi_strides=phi.strides, ridge_lambda=RIDGE_LAMBDA,
        n_fit=n_fit, n_val=n_val, patch_seed=seed + 100, gt_names=list(GT_NAMES), gt_weights=list(GT_WEIGHTS),
        gt_saturation=dict(quantile=SAT_QUANTILE, width=SAT_WIDTH, caps_z=[round(float(c), 4) for c in gt_cap],
                           total_cap=round(float(gt_total_cap), 4)),
        heldout_a_max=round(float(av.max()), 4), heldout_a_p99=round(float(av.quantile(0.99)), 4),
        ascent_a_max=round(float(hacked_a.max()), 4), ascent_a_mean=round(float(hacked_a.mean()), 4),
        ascent_on_oracle_o_mean=round(float(oracle(hacked_o).mean()), 4),
        ascent_on_oracle_a_mean=round(float(oracle.ground_truth(hacked_o).mean()), 4),
        ascent="pixel_ascent(score, 64 held-out patches, 400 Adam steps, lr 0.05)",
        heldout_r2=round(float(r2), 4), fit_a_std=round(float(a.std()), 4),
        oracle_heldout_mean=round(float(pred_v.mean()), 4), oracle_heldout_std=round(float(pred_v.std()), 4),
        oracle_heldout_max=round(float(pred_v.max()), 4), torch=torch.__version__, wall_s=round(time.time() - t0, 1),
        sha256=write_checksum(st),
    )
    st.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv=None) -> None:
    build_cli("sqdf_bbo.oracles.rand_aesthetic", build, argv)


if __name__ == "__main__":
    main()

"""Embedded image tier: tiny pixel-space diffusion on natural 16x16 patches, three tasks.

    aesthetic          RandAesthetic stand-in oracle (sqdf_bbo/oracles/rand_aesthetic.py): frozen random
                       conv embedding + ridge head fitted to a hand-designed score A; differentiable.
                       ``extra_values`` logs A ("ground_truth_A") beside the oracle so hacking shows.
    compressibility    -(JPEG size in kB), Pillow, quality 95 (as in DDPO); not differentiable.
    incompressibility  +(JPEG size in kB); not differentiable.
    <task>-manifold    the same oracle, except that a design failing the naturalness gate (below) gets
                       ``worst_value``, the worst value any of the gate's 2000 held-out calibration
                       patches gets: the image analogue of the synthetic ``-manifold`` tasks. The plain
                       tasks stay the papers' protocol; the manifold ones cannot be won by hacking.

Designs are images (B, 3, S, S) in [0, 1] (S = 16 with the committed weights). Public pieces for
agents: the pretrained :class:`~sqdf_bbo.backbones.unet.PixelUNet` and the proxy feature map
(:mod:`sqdf_bbo.oracles.proxy_features`, 256-d, not the oracle's encoder). Harness-side metrics use the
oracle's z-scored 512-d random features phi ("fixed feature space"): diversity (cosine Vendi, mean
pairwise distance) and naturalness (Fréchet distance to held-out patches, and the pretrained model's
denoising loss on the samples).

Validity (:meth:`ImageTask.valid_mask`, :class:`NaturalnessGate`): a design is invalid when its
unnaturalness score, the larger of two statistics each divided by its 99th percentile on held-out natural
patches, is above the 99th percentile of that score on the same patches (so 1 % of them fail; other
held-out patches fail at about the same rate). Calibrated once per process and patch size from natural
patches, in a feature space that is neither the oracle's phi nor the proxy's encoder (no weights involved,
so retraining the UNet does not move it):
  texture  Mahalanobis distance in pixel space under a Gaussian (Ledoit-Wolf shrunk covariance) fitted
           to natural train patches; natural images are spatially correlated, noise is not.
  colour   distance to the 10th nearest train patch in 15 standardised colour/texture features (2x2
           block mean colours, per-channel log RMS of the detail left); flags flat or saturated colour
           fields that no photo has.
The cosine Vendi in phi is won by noise (128 uniform-noise images 12.5, 128 held-out patches 7.7), hence
``vendi_valid``, the same Vendi over the valid designs only (docs/design.md, Diversity).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
from typing import Optional

import numpy as np
import torch

from sqdf_bbo.tasks import check_overrides
from sqdf_bbo.tasks.base import RunDefaults, Task, TaskInfo

Tensor = torch.Tensor

#: overridable settings (``make_task("aesthetic", num_steps=30)``) and their defaults
DEFAULTS = {
    "unet": "unet16",  # committed weights in sqdf_bbo/backbones/weights/
    "num_steps": 20,  # DDIM steps (eta 1); see docs/tasks/image.md for the time budget behind 20
    "n_eval": 256,
    "batch_size": 64,
    "noise_std": None,  # None: the task's own default (below)
    "fd_reference": 5000,  # held-out patches for the Fréchet-distance reference statistics
}
NOISE_DEFAULT = {"aesthetic": 0.1, "compressibility": 0.005, "incompressibility": 0.005}  # by base task
JPEG_QUALITY = 95


def _unet_size(name: str) -> int:
    from sqdf_bbo.backbones.unet import WEIGHTS_DIR

    js = WEIGHTS_DIR / f"{name}.json"
    if not js.exists():
        have = sorted(p.stem for p in WEIGHTS_DIR.glob("unet*.json"))
        raise ValueError(f"unknown unet {name!r}; available: {', '.join(have) or 'none'}")
    return int(json.loads(js.read_text())["unet_config"]["sample_size"])


@functools.lru_cache(maxsize=4)
def _reference_stats(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of phi features of ``n`` held-out patches (float64)."""
    from sqdf_bbo.data import build_patches
    from sqdf_bbo.oracles.encoders import batched
    from sqdf_bbo.oracles.rand_aesthetic import load_rand_aesthetic

    x = build_patches(n, size, "heldout", seed=7)
    f = batched(load_rand_aesthetic(size).features, x).double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


#: validity gate calibration: fit / calibration patch counts and seeds, quantile, neighbours
GATE_N_FIT, GATE_N_CAL, GATE_SEEDS, GATE_QUANTILE, GATE_K = 5000, 2000, (101, 102), 0.99, 10


def _colour_texture(x: Tensor) -> Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, 15) float64: 2x2 block mean colours (12) and per-channel log RMS of
    the detail left after subtracting them (3, floored at 1/255)."""
    x = x.double()
    S = x.shape[-1]
    blocks = torch.nn.functional.avg_pool2d(x, S // 2)  # (B, 3, 2, 2)
    detail = x - blocks.repeat_interleave(S // 2, -1).repeat_interleave(S // 2, -2)
    return torch.cat([blocks.flatten(1), torch.log(detail.pow(2).mean((2, 3)).sqrt() + 1 / 255)], 1)


def _ledoit_wolf(X: Tensor) -> Tensor:
    """Ledoit-Wolf (2004) shrunk covariance (F, F) of centred rows X (n, F): (1 - r) S + r tr(S)/F I."""
    n, F = X.shape
    S = X.T @ X / n
    mu = torch.trace(S) / F
    delta = ((S - mu * torch.eye(F, dtype=S.dtype)) ** 2).sum()
    beta = ((X * X).sum(1).pow(2).sum() / n - (S * S).sum()) / n
    r = torch.clamp(beta / delta, 0.0, 1.0)
    return (1 - r) * S + r * mu * torch.eye(F, dtype=S.dtype)


@dataclasses.dataclass(frozen=True)
class NaturalnessGate:
    """Two statistics per image (see the module docstring), their held-out scales and the score threshold.

    mean (D,), precision (D, D): pixel Gaussian of train patches (D = 3 S^2, pixels in [0, 1]);
    bank (N, 15): standardised colour/texture features of N train patches, scaled by ``ct_mean``/``ct_std``;
    scales (2,): quantile ``GATE_QUANTILE`` of each statistic on held-out calibration patches;
    threshold (): quantile ``GATE_QUANTILE`` of :meth:`score` on the same patches.
    """

    mean: Tensor
    precision: Tensor
    ct_mean: Tensor
    ct_std: Tensor
    bank: Tensor
    scales: Tensor
    threshold: Tensor

    def statistics(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, 2) float64: [pixel Mahalanobis^2, colour/texture kNN distance]."""
        d = x.flatten(1).double() - self.mean
        maha = ((d @ self.precision) * d).sum(1)
        ct = (_colour_texture(x) - self.ct_mean) / self.ct_std
        knn = torch.cdist(ct, self.bank).topk(GATE_K, dim=1, largest=False).values[:, -1]
        return torch.stack([maha, knn], 1)

    def score(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> (B,) float64 unnaturalness: max over the two statistics of stat / scale."""
        return (self.statistics(x) / self.scales).max(1).values

    def passes(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) in [0, 1] -> (B,) bool: unnaturalness score at or below the threshold."""
        return self.score(x) <= self.threshold


@functools.lru_cache(maxsize=4)
def naturalness_gate(size: int) -> NaturalnessGate:
    """The validity gate for S x S patches, fitted on train patches and calibrated on held-out ones (fixed
    seeds, a second or two on one CPU core; cached per process)."""
    from sqdf_bbo.data import build_patches

    fit = build_patches(GATE_N_FIT, size, "train", seed=GATE_SEEDS[0])
    cal = gate_calibration_patches(size)
    X = fit.flatten(1).double()
    mean = X.mean(0)
    precision = torch.linalg.inv(_ledoit_wolf(X - mean))
    ct = _colour_texture(fit)
    ct_mean, ct_std = ct.mean(0), ct.std(0)
    gate = NaturalnessGate(mean, precision, ct_mean, ct_std, (ct - ct_mean) / ct_std, torch.ones(2),
                           torch.tensor(0.0))
    gate = dataclasses.replace(gate, scales=torch.quantile(gate.statistics(cal), GATE_QUANTILE, dim=0))
    return dataclasses.replace(gate, threshold=torch.quantile(gate.score(cal), GATE_QUANTILE))


@functools.lru_cache(maxsize=4)
def gate_calibration_patches(size: int) -> Tensor:
    """The held-out patches the gate is calibrated on, (GATE_N_CAL, 3, S, S) in [0, 1]."""
    from sqdf_bbo.data import build_patches

    return build_patches(GATE_N_CAL, size, "heldout", seed=GATE_SEEDS[1])


@functools.lru_cache(maxsize=2)
def _frozen_unet(name: str):
    from sqdf_bbo.backbones.unet import load_pretrained_unet

    return load_pretrained_unet(name)


def jpeg_kb(images: Tensor, quality: int = JPEG_QUALITY) -> Tensor:
    """JPEG file size in kB (1000 bytes) of each image, (B, 3, H, W) in [0, 1] -> (B,) float64.

    Images are clamped, rounded to uint8 and saved by Pillow at ``quality`` (default 4:2:0 subsampling).
    """
    from PIL import Image

    x = torch.as_tensor(images).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for im in arr:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(buf.tell() / 1000.0)
    return torch.tensor(out, dtype=torch.float64)


def images_as_uint8(designs: Tensor) -> np.ndarray:
    """Images in [0, 1], (n, 3, H, W), as uint8 (values outside [0, 1] are clipped by the image format)."""
    return (torch.as_tensor(designs).detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def render_image_panels(designs: Tensor, path: str, title: str = "", reference: Optional[Tensor] = None,
                        reference_label: str = "pretrained", ncol: int = 8) -> None:
    """A PNG with a grid of ``designs`` (B, 3, H, W) in [0, 1] and, if given, a grid of ``reference`` beside it."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure manager

    panels = [("samples", designs)] + ([(reference_label, reference)] if reference is not None else [])
    fig = Figure(figsize=(4.2 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, d) in zip(axes[0], panels):
        ax.imshow(image_grid(d, ncol=ncol), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def image_grid(images: Tensor, ncol: int = 8, pad: int = 1) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (rows*(H+pad)+pad, ncol*(W+pad)+pad, 3) float array, white padding."""
    x = torch.as_tensor(images).detach().float().cpu().clamp(0, 1)
    B, _, H, W = x.shape
    ncol = max(1, min(ncol, B))
    nrow = -(-B // ncol)
    grid = np.ones((nrow * (H + pad) + pad, ncol * (W + pad) + pad, 3), dtype=np.float32)
    for i, im in enumerate(x.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, ncol)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = im
    return grid


def proxy_features(size: int, x: Tensor) -> Tensor:
    """The agent's feature map (TaskInfo.features; no reference to the task): (B, 3, S, S) in [0, 1] ->
    (B, 256) z-scored features of a frozen random conv net that is not the oracle's; differentiable."""
    from sqdf_bbo.oracles.proxy_features import load_proxy_features

    return load_proxy_features(size)(x)


class ImageTask(Task):
    """Base for the image tasks: shared design space, backbone, proxy features and metrics.

    ``kind`` is the base task; ``manifold=True`` makes the ``<kind>-manifold`` variant (module docstring).
    """

    kind = ""

    def __init__(self, manifold: bool = False, **overrides):
        self.manifold = manifold
        name = f"{self.kind}-manifold" if manifold else self.kind
        check_overrides(name, overrides, DEFAULTS)
        cfg = dict(DEFAULTS, **overrides)
        for key in ("num_steps", "n_eval", "batch_size", "fd_reference"):
            v = cfg[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < (2 if key == "fd_reference" else 1):
                raise ValueError(f"{key} must be a positive integer for task {name!r}, got {v!r}")
        noise = NOISE_DEFAULT[self.kind] if cfg["noise_std"] is None else cfg["noise_std"]
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
            raise ValueError(f"noise_std must be a number >= 0 for task {name!r}, got {noise!r}")
        self.cfg = cfg
        self.noise_std = float(noise)
        self.size = _unet_size(cfg["unet"])
        S, n_steps = self.size, cfg["num_steps"]
        from sqdf_bbo.oracles.proxy_features import FEATURE_DIM

        self.info = TaskInfo(
            name=name,
            tier="image",
            design_shape=(3, S, S),
            make_backbone=functools.partial(_load_backbone, cfg["unet"]),
            features=functools.partial(proxy_features, S),
            feature_dim=FEATURE_DIM,
            bounds=(torch.zeros(3, S, S), torch.ones(3, S, S)),
            run_defaults=RunDefaults(n_eval=cfg["n_eval"], batch_size=cfg["batch_size"]),
            agent_defaults={"num_steps": n_steps, "eta": 1.0, "sample_batch": 64},
            num_steps=n_steps,
            # zero-argument CM factory read by sqdf_bbo.consistency.find_consistency_model
            make_consistency_model=functools.partial(_load_consistency, cfg["unet"]),
        )

    # -- harness only --
    def _check(self, designs: Tensor) -> Tensor:
        x = torch.as_tensor(designs)
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"task {self.info.name!r} expects designs of shape (B, 3, {self.size}, {self.size}), "
                             f"got {tuple(x.shape)}")
        return x.float()

    def phi(self, designs: Tensor) -> Tensor:
        """Fixed evaluation feature space: the oracle encoder's z-scored features, (B, 512) float64."""
        from sqdf_bbo.oracles.encoders import batched
        from sqdf_bbo.oracles.rand_aesthetic import load_rand_aesthetic

        return batched(load_rand_aesthetic(self.size).features, self._check(designs).clamp(0, 1)).double()

    def frechet_distance(self, designs: Tensor) -> float:
        """Fréchet distance (features^2) between Gaussian fits of phi(designs) and of held-out patches."""
        from sqdf_bbo.metrics import gaussian_frechet

        f = self.phi(designs).numpy()
        if f.shape[0] < 2:
            raise ValueError(f"need at least 2 designs for a Fréchet distance, got {f.shape[0]}")
        mu, cov = _reference_stats(self.size, self.cfg["fd_reference"])
        return gaussian_frechet(f.mean(0), np.cov(f, rowvar=False), mu, cov)

    def denoising_loss(self, designs: Tensor) -> Tensor:
        """Pretrained model's eps-MSE on the designs (10 fixed timesteps, fixed noise), (B,) float64."""
        m = _frozen_unet(self.cfg["unet"])
        x = self._check(designs).clamp(0, 1)
        return torch.cat([m.denoising_loss(m.encode(x[i:i + 256])) for i in range(0, len(x), 256)])

    def naturalness(self, designs: Tensor) -> dict[str, float]:
        x = self._check(designs)
        out = {"denoise_loss": float(self.denoising_loss(x).mean())}
        if x.shape[0] >= 2:
            out["fd_phi"] = self.frechet_distance(x)
            out["fd_n"] = int(x.shape[0])
        return out

    def valid_mask(self, designs: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B,) bool: passes the :func:`naturalness_gate` (99 % of its calibration patches and
        about 98.6 % of other held-out natural patches do; uniform noise and flat saturated colours do not)."""
        return naturalness_gate(self.size).passes(self._check(designs).clamp(0, 1))

    def diversity_features(self, designs: Tensor) -> Tensor:
        return self.phi(designs)

    def oracle_value(self, designs: Tensor) -> Tensor:
        """The base task's noiseless value, (B,) float64 (subclasses)."""
        raise NotImplementedError

    @functools.cached_property
    def worst_value(self) -> float:
        """The worst base-oracle value among the gate's held-out calibration patches (manifold penalty)."""
        return float(self.oracle_value(gate_calibration_patches(self.size)).min())

    def evaluate_true(self, designs: Tensor) -> Tensor:
        """Noiseless oracle, (B,) float64; on ``-manifold`` tasks an unnatural design gets :attr:`worst_value`."""
        x = self._check(designs)
        y = self.oracle_value(x)
        if self.manifold:
            y = torch.where(self.valid_mask(x), y, torch.full_like(y, self.worst_value))
        return y

    vendi_bandwidth: Optional[float] = None  # cosine kernel on z-scored phi features
    render_each_round = True

    def design_array(self, designs: Tensor) -> np.ndarray:
        return images_as_uint8(designs)

    def render(self, designs: Tensor, path: str, title: str = "", reference: Optional[Tensor] = None,
               max_images: int = 64, reference_label: str = "pretrained") -> None:
        """PNG grid of up to ``max_images`` designs (and of ``reference`` designs beside them, if given)."""
        render_image_panels(self._check(designs)[:max_images], path, title,
                            None if reference is None else self._check(reference)[:max_images], reference_label)


def _load_backbone(name: str):
    from sqdf_bbo.backbones.unet import load_pretrained_unet

    return load_pretrained_unet(name)


def _load_consistency(name: str):
    from sqdf_bbo.consistency import load_consistency_unet

    return load_consistency_unet(name)


class AestheticTask(ImageTask):
    """RandAesthetic oracle O(x); ``extra_values`` gives the ground truth A(x) it was fitted to."""

    kind = "aesthetic"
    differentiable = True

    def _oracle(self):
        from sqdf_bbo.oracles.rand_aesthetic import load_rand_aesthetic

        return load_rand_aesthetic(self.size)

    def oracle_value(self, designs: Tensor) -> Tensor:
        from sqdf_bbo.oracles.encoders import batched

        return batched(self._oracle(), self._check(designs).clamp(0, 1)).double()

    def extra_values(self, designs: Tensor) -> dict[str, Tensor]:
        from sqdf_bbo.oracles.encoders import batched

        return {"ground_truth_A": batched(self._oracle().ground_truth, self._check(designs).clamp(0, 1)).double()}


class CompressibilityTask(ImageTask):
    """-(JPEG size in kB) at quality 95 (DDPO's compressibility); not differentiable."""

    kind = "compressibility"
    sign = -1.0

    def oracle_value(self, designs: Tensor) -> Tensor:
        return self.sign * jpeg_kb(self._check(designs))


class IncompressibilityTask(CompressibilityTask):
    """+(JPEG size in kB) at quality 95 (DDPO's incompressibility); not differentiable."""

    kind = "incompressibility"
    sign = 1.0


def _factory(cls: type, manifold: bool):
    def make(**overrides) -> ImageTask:
        check_overrides(f"{cls.kind}-manifold" if manifold else cls.kind, overrides, DEFAULTS)
        return cls(manifold=manifold, **overrides)

    return make


#: the factories the ``sqdf_bbo.tasks`` entry points name (pyproject.toml): ``make_aesthetic``, ``make_aesthetic_manifold``, ...
for _cls in (AestheticTask, CompressibilityTask, IncompressibilityTask):
    globals()[f"make_{_cls.kind}"] = _factory(_cls, False)
    globals()[f"make_{_cls.kind}_manifold"] = _factory(_cls, True)

"""Synthetic vector tasks: BoTorch test functions (maximised) with a known Gaussian-mixture prior.

Each task has
- an oracle f = ``botorch.test_functions.<Fn>(dim, negate=True).evaluate_true`` on designs clamped
  to the function's bounds (the harness adds N(0, noise_std^2) observation noise);
- a *prior* over designs, the distribution the pretrained diffusion model was trained on: an equal-
  weight mixture of K = 8 isotropic Gaussians (std ``PRIOR_STD`` = 0.15) in the normalised space
  u = 2 (x - lo)/(hi - lo) - 1, with modes drawn uniformly in [-0.6, 0.6]^d from a seed fixed per
  function and kept at least 0.5 away from the function's optimiser (so the prior is not centred on the
  optimum). Its log-density is exact: log p_x(x) = log p_u(u(x)) + sum_i log(2 / (hi_i - lo_i));
- ``noise_std`` = 0.1 x the std of f under the prior (fixed 10k-sample estimate; overridable);
- a ``-manifold`` variant whose oracle returns ``worst_value`` (the minimum of f over 10k prior samples)
  for invalid designs: prior log-density below the 1st percentile of prior samples' log-densities.

Naturalness = mean prior log-density and the invalid fraction; diversity is measured in u-space with an
RBF kernel whose bandwidth is the median pairwise distance of 1000 prior samples, over all designs
(``vendi``) and over the valid ones (``vendi_valid``, validity = the ``-manifold`` rule above).
"""
from __future__ import annotations

import functools

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from botorch.test_functions import synthetic as bt

from sqdf_bbo.consistency import register_consistency_finder
from sqdf_bbo.tasks import check_overrides
from sqdf_bbo.tasks.base import RunDefaults, Task, TaskInfo

Tensor = torch.Tensor

PRIOR_MODES = 8
PRIOR_STD = 0.15
MODE_RANGE = 0.6
MIN_MODE_DIST_TO_OPT = 0.5

#: name -> (BoTorch class, constructor kwargs)
FUNCTIONS: dict[str, tuple[type, dict]] = {
    "ackley": (bt.Ackley, {"dim": 8}),
    "levy": (bt.Levy, {"dim": 8}),
    "rastrigin": (bt.Rastrigin, {"dim": 8}),
    "rosenbrock": (bt.Rosenbrock, {"dim": 8}),
    "hartmann6": (bt.Hartmann, {"dim": 6}),
    "styblinski-tang": (bt.StyblinskiTang, {"dim": 8}),
}
PRIOR_NAMES = list(FUNCTIONS)


@dataclass
class GaussianMixturePrior:
    """Equal-weight mixture of isotropic Gaussians in u-space. means: (K, d); std: scalar."""

    means: Tensor
    std: float

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_prob(self, u: Tensor) -> Tensor:
        """(B, d) -> (B,) float64 exact log-density."""
        u = u.double()
        d = self.dim
        sq = ((u[:, None, :] - self.means.double()[None]) ** 2).sum(-1)  # (B, K)
        log_comp = -sq / (2 * self.std**2) - d * math.log(self.std) - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(log_comp, dim=1) - math.log(self.means.shape[0])

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """(n, d) float64 samples."""
        idx = torch.randint(0, self.means.shape[0], (n,), generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self.means.double()[idx] + self.std * z


def _make_function(name: str):
    cls, kw = FUNCTIONS[name]
    return cls(negate=True, **kw)


@lru_cache(maxsize=None)
def make_prior_and_bounds(name: str) -> tuple[GaussianMixturePrior, Tensor, Tensor]:
    """The fixed prior of a function family and its bounds lo, hi: (d,) float64."""
    fn = _make_function(name)
    lo, hi = fn.bounds[0].double(), fn.bounds[1].double()
    d = lo.shape[0]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    opt_u = None
    if getattr(fn, "_optimizers", None):
        opt_u = 2 * (torch.tensor(fn._optimizers[0], dtype=torch.float64) - lo) / (hi - lo) - 1
    means = []
    while len(means) < PRIOR_MODES:
        m = torch.from_numpy(rng.uniform(-MODE_RANGE, MODE_RANGE, size=d))
        if opt_u is not None and torch.linalg.norm(m - opt_u) < MIN_MODE_DIST_TO_OPT:
            continue
        means.append(m)
    return GaussianMixturePrior(torch.stack(means), PRIOR_STD), lo, hi


# -- the public pieces an agent gets (TaskInfo): they hold no reference to the task or its oracle --
def load_backbone(base: str, lo: Tensor, hi: Tensor):
    """The committed pretrained MLP denoiser of prior ``base`` (decodes to the box [lo, hi])."""
    from sqdf_bbo.backbones.mlp import load_mlp

    return load_mlp(base, lo, hi)


class UnitBoxFeatures(torch.nn.Module):
    """Proxy feature map: the normalised design u = 2 (x - lo)/(hi - lo) - 1 in [-1, 1]^d, differentiable."""

    def __init__(self, lo: Tensor, hi: Tensor):
        super().__init__()
        self.register_buffer("lo", lo.clone())
        self.register_buffer("hi", hi.clone())

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self.lo.to(x.dtype).to(x.device), self.hi.to(x.dtype).to(x.device)
        return 2 * (x - lo) / (hi - lo) - 1


class SyntheticTask(Task):
    """A BoTorch function with a Gaussian-mixture prior; see the module docstring."""

    tier = "synthetic"

    def __init__(self, base: str, manifold: bool = False, noise_std: Optional[float] = None,
                 num_steps: int = 50):
        self.base = base
        self.manifold = manifold
        self.fn = _make_function(base)
        self.prior, self.lo, self.hi = make_prior_and_bounds(base)
        stats = _prior_stats(base)
        self.worst_value = stats["worst_value"]
        self.logpdf_threshold = stats["logpdf_p01"]
        self.noise_std = float(0.1 * stats["value_std"] if noise_std is None else _noise_std(noise_std))
        self.optimal_value = float(self.fn.optimal_value)
        self.differentiable = True
        self.vendi_bandwidth = stats["median_pairwise_u"]
        name = f"{base}-manifold" if manifold else base
        lo32, hi32 = self.lo.float(), self.hi.float()
        self.info = TaskInfo(
            name=name,
            tier="synthetic",
            design_shape=(self.prior.dim,),
            make_backbone=functools.partial(load_backbone, base, lo32, hi32),
            features=UnitBoxFeatures(lo32, hi32),
            feature_dim=self.prior.dim,
            bounds=(lo32, hi32),
            run_defaults=RunDefaults(n_eval=256, batch_size=64),
            agent_defaults={"num_steps": num_steps},
            num_steps=num_steps,
        )

    # -- harness-only pieces --
    def to_u(self, x: Tensor) -> Tensor:
        return 2 * (x.double() - self.lo) / (self.hi - self.lo) - 1

    def log_density(self, x: Tensor) -> Tensor:
        """Exact prior log-density in design space, (B, d) -> (B,)."""
        jac = torch.log(2 / (self.hi - self.lo)).sum()
        return self.prior.log_prob(self.to_u(x)) + jac

    def invalid(self, x: Tensor) -> Tensor:
        """(B,) bool: prior log-density (u-space) below the 1st percentile of prior samples."""
        return self.prior.log_prob(self.to_u(x)) < self.logpdf_threshold

    def valid_mask(self, designs: Tensor) -> Tensor:
        """(B, d) -> (B,) bool: not :meth:`invalid` (prior log-density at or above its 1st percentile)."""
        return ~self.invalid(torch.as_tensor(designs).double().reshape(-1, self.prior.dim))

    def evaluate_true(self, designs: Tensor) -> Tensor:
        x = torch.as_tensor(designs).double().reshape(-1, self.prior.dim)
        x_c = torch.maximum(torch.minimum(x, self.hi), self.lo)
        y = self.fn(x_c, noise=False).double()  # forward applies negate; evaluate_true does not
        if self.manifold:
            y = torch.where(self.invalid(x), torch.full_like(y, self.worst_value), y)
        return y

    def naturalness(self, designs: Tensor) -> dict[str, float]:
        x = torch.as_tensor(designs).double()
        return {"prior_logpdf": float(self.log_density(x).mean()),
                "invalid_frac": float(self.invalid(x).double().mean())}

    def diversity_features(self, designs: Tensor) -> Tensor:
        return self.to_u(torch.as_tensor(designs))

    def render(self, designs: Tensor, path: str, title: str = "", reference: Optional[Tensor] = None) -> None:
        """Scatter of designs projected on the prior means' top-2 principal axes over the prior density."""
        from matplotlib.figure import Figure  # no pyplot: no global backend, no figure manager

        means = self.prior.means.double()
        centre = means.mean(0)
        _, _, vt = torch.linalg.svd(means - centre, full_matrices=False)
        P = vt[:2].T  # (d, 2) orthonormal
        proj = lambda x: ((self.to_u(x) - centre) @ P).numpy()  # noqa: E731
        pm = ((means - centre) @ P).numpy()
        pts = proj(torch.as_tensor(designs))
        allp = np.concatenate([pts, pm])
        lo_, hi_ = allp.min(0) - 0.5, allp.max(0) + 0.5
        gx, gy = np.meshgrid(np.linspace(lo_[0], hi_[0], 200), np.linspace(lo_[1], hi_[1], 200))
        s2 = self.prior.std**2  # isotropic: the 2-D marginal along orthonormal axes is a GMM with the same std
        dens = sum(np.exp(-((gx - m[0]) ** 2 + (gy - m[1]) ** 2) / (2 * s2)) for m in pm) / (len(pm) * 2 * np.pi * s2)
        fig = Figure(figsize=(5, 5))
        ax = fig.subplots()
        ax.contourf(gx, gy, dens, levels=12, cmap="Greys")
        if reference is not None:
            r = proj(torch.as_tensor(reference))
            ax.scatter(r[:, 0], r[:, 1], s=6, c="tab:blue", alpha=0.5, label="pretrained")
        ax.scatter(pts[:, 0], pts[:, 1], s=6, c="tab:red", alpha=0.6, label="samples")
        ax.set_xlabel("prior PC 1 (normalised units)")
        ax.set_ylabel("prior PC 2 (normalised units)")
        ax.set_title(title or self.name)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)


@lru_cache(maxsize=None)
def _prior_stats(base: str) -> dict[str, float]:
    """Fixed-seed statistics of f and of the log-density under the prior (10k samples)."""
    prior, lo, hi = make_prior_and_bounds(base)
    fn = _make_function(base)
    g = torch.Generator().manual_seed(12345)
    u = prior.sample(10_000, g)
    x = lo + (u + 1) / 2 * (hi - lo)
    x = torch.maximum(torch.minimum(x, hi), lo)
    y = fn(x, noise=False).double()
    lp = prior.log_prob(u)
    sub = u[:1000]
    dist = torch.cdist(sub, sub)
    iu = torch.triu_indices(1000, 1000, offset=1)
    return {
        "value_std": float(y.std()),
        "worst_value": float(y.min()),
        "logpdf_p01": float(torch.quantile(lp, 0.01)),
        "median_pairwise_u": float(dist[iu[0], iu[1]].median()),
    }


def _noise_std(value) -> float:
    """A finite float >= 0 (numbers or numeric strings); one-line ValueError naming the value otherwise."""
    try:
        v = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {value!r}")
    return v


def _factory(base: str, manifold: bool):
    allowed = {"noise_std": None, "num_steps": 50}

    def make(**overrides) -> SyntheticTask:
        name = f"{base}-manifold" if manifold else base
        check_overrides(name, overrides, allowed)
        steps = overrides.get("num_steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {steps!r}")
        return SyntheticTask(base, manifold=manifold, **overrides)

    return make


def find_consistency(task_info: TaskInfo, reference, num_steps: int):
    """The committed consistency model of a synthetic task's MLP for a DDIM grid of ``num_steps`` (one per
    prior: ``-manifold`` shares its function's), read by ``sqdf_bbo.consistency.find_consistency_model``."""
    from sqdf_bbo.consistency import load_consistency_mlp

    return load_consistency_mlp(task_info.name.removesuffix("-manifold"), reference.lo, reference.hi, num_steps)


register_consistency_finder("synthetic", find_consistency)

#: the factories the ``sqdf_bbo.tasks`` entry points name (pyproject.toml): ``make_levy``, ``make_levy_manifold``, ...
for _name in FUNCTIONS:
    globals()[f"make_{_name.replace('-', '_')}"] = _factory(_name, False)
    globals()[f"make_{_name.replace('-', '_')}_manifold"] = _factory(_name, True)

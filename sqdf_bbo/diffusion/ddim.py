"""The denoising MDP of a DDIM sampler with stochasticity eta.

Generation order k = 0..N: x_0 ~ N(0, I) is pure noise, step k maps x_k -> x_{k+1} at DDIM timestep
tau_k (descending), and x_N is the clean sample (the convention every baseline uses). Every schedule number
(alphas_cumprod, timesteps, final alpha) is read from the backbone's scheduler: the embedded backbones'
``sqdf_bbo.diffusion.scheduler.NoiseScheduler`` (diffusers' ``DDIMScheduler`` arithmetic, tested bit-equal),
or for any other scheduler (Stable Diffusion's) a diffusers ``DDIMScheduler`` built from its config.

Per step, with a_k = alphabar[tau_k] and a_k^- = alphabar[tau_k - T/N] (or the scheduler's
``final_alpha_cumprod`` when that index is negative):

    s_k   = eta * sqrt((1 - a^-)/(1 - a)) * sqrt(1 - a/a^-)          policy std
    mu_k  = sqrt(a^-) x0_hat + sqrt(1 - a^- - s_k^2) eps_hat          = A_k x_k + C_k eps_hat
    x0_hat = (x_k - sqrt(1 - a) eps_hat) / sqrt(a)                    Tweedie (eps-prediction)

All per-sample reductions sum over every non-batch dimension unless ``reduction="mean"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.utils.checkpoint

Tensor = torch.Tensor


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample vector (B,) or scalar against a batch ``like`` (B, ...)."""
    v = v.to(like.dtype).to(like.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


@dataclass
class DDIMSchedule:
    """Per-step coefficients of an N-step DDIM sampler, all tensors of shape (N,) in float64.

    Build with :meth:`from_scheduler`; index k is the generation step (k = 0 is the noisiest).
    """

    scheduler: Any  # a fresh copy of the backbone's scheduler with these timesteps set
    num_steps: int
    eta: float
    timesteps: Tensor  # (N,) long, tau_k, descending
    alpha: Tensor  # (N,) a_k
    alpha_prev: Tensor  # (N,) a_k^-
    std: Tensor  # (N,) s_k
    coef_x: Tensor  # (N,) A_k
    coef_eps: Tensor  # (N,) C_k

    @classmethod
    def from_scheduler(cls, scheduler: Any, num_steps: int, eta: float = 1.0) -> "DDIMSchedule":
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        from sqdf_bbo.diffusion.scheduler import NoiseScheduler

        if isinstance(scheduler, NoiseScheduler):
            sched = NoiseScheduler.from_config(scheduler.config)
        else:  # e.g. Stable Diffusion's: its settings, diffusers' DDIM arithmetic
            from diffusers import DDIMScheduler

            sched = DDIMScheduler.from_config(scheduler.config)
        sched.set_timesteps(num_steps)
        ts = sched.timesteps.long().clone()
        acp = sched.alphas_cumprod.double()
        step = sched.config.num_train_timesteps // num_steps
        prev = ts - step
        final = torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float64)
        a = acp[ts]
        a_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], final)
        std = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        if eta > 0 and bool((std <= 0).any()):
            k = int(torch.nonzero(std <= 0)[0])
            raise ValueError(
                f"step {k} (timestep {int(ts[k])}) has zero std with eta={eta}: log-probs and KLs would divide "
                "by zero; use a scheduler with set_alpha_to_one=False and steps_offset=1 "
                "(sqdf_bbo.backbones.default_scheduler)"
            )
        coef_x = torch.sqrt(a_prev / a)
        coef_eps = torch.sqrt((1 - a_prev - std**2).clamp(min=0)) - torch.sqrt(a_prev * (1 - a) / a)
        return cls(sched, num_steps, float(eta), ts, a, a_prev, std, coef_x, coef_eps)

    # ---- per-step maps -------------------------------------------------------------------------
    def _k(self, k: int | Tensor, like: Tensor, table: Tensor) -> Tensor:
        if isinstance(k, int):
            return table[k].to(like.dtype).to(like.device)
        return _expand(table[k.cpu().long()], like)

    def predict_x0(self, x: Tensor, eps: Tensor, k: int | Tensor) -> Tensor:
        """Tweedie estimate of the clean sample from x_k and the noise prediction at step k."""
        a = self._k(k, x, self.alpha)
        return (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)

    def mean(self, x: Tensor, eps: Tensor, k: int | Tensor) -> Tensor:
        """Transition mean mu_k = A_k x_k + C_k eps_hat; differentiable in x and eps."""
        return self._k(k, x, self.coef_x) * x + self._k(k, x, self.coef_eps) * eps

    def step_std(self, k: int | Tensor, like: Tensor) -> Tensor:
        """s_k broadcast against ``like``."""
        return self._k(k, like, self.std)

    def step(self, x: Tensor, eps: Tensor, k: int | Tensor, noise: Optional[Tensor] = None):
        """One stochastic transition. Returns (x_next, mean, std) with x_next = mean + std * noise."""
        mu = self.mean(x, eps, k)
        s = self.step_std(k, x)
        if noise is None:
            return mu, mu, s
        return mu + s * noise, mu, s

    def timestep_batch(self, k: int | Tensor, batch: int, device=None) -> Tensor:
        """Model timesteps tau_k as a (B,) long tensor."""
        if isinstance(k, int):
            return self.timesteps[k].repeat(batch).to(device)
        return self.timesteps[k.cpu().long()].to(device)


# ---- densities -----------------------------------------------------------------------------------
def _reduce(v: Tensor, reduction: str) -> Tensor:
    dims = tuple(range(1, v.ndim))
    if reduction == "sum":
        return v.sum(dim=dims)
    if reduction == "mean":
        return v.mean(dim=dims)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def log_prob(x_next: Tensor, mean: Tensor, std: Tensor, reduction: str = "sum") -> Tensor:
    """log N(x_next; mean, std^2 I) per sample, shape (B,). x_next is treated as data (detached)."""
    x_next = x_next.detach()
    std = std.to(mean.dtype)
    lp = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * torch.log(
        torch.tensor(2 * torch.pi, dtype=mean.dtype, device=mean.device)
    )
    return _reduce(lp, reduction)


def gaussian_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor, reduction: str = "sum") -> Tensor:
    """KL(N(mean_p, s^2 I) || N(mean_q, s^2 I)) = |mean_p - mean_q|^2 / (2 s^2) per sample, (B,)."""
    return _reduce((mean_p - mean_q) ** 2 / (2 * std.to(mean_p.dtype) ** 2), reduction)


# ---- trajectories --------------------------------------------------------------------------------
EpsFn = Callable[[Tensor, Tensor, Any], Tensor]  # (x_t (B,...), t (B,) long, cond) -> eps (B,...)


@dataclass
class Trajectory:
    """A batch of sampled chains. latents: (B, N+1, *shape) with latents[:, 0] the noise and
    latents[:, N] the clean sample; noises: (B, N, *shape) the injected xi_k; cond: per-sample condition."""

    latents: Tensor
    noises: Tensor
    cond: Any = None
    means: Optional[Tensor] = None  # (B, N, *shape) policy means, if recorded

    @property
    def final(self) -> Tensor:
        return self.latents[:, -1]

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]


def sample_trajectory(
    eps_fn: EpsFn,
    schedule: DDIMSchedule,
    x_init: Tensor,
    cond: Any = None,
    generator: Optional[torch.Generator] = None,
    noises: Optional[Tensor] = None,
    grad: bool = False,
    record_means: bool = False,
    checkpoint: bool = False,
) -> Trajectory:
    """Run the N-step chain from x_init (B, *shape), recording every latent.

    ``noises`` (B, N, *shape) fixes the injected noise (reparameterisation); otherwise it is drawn from
    ``generator``. With ``grad=True`` the whole chain is differentiable (AlignProp/DRaFT style); with
    ``checkpoint=True`` each model call is recomputed in backward (non-reentrant).
    """
    B = x_init.shape[0]
    shape = x_init.shape[1:]
    N = schedule.num_steps
    if noises is None:
        noises = torch.randn((B, N, *shape), generator=generator, dtype=x_init.dtype,
                             device="cpu").to(x_init.device)
    x = x_init
    latents = [x]
    means = []
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        for k in range(N):
            t = schedule.timestep_batch(k, B, x.device)
            if checkpoint and grad:
                eps = torch.utils.checkpoint.checkpoint(eps_fn, x, t, cond, use_reentrant=False)
            else:
                eps = eps_fn(x, t, cond)
            x, mu, _ = schedule.step(x, eps, k, noises[:, k])
            latents.append(x)
            if record_means:
                means.append(mu)
    return Trajectory(
        latents=torch.stack(latents, dim=1),
        noises=noises,
        cond=cond,
        means=torch.stack(means, dim=1) if record_means else None,
    )


def path_kl(
    eps_policy: EpsFn, eps_ref: EpsFn, schedule: DDIMSchedule, traj: Trajectory, batch_steps: bool = True
) -> Tensor:
    """Exact path KL(P_policy || P_ref) estimate per trajectory: sum_k |mu_k^pol - mu_k^ref|^2/(2 s_k^2)
    along trajectories sampled from the policy (chain rule; x_0 shared). Returns (B,), no grad.
    Uses ``traj.means`` (recorded while sampling) for the policy means when present."""
    B = traj.batch_size
    N = schedule.num_steps
    out = torch.zeros(B, dtype=torch.float64)
    with torch.no_grad():
        for k in range(N):
            x = traj.latents[:, k]
            t = schedule.timestep_batch(k, B, x.device)
            if traj.means is not None:
                mu_p = traj.means[:, k]
            else:
                mu_p = schedule.mean(x, eps_policy(x, t, traj.cond), k)
            mu_r = schedule.mean(x, eps_ref(x, t, traj.cond), k)
            out += gaussian_kl(mu_p, mu_r, schedule.step_std(k, x)).double().cpu()
    return out

"""DDPO (Black et al. 2023): DDPO-IS (PPO clip, ``ddpo``) and DDPO-SF (REINFORCE, ``ddpo-sf``).
Follows the DDPO paper and the official ddpo-pytorch code.

Policy: the DDIM η = 1 step, π_θ(x_{k+1}|x_k) = N(μ_k^θ(x_k), s_k² I); its log-prob is the **per-element
mean** (ddpo-pytorch/TRL convention, so the official clip range 1e-4 keeps its meaning). One optimizer
step of ``improve()`` is one DDPO *epoch*:

1. sample ``train_batch`` trajectories from θ_old without grad, storing every x_k and ℓ_old(k) (the same
   ``schedule.mean``/``log_prob`` code that training uses, so the first minibatch has ratio 1);
2. reward r = r̂⁺(x_N) (optimistic proxy, standardised; no oracle calls), advantage A = clip((r - mean)/
   (std + 1e-8), ±``adv_clip_max``) over the batch for unconditional tasks (the paper's batch version);
   for prompt-conditioned tasks (``aesthetic-sd``) the official per-prompt tracker
   (:class:`PerPromptStatTracker`, FIFO of the last 32 rewards per prompt, batch statistics until a
   prompt has 16); with several processes the rewards (and prompts) are gathered first;
3. for ``num_inner_epochs``: shuffle samples, shuffle the step order *independently per sample* and keep the
   first ⌊N·``timestep_fraction``⌋ steps; per minibatch of ``ppo_minibatch`` samples, one optimizer step on
   L = mean_{b,k} max(-A ρ, -A clip(ρ, 1-ε, 1+ε)), ρ = exp(ℓ_θ - ℓ_old) (IS), or L = -mean_{b,k} A·ℓ_θ with
   a single step over the whole batch (SF, strictly on-policy).

The official code back-propagates each step's loss separately and accumulates gradients over
num_train_timesteps × accumulation backward calls (a mean over steps and samples); here the selected
(sample, step) pairs of a minibatch go through the model as one flattened batch and the loss is their mean:
the same gradient up to float rounding, far fewer Python calls on CPU.

Defaults (ddpo-pytorch ``config/base.py``): AdamW lr 3e-4, wd 1e-4, grad clip 1.0, clip_range 1e-4,
adv_clip_max 5, num_inner_epochs 1, timestep_fraction 1.0; two optimizer steps per epoch (official:
256 samples per epoch, train batch 128). Scaled for the synthetic tier: 32 samples per epoch (minibatch
16, keeping the 2 steps/epoch ratio) and 20 epochs per round, the same ``train_batch``/
``updates_per_round`` as every other baseline (``baselines._common.BaselineSettings``). No KL term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from baselines._common import BaselineSettings, check_positive_int
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.diffusion import DDIMSchedule, log_prob
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def normalise_advantages(rewards: Tensor, clip_max: float = 5.0) -> Tensor:
    """Batch advantages (B,): clip((r - mean)/(std + 1e-8), -clip_max, clip_max); std is unbiased."""
    if rewards.ndim != 1 or rewards.numel() < 2:
        raise ValueError(f"rewards must be a 1-D tensor with >= 2 entries, got shape {tuple(rewards.shape)}")
    if not clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0, got {clip_max}")
    adv = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
    return adv.clamp(-clip_max, clip_max)


class PerPromptStatTracker:
    """Per-prompt advantage normalisation of ddpo-pytorch (the paper's "Advantage" step).

    For each prompt keep a FIFO of its last ``buffer_size`` rewards; the current batch's rewards are
    appended first; a prompt whose FIFO holds >= ``min_count`` values is normalised by the FIFO's mean
    and population std (+1e-6), otherwise by the whole batch's. State persists across epochs and rounds.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count = int(buffer_size), int(min_count)
        self.history: dict[str, list[float]] = {}

    def update(self, prompts: list[str], rewards: Tensor) -> Tensor:
        """prompts: B strings, rewards (B,) -> unclipped advantages (B,) float64."""
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1).cpu()
        if len(prompts) != len(r):
            raise ValueError(f"{len(prompts)} prompts for {len(r)} rewards")
        adv = torch.empty_like(r)
        batch_mean, batch_std = r.mean(), r.std(unbiased=False) + 1e-6
        for prompt in sorted(set(prompts)):
            rows = torch.tensor([i for i, q in enumerate(prompts) if q == prompt])
            fifo = (self.history.get(prompt, []) + r[rows].tolist())[-self.buffer_size:]
            self.history[prompt] = fifo
            if len(fifo) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                f = torch.tensor(fifo, dtype=torch.float64)
                mean, std = f.mean(), f.std(unbiased=False) + 1e-6
            adv[rows] = (r[rows] - mean) / std
        return adv


def ppo_loss(logp: Tensor, logp_old: Tensor, adv: Tensor, clip_range: float) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate, mean over all entries. logp, logp_old: (B, T); adv: (B,) or (B, T).

    Returns (loss, ratio, clipfrac) with ratio = exp(logp - logp_old) (B, T) and clipfrac the fraction of
    entries with |ratio - 1| > clip_range.
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    if adv.ndim == 1:
        adv = adv[:, None]
    ratio = torch.exp(logp - logp_old.detach())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    clipfrac = ((ratio - 1.0).abs() > clip_range).double().mean()
    return loss, ratio, clipfrac


def sf_loss(logp: Tensor, adv: Tensor) -> Tensor:
    """REINFORCE surrogate -mean_{b,k} A_b ℓ_θ(b, k). logp: (B, T); adv: (B,)."""
    return -(adv.detach()[:, None] * logp).mean()


def _gather_cond(cond: Any, rows: Tensor):
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[rows]
    return [cond[i] for i in rows.tolist()]


def step_log_probs(eps_fn, schedule: DDIMSchedule, latents: Tensor, steps: Tensor, cond: Any = None) -> Tensor:
    """Per-element-mean log π_θ(x_{k+1} | x_k) for chosen steps, through one flattened model call.

    latents: (B, N+1, *shape) a recorded chain; steps: (B, T) long step indices k in [0, N-1].
    Returns (B, T); gradient flows through μ_k^θ only (x_{k+1} is data).
    """
    B, T = steps.shape
    N = schedule.num_steps
    if latents.shape[:2] != (B, N + 1):
        raise ValueError(f"latents must be (B={B}, N+1={N + 1}, ...), got {tuple(latents.shape)}")
    if (steps < 0).any() or (steps >= N).any():
        raise ValueError(f"steps must lie in [0, {N - 1}], got min {int(steps.min())} max {int(steps.max())}")
    rows = torch.arange(B).repeat_interleave(T)
    ks = steps.reshape(-1).cpu()
    x = latents[rows, ks]
    x_next = latents[rows, ks + 1]
    t = schedule.timestep_batch(ks, B * T, x.device)
    eps = eps_fn(x, t, _gather_cond(cond, rows))
    mu = schedule.mean(x, eps, ks)
    lp = log_prob(x_next, mu, schedule.step_std(ks, x), reduction="mean")
    return lp.reshape(B, T)


@dataclass
class DDPOCommonSettings(BaselineSettings):
    """Settings shared by DDPO-IS and DDPO-SF (ddpo-pytorch defaults, scaled as every baseline)."""

    lr: float = setting(3e-4, "AdamW learning rate (ddpo-pytorch)", gt=0)
    num_inner_epochs: int = setting(1, "passes over each sampled batch (DDPO-SF: 1)", ge=1)
    adv_clip_max: float = setting(5.0, "advantage clip", gt=0)
    timestep_fraction: float = setting(1.0, "fraction of the steps of each trajectory trained on", gt=0, le=1)


class DDPOAgent(OnlineFinetuneAgent):
    """DDPO-IS: PPO-clipped importance-sampling policy gradient on the denoising MDP."""

    importance_sampling: ClassVar[bool] = True
    @dataclass
    class Settings(DDPOCommonSettings):
        ppo_minibatch: int = setting(16, "trajectories per PPO minibatch", ge=1)
        clip_range: float = setting(1e-4, "PPO ratio clip", gt=0)
    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ("train_batch", "ppo_minibatch")

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if float(c["eta"]) <= 0:
            raise ValueError(f"DDPO needs eta > 0 (the log-prob of an eta=0 step does not exist), got {c['eta']}")
        check_positive_int("train_batch", c["train_batch"], minimum=2)
        if not cls.importance_sampling and int(c["num_inner_epochs"]) != 1:
            raise ValueError(f"DDPO-SF is strictly on-policy: num_inner_epochs must be 1, got {c['num_inner_epochs']}")
        return c

    @property
    def train_steps(self) -> int:
        """Number of steps per sample that get a loss term: max(1, floor(N·timestep_fraction))."""
        return max(1, int(math.floor(self.schedule.num_steps * self.cfg.timestep_fraction + 1e-9)))

    def collect(self, n: int) -> dict[str, Tensor]:
        """n trajectories from the current (old) policy with ℓ_old (n, N), rewards and advantages."""
        traj = self.sample(n, self.generator, record_means=True)
        N = self.schedule.num_steps
        with torch.no_grad():
            lp_old = torch.stack([
                log_prob(traj.latents[:, k + 1], traj.means[:, k], self.schedule.step_std(k, traj.means[:, k]),
                         reduction="mean") for k in range(N)], dim=1)
            r = self.reward(traj.final)
        adv = self.advantages(r, traj.cond)
        return {"latents": traj.latents, "cond": traj.cond, "logp_old": lp_old, "reward": r, "adv": adv}

    #: per-prompt tracker settings of ddpo-pytorch (used only for prompt-conditioned tasks)
    STAT_BUFFER_SIZE: ClassVar[int] = 32
    STAT_MIN_COUNT: ClassVar[int] = 16

    def advantages(self, r: Tensor, cond: Any) -> Tensor:
        """(B,) advantages of this process's rewards r (B,), normalised over the union batch of all
        processes: per prompt when ``cond`` is a list of prompt strings, else over the batch; clipped."""
        clip = self.cfg.adv_clip_max
        r_all = self.dp.gather(r.double())
        if isinstance(cond, (list, tuple)) and cond and all(isinstance(c, str) for c in cond):
            prompts = self.dp.gather_object(list(cond))
            if getattr(self, "stat_tracker", None) is None:
                self.stat_tracker = PerPromptStatTracker(self.STAT_BUFFER_SIZE, self.STAT_MIN_COUNT)
            adv_all = self.stat_tracker.update(prompts, r_all.cpu()).to(r_all.device).clamp(-clip, clip)
        else:
            adv_all = normalise_advantages(r_all, clip)
        return self.dp.shard(adv_all).to(r.dtype)

    def step_order(self, n: int) -> Tensor:
        """(n, T) per-sample independently shuffled step indices, first T = train_steps kept."""
        N = self.schedule.num_steps
        perms = torch.stack([torch.randperm(N, generator=self.generator) for _ in range(n)])
        return perms[:, : self.train_steps]

    def improve(self) -> dict[str, Any]:
        """One DDPO round: refit r̂⁺; per update, sample a batch with the policy's
        per-step log-probabilities, turn r̂⁺ into clipped advantages, then num_inner_epochs passes of
        minibatch policy-gradient steps (clipped PPO ratio, or REINFORCE for DDPO-SF) over shuffled
        timesteps."""
        c = self.cfg
        B = c.train_batch
        mb = c.ppo_minibatch if self.importance_sampling else B
        self.begin_round()
        for _ in self.round_steps():
            batch = self.collect(B)
            stats = {"reward": float(batch["reward"].mean()), "loss": 0.0, "clipfrac": 0.0, "grad_norm": 0.0}
            n_opt = 0
            for epoch in range(c.num_inner_epochs):
                order = torch.randperm(B, generator=self.generator)
                steps = self.step_order(B)
                for start in range(0, B, mb):
                    rows = order[start:start + mb]
                    ks = steps[rows]
                    logp = step_log_probs(self.policy_eps, self.schedule, batch["latents"][rows], ks,
                                          _gather_cond(batch["cond"], rows))
                    adv = batch["adv"][rows]
                    if self.importance_sampling:
                        old = torch.gather(batch["logp_old"][rows], 1, ks.to(batch["logp_old"].device))
                        loss, _, clipfrac = ppo_loss(logp, old, adv, c.clip_range)
                        if epoch == 0 and start == 0:
                            stats["first_clipfrac"] = float(clipfrac)
                        stats["clipfrac"] += float(clipfrac)
                    else:
                        loss = sf_loss(logp, adv)
                    loss.backward()
                    stats["grad_norm"] += self.clip_and_step()
                    stats["loss"] += loss.item()
                    n_opt += 1
            for key in ("loss", "clipfrac", "grad_norm"):
                stats[key] /= max(n_opt, 1)
            stats["opt_steps"] = float(n_opt)
            if not self.importance_sampling:
                stats.pop("clipfrac")
            self.record_step(stats)
        return self.end_round()


class DDPOSFAgent(DDPOAgent):
    """DDPO-SF: REINFORCE with one optimizer step per freshly sampled batch (num_inner_epochs forced 1)."""

    importance_sampling: ClassVar[bool] = False
    Settings = DDPOCommonSettings
    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ("train_batch",)

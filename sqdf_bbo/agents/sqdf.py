"""SQDF: Soft Q-based Diffusion Fine-tuning (Kang et al., ICLR 2026).

One optimizer step of :meth:`SQDFAgent.improve`:
1. *fill* (buffer mode): roll out ``on_policy_batch`` fresh trajectories with the current policy (no grad,
   DDIM η = ``eta``), score their final latents with the optimistic proxy r̂⁺ (standardised units) and add
   the states z_0..z_{N-1} to the replay buffer (the first fill of a round tops the buffer up to
   ``train_batch``); *no-buffer* mode instead rolls out ``train_batch`` fresh trajectories and picks one
   step k ~ U{0..N-1} of each;
2. *sample* ``train_batch`` pairs (trajectory j, step k) with the configured sampling method;
3. per pair: ε_θ, ε_ref at (z_k, τ_k); μ_θ, μ_ref from the DDIM step; z_{k+1} = μ_θ + s_k ξ (reparameterised);
   KL̃ = mean_d (μ_θ - μ_ref)²/s_k² (``kl_reduction="mean_no_half"``, the official scale = (2/D)·KL) or
   Σ_d (μ_θ - μ_ref)²/(2 s_k²) (``"exact"``); Q̂ = γ^{N-1-k} r̂⁺(f(z_{k+1})) with f = frozen consistency
   model (``q_estimator="cm"``), Tweedie with the frozen reference at τ_{k+1} (``"tweedie"``) or
   ``ddim_n_steps`` deterministic DDIM jumps of the reference to the end (``"ddim_n"``); at k = N-1,
   f(z_N) = z_N; loss = mean(-(Q̂ - α KL̃)) (times normalised 1/P importance weights when
   ``per_importance_weight``);
4. backward (gradients reach only the policy's trainable parameters), clip, AdamW step.

KL reference: the *pretrained* model (``kl_reference="pretrained"``, SQDF) or the previous round's policy
(``"previous"``, SEIKO-style). Where no consistency model exists for the task, ``cm`` falls
back to ``tweedie`` (the "w/o CM" variant of the paper's ablations); the round stats record ``q_estimator_used``
and the reason.

Defaults follow the official implementation's BBO run, as the union of its 2 GPUs: α = 1, γ = 0.9, 40 updates
per round, 32 new trajectories and 64 replayed pairs per update (2 GPUs × 16 and × 32), buffer
``reward+gamma_PER`` of 1024 trajectories reset every round. Our one-process version takes the 64 pairs
as one mini-batch rather than 64 accumulated micro-batches of 1 (same mean gradient). ``fill_every`` = F
> 1 (default 1 = official) amortises the rollouts on CPU: every F updates it rolls out
F·``on_policy_batch`` trajectories at once (same number of fresh trajectories per update on average; the
buffer is at most F-1 updates stale), and in no-buffer mode F·``train_batch`` fresh trajectories, each
used for exactly one pair.

KL scale: ``alpha`` is the official knob (KL̃ = (2/D)·KL, so a nat of path KL costs 2α/D reward units);
the common ``beta`` (reward units per nat, sqdf_bbo/agents/kl_scale.py) sets alpha = beta·D/2
(``exact``: alpha = beta). Only the reward is discounted, so with γ < 1 step k's effective beta is
beta/γ^{N-1-k}.

PER priorities: the official P(j, k) ∝ max(r_j, 0)·γ^{N-1-k} sees all-positive raw aesthetic rewards (about
5.5 ± 0.5), so it is near-uniform over trajectories there (the top 10 % get ~11.5 % of the mass). Our
rewards are standardised (see OnlineFinetuneAgent), where max(r, 0) drops every below-average trajectory
(on 1024 standard-normal rewards: ~50 % get probability 0, the top 10 % ~44 % of the mass).
``per_priority="shift_min"`` (default) uses r_j - min_i r_i: the same rule with the reward's zero moved to
the buffer's minimum, valid on any scale or sign, and close to the official behaviour (top 10 % ~15 %,
only the minimum gets 0); ``per_priority="clamp"`` keeps max(r, 0) on standardised rewards (the
previous default). Tests: tests/test_buffer.py.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from sqdf_bbo.agents.kl_scale import latent_elements, resolve_beta
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.buffer import PER_PRIORITIES, SAMPLING_METHODS, TrajectoryBuffer
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.settings import setting
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor

Q_ESTIMATORS = ("cm", "tweedie", "ddim_n")
KL_REDUCTIONS = ("mean_no_half", "exact")


def kl_tilde(mu_p: Tensor, mu_q: Tensor, std: Tensor, reduction: str = "mean_no_half") -> Tensor:
    """Per-sample KL term (B,). ``mean_no_half``: mean_d (μ_p - μ_q)²/s² (= (2/D)·KL, official);
    ``exact``: Σ_d (μ_p - μ_q)²/(2 s²) = KL(N(μ_p, s²I) ‖ N(μ_q, s²I)). std broadcasts against μ."""
    sq = (mu_p - mu_q) ** 2 / std.to(mu_p.dtype) ** 2
    dims = tuple(range(1, sq.ndim))
    if reduction == "mean_no_half":
        return sq.mean(dim=dims)
    if reduction == "exact":
        return 0.5 * sq.sum(dim=dims)
    raise ValueError(f"kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {reduction!r}")


def sqdf_alpha_per_beta(kl_reduction: str, latent_elements: int) -> float:
    """alpha / beta: D/2 for the official ``mean_no_half`` KL̃ = (2/D)·KL, 1 for ``exact`` (at γ = 1;
    with γ < 1 step k's effective beta is beta / γ^{N-1-k}, since only the reward is discounted)."""
    return latent_elements / 2.0 if kl_reduction == "mean_no_half" else 1.0


def ddim_n_predict(eps_fn, schedule: DDIMSchedule, x: Tensor, start: Tensor, n_steps: int, cond: Any = None) -> Tensor:
    """Deterministic DDIM (η = 0) from grid index start[i] (τ_{start}) to the end of the grid in ``n_steps``
    jumps along round(linspace(start, N, n_steps + 1)); the last target is the final ᾱ (ᾱ_0 for
    set_alpha_to_one=False). Differentiable w.r.t. x. x: (B, *shape), start: (B,) long in [0, N-1]."""
    N = schedule.num_steps
    start = start.long().cpu()
    frac = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    grid = torch.round(start[:, None].double() + (N - start[:, None].double()) * frac[None]).long()  # (B, n+1)
    final_alpha = schedule.alpha_prev[N - 1]
    alpha_ext = torch.cat([schedule.alpha, final_alpha.reshape(1)])  # index N = the final target
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    for j in range(n_steps):
        i, i2 = grid[:, j], grid[:, j + 1]
        move = i2 > i
        if not bool(move.any()):
            continue
        t = schedule.timesteps[i.clamp(max=N - 1)].to(x.device)
        a = alpha_ext[i].to(x.dtype).to(x.device).reshape(shape)
        a2 = alpha_ext[i2].to(x.dtype).to(x.device).reshape(shape)
        eps = eps_fn(x, t, cond)
        x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
        x_new = torch.sqrt(a2) * x0 + torch.sqrt(1 - a2) * eps
        x = torch.where(move.to(x.device).reshape(shape), x_new, x)
    return x


def _split_conds(cond: Any, n: int) -> Optional[list]:
    if cond is None:
        return None
    return [cond[i] for i in range(n)]


def _join_conds(conds: Optional[list]) -> Any:
    if conds is None or all(c is None for c in conds):
        return None
    if all(isinstance(c, Tensor) for c in conds):
        return torch.stack(conds)
    return list(conds)


class SQDFAgent(OnlineFinetuneAgent):
    """SQDF on the shared online loop; see the module docstring for the update and its settings."""

    @dataclass
    class Settings(OnlineFinetuneAgent.Settings):
        alpha: float = setting(1.0, "KL weight on the official scale KL~ = (2/D)·KL (see beta)", ge=0)
        beta: Optional[float] = setting(None, "common KL scale: reward units per nat of path KL; sets alpha = beta·D/2", ge=0)
        gamma: float = setting(0.9, "discount of the terminal reward per remaining step", gt=0, le=1)
        q_estimator: str = setting("cm", "soft-Q estimate: consistency model | Tweedie | n-step DDIM", choices=Q_ESTIMATORS)
        ddim_n_steps: int = setting(4, "jumps of the ddim_n estimator", ge=1)
        kl_reduction: str = setting("mean_no_half", "KL term: official (2/D)·KL or exact KL", choices=KL_REDUCTIONS)
        kl_reference: str = setting("pretrained", "KL to the pretrained model or the previous round's policy",
                                    choices=("pretrained", "previous"))
        buffer: Optional[str] = setting("reward+gamma_PER", "replay sampling (none = fresh rollouts, no buffer)",
                                        choices=("none",) + SAMPLING_METHODS)
        buffer_size: int = setting(1024, "buffer capacity in trajectories", ge=1)
        buffer_reset_per_round: bool = setting(True, "empty the buffer at the start of every round (official BBO)")
        buffer_storage: str = setting("memory", "keep trajectories in memory or one file each on disk",
                                      choices=("memory", "disk"))
        buffer_dir: Optional[str] = setting(None, "folder for buffer_storage=disk")
        per_priority: str = setting("shift_min", "PER reward factor: r - min r (shift_min) or max(r, 0) (clamp)",
                                    choices=PER_PRIORITIES)
        on_policy_batch: int = setting(32, "fresh trajectories rolled out per update", ge=1)
        train_batch: int = setting(64, "(trajectory, step) pairs per optimizer step", ge=1)
        per_importance_weight: bool = setting(False, "weight PER pairs by 1/(n P) (off in the official code)")
        fill_every: int = setting(1, "roll out every this many updates (x this many at once; 1 = official)", ge=1)

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        cfg = super().resolve_config(task, overrides)
        if cfg.get("buffer") is None:  # `--set buffer=none` parses to None; record it as "none"
            cfg["buffer"] = "none"
        if cfg["buffer"] not in ("none", "reward+gamma_PER") and cfg["buffer_size"] < cfg["train_batch"]:
            raise ValueError(f"buffer_size ({cfg['buffer_size']}) must be >= train_batch ({cfg['train_batch']})")
        if cfg["per_importance_weight"] and cfg["buffer"] != "reward+gamma_PER":
            raise ValueError("per_importance_weight only applies to buffer='reward+gamma_PER'")
        if cfg["buffer_storage"] == "disk" and cfg["buffer"] != "none" and not cfg["buffer_dir"]:
            raise ValueError("buffer_storage='disk' needs --set buffer_dir=FOLDER")
        per_nat = sqdf_alpha_per_beta(cfg["kl_reduction"], latent_elements(task))
        return resolve_beta(cfg, overrides, "alpha", lambda b: b * per_nat, lambda a: a / per_nat)

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        c = self.cfg
        self.kl_ref = self.reference
        self.cm = None
        self.q_estimator_used = c.q_estimator
        self.q_fallback_reason = ""
        if c.q_estimator == "cm":
            from sqdf_bbo.consistency import find_consistency_model

            self.cm, reason = find_consistency_model(task, self.reference, self.schedule.num_steps)
            if self.cm is None:
                self.q_estimator_used, self.q_fallback_reason = "tweedie", reason
                print(f"[sqdf] no consistency model for task {task.name!r} ({reason}); "
                      "falling back to q_estimator=tweedie (the 'w/o CM' variant)", flush=True)
        self._fresh: list[tuple[Tensor, Tensor, Any]] = []  # no-buffer mode: pre-rolled pairs
        self._updates_in_round = 0
        self.buffer: Optional[TrajectoryBuffer] = None if c.buffer == "none" else self._make_buffer(c.buffer_dir)

    def _make_buffer(self, directory: Optional[str]) -> TrajectoryBuffer:
        c = self.cfg
        return TrajectoryBuffer(c.buffer_size, self.schedule.num_steps, self.reference.latent_shape,
                                storage=c.buffer_storage, directory=directory, per_fallback="uniform",
                                per_priority=c.per_priority)

    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ("train_batch", "on_policy_batch", "buffer_size")
    #: the consistency model is loaded from committed weights by __init__ (frozen)
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("cm",)

    def setup_data_parallel(self, dp) -> None:
        """As the base class's; each process keeps its own buffer of 1/P of ``buffer_size``."""
        super().setup_data_parallel(dp)
        if self.buffer is not None:
            d = self.cfg.buffer_dir
            self.buffer = self._make_buffer(None if d is None else os.path.join(str(d), f"rank{dp.rank}"))

    # ---- pieces of the loss ------------------------------------------------------------------------
    def kl_reference_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.kl_ref(x, t, cond)

    def predict_clean(self, z_next: Tensor, k: Tensor, cond: Any = None) -> Tensor:
        """f(z_{k+1}) for pairs at step k (B,): the clean-latent estimate the reward is taken of;
        rows with k = N-1 return z_N itself. Differentiable w.r.t. z_next; every network frozen."""
        N = self.schedule.num_steps
        k = k.long().cpu()
        last = k == N - 1
        if bool(last.all()):
            return z_next
        idx = (~last).nonzero().reshape(-1)
        zs = z_next[idx.to(z_next.device)]
        cs = None if cond is None else (cond[idx] if isinstance(cond, Tensor) else [cond[int(i)] for i in idx])
        kn = k[idx] + 1
        t = self.schedule.timesteps[kn].to(z_next.device)
        est = self.q_estimator_used
        if est == "cm":
            f = self.cm(zs, t, cs)
        elif est == "tweedie":
            f = self.schedule.predict_x0(zs, self.reference_eps(zs, t, cs), kn)
        else:
            f = ddim_n_predict(self.reference_eps, self.schedule, zs, kn, self.cfg.ddim_n_steps, cs)
        out = z_next.clone()
        out[idx.to(z_next.device)] = f.to(out.dtype)
        return out

    def sqdf_loss(self, z: Tensor, k: Tensor, cond: Any = None, noise: Optional[Tensor] = None,
                  weights: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
        """Mean SQDF loss over B pairs (z_k (B, *shape) constants, k (B,) long) and its diagnostics.

        loss_i = -(γ^{N-1-k_i} r̂⁺(f(z'_i)) - α KL̃_i), z'_i = μ_θ(z_i) + s_{k_i} ξ_i; ``noise`` fixes ξ."""
        N = self.schedule.num_steps
        k = k.long().cpu()
        z = z.detach()
        B = z.shape[0]
        t = self.schedule.timesteps[k].to(z.device)
        eps_p = self.policy_eps(z, t, cond)
        with torch.no_grad():
            eps_r = self.kl_reference_eps(z, t, cond)
        mu_p = self.schedule.mean(z, eps_p, k)
        mu_r = self.schedule.mean(z, eps_r, k)
        s = self.schedule.step_std(k, z)
        if noise is None:
            noise = torch.randn(z.shape, generator=self.generator, dtype=z.dtype).to(z.device)
        z_next = mu_p + s * noise
        kl = kl_tilde(mu_p, mu_r, s, self.cfg.kl_reduction)
        r = self.reward(self.predict_clean(z_next, k, cond))
        disc = torch.as_tensor(self.cfg.gamma, dtype=torch.float64) ** (N - 1 - k).double()
        q = disc.to(r.dtype).to(r.device) * r
        per = -(q - self.cfg.alpha * kl)
        if weights is not None:
            per = per * weights.to(per.dtype).to(per.device)
        loss = per.mean()
        with torch.no_grad():
            kl_exact = kl_tilde(mu_p, mu_r, s, "exact")
        info = {"loss": float(loss.detach()), "kl_tilde": float(kl.detach().mean()),
                "kl_exact_step": float(kl_exact.mean()), "q_reward_mean": float(r.detach().mean()),
                "q_reward_std": float(r.detach().std()) if B > 1 else 0.0, "q_mean": float(q.detach().mean()),
                "k_mean": float(k.double().mean())}
        return loss, info

    # ---- online loop -------------------------------------------------------------------------------
    def collect_pairs(self) -> tuple[Tensor, Tensor, Any, Optional[Tensor], dict[str, float]]:
        """(z_k (B, *shape), k (B,), cond, importance weights or None, stats) for one update."""
        N = self.schedule.num_steps
        B = self.cfg.train_batch
        every = self.cfg.fill_every
        fill = self._updates_in_round % every == 0
        self._updates_in_round += 1
        if self.buffer is None:
            if not self._fresh:  # fresh on-policy rollouts, each trajectory used for one pair only
                traj = self.sample(B * every, self.generator)
                k = torch.randint(0, N, (B * every,), generator=self.generator)
                z = traj.latents[torch.arange(B * every), k]
                conds = _split_conds(traj.cond, B * every)
                for i in range(every):
                    sl = slice(i * B, (i + 1) * B)
                    self._fresh.append((z[sl], k[sl], None if conds is None else _join_conds(conds[sl])))
            z, k, cond = self._fresh.pop(0)
            return z, k, cond, None, {"n_new": float(B)}
        n_new = 0
        if fill or len(self.buffer) < B:
            n_new = self.cfg.on_policy_batch * every
            if len(self.buffer) < B:
                n_new = max(n_new, B - len(self.buffer))
        if n_new:
            traj = self.sample(n_new, self.generator)
            with torch.no_grad():
                r = self.reward(traj.final)
            self.buffer.add(traj.latents[:, :N], r, tag=self.global_step, conds=_split_conds(traj.cond, n_new))
        method = self.cfg.buffer
        slots, k, probs = self.buffer.sample(B, method, self.generator, gamma=self.cfg.gamma)
        z, conds = self.buffer.get(slots, k)
        weights = None
        if self.cfg.per_importance_weight and probs is not None:
            w = 1.0 / (len(self.buffer) * N * probs)
            weights = w / w.mean()
        param = next(self.reference.parameters())
        return (z.to(param.dtype).to(param.device), k, _join_conds(conds), weights,
                {"n_new": float(n_new), "buffer_len": float(len(self.buffer))})

    def improve(self) -> dict[str, Any]:
        """One SQDF round (the paper's Algorithm 1): refit r̂⁺; per update, top the buffer up with fresh
        on-policy trajectories, draw (z_k, k) pairs, take a soft-Q step."""
        t0 = time.time()
        if self.begin_round():
            self._fresh, self._updates_in_round = [], 0
            if self.buffer is not None and self.cfg.buffer_reset_per_round:
                self.buffer.reset()
            if self.cfg.kl_reference == "previous":  # p^(i-1): this round's frozen starting policy
                self.kl_ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        for _ in self.round_steps():
            z, k, cond, weights, pair_stats = self.collect_pairs()
            loss, info = self.sqdf_loss(z, k, cond, weights=weights)
            loss.backward()
            info["grad_norm"] = self.clip_and_step()
            self.record_step(info, pair_stats)
        stats = self.end_round()
        stats["q_estimator_used"] = self.q_estimator_used
        if self.q_fallback_reason:
            stats["q_estimator_fallback"] = self.q_fallback_reason
        if self.buffer is not None:
            stats["per_fallbacks"] = float(self.buffer.per_fallbacks)
        stats["improve_s"] = time.time() - t0
        return stats

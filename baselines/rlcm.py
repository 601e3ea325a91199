"""RLCM (Oertell et al. 2024, "RL for Consistency Models"): PPO-clipped policy gradient over the multi-step
sampling chain of a consistency model, against the optimistic proxy (after the official rlcm code).

The sampler. A consistency model (CM, ``sqdf_bbo.consistency``) maps a noisy latent to a clean-latent
estimate in one call, f(x_t, t) = c_skip(t) x_t + c_out(t) x̂(x_t, t) with x̂ the Tweedie estimate of its
network. Its n-step chain (``cm_steps`` = n) runs on timesteps τ_0 > … > τ_{n−1} taken every ⌊G/n⌋-th
from the G-step DDIM grid the CM was distilled on (the LCM scheduler's "skipping" rule; for G = 50 and
n = 8 the τ are grid indices 0, 6, …, 42), with ᾱ_j = alphas_cumprod[τ_j]:

    x_{τ_0} ~ the backbone's initial noise on that grid
    step j = 0..n−2:  x_{τ_{j+1}} ~ π_θ(· | x_{τ_j}) = N(√ᾱ_{j+1} f_θ(x_{τ_j}, τ_j), (1 − ᾱ_{j+1}) I)
    output:           f_θ(x_{τ_{n−1}}, τ_{n−1})                  (deterministic)

The policy f_θ is a trainable copy of the CM's network (LoRA of rank ``lora_rank``, or all weights at
0) read through the same boundary coefficients; the frozen CM is the reference. The official code also
draws, log-scores and discards a re-noised latent after the last step (its expected gradient is zero);
it is left out here, so the MDP has n − 1 stochastic steps.

Per PPO epoch (one per ``updates_per_round`` step): sample ``train_batch`` chains from θ_old without grad,
storing every x_{τ_j} and ℓ_old(j); reward r = r̂⁺(output) (standardised units); advantage A = the batch
z-score (population std + 1e-6, the official per-prompt tracker for one prompt whose buffer holds the
batch), clipped to ±``adv_clip_max``; then ``num_inner_epochs`` passes over shuffled minibatches of
``ppo_minibatch`` chains, one AdamW step each on

    L = mean_{b,j} max(−A_b ρ_bj, −A_b clip(ρ_bj, 1 − ε, 1 + ε)),   ρ = exp(ℓ_θ − ℓ_old),  ε = ``clip_range``

with ℓ the Gaussian log-density of a step averaged over latent elements (the official convention, so the
official ε = 1e-4 keeps its meaning). All steps of a chain are trained on (one flattened model call per
minibatch; the official code backpropagates them one by one and accumulates: the same gradient). There
is no KL or reference term in the loss.

Defaults (official ``conf/task/aesthetic.yaml``): Adam lr 1e-4 (AdamW without weight decay), gradient
clip 5, clip range 1e-4, advantage clip 10, 8 chain steps, one inner epoch, 8 chains per optimizer step
(train batch 2 × 4 accumulation steps). Scaled as every baseline: 32 chains per epoch (official 80) and
20 epochs per round; the official LoRA rank 8 gives way to the suite's ``lora_rank``; the official linear
learning-rate decay over its 100 epochs is dropped (each round starts a new AdamW).

KL. The reference of RLCM is the pretrained CM chain, not the DDIM sampler of the other fine-tuners. The
run's ``path_kl`` is the chain's path KL to it, Σ_{j=0}^{n−2} ᾱ_{j+1} ‖f_θ − f_ref‖²(x_{τ_j}) / (2 (1 − ᾱ_{j+1})),
averaged over the chains of the last proposal call (``analytic_path_kl``; the harness evaluates RLCM
through ``propose``). The change of the final deterministic map f_θ(x_{τ_{n−1}}) is not counted (the KL
between two different deterministic maps is not finite): the number covers the n − 1 stochastic steps
only, and is not on the same footing as the DDIM fine-tuners' path KL.

The knob. RLCM has no regulariser and its loss no fixed point: with a linear reward the policy keeps
moving as long as it is updated, and the KL grows with the number of updates (tests/test_rlcm.py checks
it on a 1-D bandit and on a tiny consistency model). Its trade-off is set by early stopping, so its
frontier knob (``frontier_knob``) is the number of PPO epochs per round, ``updates_per_round`` (each
epoch: fresh chains, then train_batch/ppo_minibatch optimizer steps), over 2, 5, 10, 20: the default
20 × 0.1, 0.25, 0.5, 1 (rounded), a factor 10 from two epochs up to the default, which is every
fine-tuner's 20 updates per round here, so no grid point costs more than a default round (the learning
rate, the other knob that sets how far the policy moves, stays at the official 1e-4). The policy is
never reset, so over R rounds a run takes R·``updates_per_round`` epochs.

Tasks. RLCM needs a consistency model it can fine-tune: the synthetic tasks with a committed CM (the
50-step CM of ``cm_mlp_<prior>``) and the image tier's CM. Elsewhere (including the Stable Diffusion
tier, whose CM is the backbone's frozen LCM-LoRA) the run is refused with one line
before any oracle query. The chain does not depend on the task's ``num_steps``. One process or several
(the rewards are gathered for the advantages, the gradients averaged).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from baselines._common import BaselineSettings
from sqdf_bbo.agents.base import DiffusionAgent
from sqdf_bbo.agents.online import OnlineFinetuneAgent, ProxyGuidedAgent
from sqdf_bbo.consistency import WEIGHTS_DIR, ConsistencyModel, cm_weights_path
from sqdf_bbo.diffusion import DDIMSchedule, log_prob
from sqdf_bbo.settings import setting

Tensor = torch.Tensor

#: the synthetic tier's RLCM uses the CM distilled on this DDIM grid (the committed main one)
SYNTHETIC_CM_GRID = 50


# ---- the consistency chain --------------------------------------------------------------------------
def consistency_denoise(cm: ConsistencyModel, net: torch.nn.Module, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
    """f(x_t, t) of ``cm``'s parameterisation with ``net`` as its noise predictor (cm.net: the CM itself):
    c_skip(t) x + c_out(t) (x − √(1 − ᾱ_t) ε_net(x, t)) / √ᾱ_t. x (B, *shape), t (B,) long."""
    t = torch.as_tensor(t, device=x.device).long()
    if t.ndim == 0:
        t = t.repeat(x.shape[0])
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    a = cm.alphas_cumprod.to(x.device)[t].to(x.dtype).reshape(shape)
    x0 = (x - torch.sqrt(1 - a) * net(x, t, cond)) / torch.sqrt(a)
    c_skip, c_out = cm.boundary_coefficients(t.cpu())
    return c_skip.to(x.dtype).to(x.device).reshape(shape) * x + c_out.to(x.dtype).to(x.device).reshape(shape) * x0


def chain_grid(scheduler, grid: int, steps: int) -> tuple[DDIMSchedule, Tensor, Tensor]:
    """(the G-step DDIM grid, the chain's timesteps τ_j (n,) long, ᾱ_j (n,) float64): τ_j = grid index j·⌊G/n⌋."""
    if not 2 <= steps <= grid:
        raise ValueError(f"cm_steps must be between 2 and the consistency model's grid of {grid} steps, got {steps}")
    sched = DDIMSchedule.from_scheduler(scheduler, grid, eta=0.0)
    idx = torch.arange(steps) * (grid // steps)
    return sched, sched.timesteps[idx].clone(), sched.alpha[idx].clone()


def _take(cond: Any, rows: Tensor) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[rows.to(cond.device)]
    return [cond[i] for i in rows.tolist()]


@dataclass
class Chains:
    """A batch of sampled consistency chains: latents (B, n, *shape) = x_{τ_0..τ_{n−1}}, final (B, *shape)
    = the output, logp (B, n−1) per-element-mean step log-probs, kl (B,) path KL to the reference (nats;
    zeros when no reference was given)."""

    latents: Tensor
    final: Tensor
    logp: Tensor
    kl: Tensor
    cond: Any = None


def sample_chains(f, timesteps: Tensor, alpha: Tensor, x_init: Tensor, generator: torch.Generator,
                  cond: Any = None, f_ref=None) -> Chains:
    """Run the consistency chain of f(x, t, cond) from x_init (B, *shape), no grad, the step noise drawn
    from ``generator`` (on the CPU); with ``f_ref`` also the path KL Σ_j ᾱ_{j+1} ‖f − f_ref‖² / (2 (1 − ᾱ_{j+1}))."""
    B, n = x_init.shape[0], len(timesteps)
    x, latents, logps = x_init, [x_init], []
    kl = torch.zeros(B, dtype=torch.float64)
    dims = tuple(range(1, x_init.ndim))
    with torch.no_grad():
        for j in range(n):
            t = timesteps[j].repeat(B).to(x.device)
            fx = f(x, t, cond)
            if j == n - 1:
                break
            a = float(alpha[j + 1])
            mean, std = math.sqrt(a) * fx, torch.tensor(math.sqrt(1 - a), dtype=fx.dtype, device=fx.device)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = mean + std * noise
            latents.append(x)
            logps.append(log_prob(x, mean, std, reduction="mean"))
            if f_ref is not None:
                d = (fx - f_ref(latents[-2], t, cond)).double()
                kl += (a * (d ** 2).sum(dims) / (2 * (1 - a))).cpu()
    return Chains(torch.stack(latents, 1), fx, torch.stack(logps, 1), kl, cond)


def chain_log_probs(f, timesteps: Tensor, alpha: Tensor, latents: Tensor, steps: Tensor, cond: Any = None) -> Tensor:
    """Per-element-mean log N(x_{τ_{j+1}}; √ᾱ_{j+1} f(x_{τ_j}, τ_j), (1 − ᾱ_{j+1}) I) at chosen steps, one
    flattened call of f. latents (B, n, *shape), steps (B, T) long in [0, n−2] -> (B, T); x_{τ_{j+1}} is data."""
    B, T = steps.shape
    n = len(timesteps)
    if latents.shape[:2] != (B, n):
        raise ValueError(f"latents must be (B={B}, n={n}, ...), got {tuple(latents.shape)}")
    ks = steps.reshape(-1).cpu()
    if bool((ks < 0).any()) or bool((ks > n - 2).any()):
        raise ValueError(f"steps must lie in [0, {n - 2}], got {steps.tolist()}")
    rows = torch.arange(B).repeat_interleave(T)
    x, x_next = latents[rows, ks], latents[rows, ks + 1]
    fx = f(x, timesteps[ks].to(x.device), _take(cond, rows))
    shape = (B * T,) + (1,) * (x.ndim - 1)
    a = alpha[ks + 1].to(fx.dtype).to(fx.device).reshape(shape)
    return log_prob(x_next, torch.sqrt(a) * fx, torch.sqrt(1 - a), reduction="mean").reshape(B, T)


def ppo_clipped_loss(logp: Tensor, logp_old: Tensor, adv: Tensor, clip_range: float) -> tuple[Tensor, Tensor]:
    """(L, clip fraction): L = mean max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε)), ρ = exp(ℓ − ℓ_old); logp, logp_old
    (B, T), adv (B,). The clip fraction counts entries with |ρ − 1| > ε."""
    ratio = torch.exp(logp - logp_old.detach())
    a = adv.to(ratio.device, ratio.dtype)[:, None]
    loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
    return loss, ((ratio - 1).abs() > clip_range).double().mean()


def batch_advantages(r: Tensor, clip: float) -> Tensor:
    """(r − mean)/(population std + 1e-6), clipped to ±clip, over the batch r (B,), float64."""
    r = r.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + 1e-6)).clamp(-clip, clip)


# ---- which tasks have a consistency model RLCM can train -------------------------------------------
def _synthetic_priors_with_cm() -> list[str]:
    return sorted(p.stem.removeprefix("cm_mlp_") for p in WEIGHTS_DIR.glob("cm_mlp_*.safetensors")
                  if "_n" not in p.stem.removeprefix("cm_mlp_"))


def _cm_factory(task):
    """The task's zero-argument consistency-model factory (``TaskInfo.make_consistency_model``), or None."""
    factory = getattr(task, "make_consistency_model", None)
    return factory if callable(factory) else None


def consistency_problem(task) -> Optional[str]:
    """Why ``task`` (a TaskInfo) has no consistency model RLCM can fine-tune, or None if it has one."""
    factory = _cm_factory(task)
    if task.tier == "sd":
        return ("its consistency model is the Stable Diffusion backbone's LCM-LoRA, frozen inside the backbone, "
                "which RLCM cannot fine-tune")
    if callable(factory):
        return None
    if task.tier == "synthetic":
        prior = task.name.removesuffix("-manifold")
        if cm_weights_path("mlp", prior, SYNTHETIC_CM_GRID).exists():
            return None
        have = ", ".join(_synthetic_priors_with_cm())
        return f"no committed consistency model for prior {prior!r} (synthetic tasks with one: {have}, and -manifold)"
    return f"no consistency model for tier {task.tier!r}"


def load_trainable_cm(task, reference) -> tuple[ConsistencyModel, int]:
    """(the frozen CM, its DDIM grid size G) for ``task``; ValueError naming the task if there is none."""
    from sqdf_bbo.consistency import load_consistency_mlp

    problem = consistency_problem(task)
    cm = None
    if problem is None:
        factory = _cm_factory(task)
        try:
            if callable(factory):
                cm = factory()
            else:
                cm = load_consistency_mlp(task.name.removesuffix("-manifold"), reference.lo, reference.hi,
                                          SYNTHETIC_CM_GRID)
        except (FileNotFoundError, RuntimeError) as e:
            problem = str(e).splitlines()[0]
        if cm is not None and not isinstance(cm, ConsistencyModel):
            problem = f"its consistency model ({type(cm).__name__}) has no network RLCM can fine-tune"
    if problem is not None:
        raise ValueError(f"method rlcm needs a consistency model and task {task.name!r} has none it can "
                         f"fine-tune: {problem}")
    return cm.eval().requires_grad_(False), int(getattr(cm, "num_steps", SYNTHETIC_CM_GRID))


# ---- the agent -------------------------------------------------------------------------------------
class RLCMAgent(OnlineFinetuneAgent):
    """PPO on the consistency-model chain; designs come from the fine-tuned chain (``propose``)."""

    steers_sampling: ClassVar[bool] = True  # evaluated through propose() (the CM chain), KL of that chain

    @dataclass
    class Settings(BaselineSettings):
        updates_per_round: int = setting(20, "PPO epochs per round (the frontier knob: early stopping); each "
                                             "samples train_batch chains and takes train_batch/ppo_minibatch "
                                             "optimizer steps", ge=0)
        train_batch: int = setting(32, "chains sampled per PPO epoch (official 80)", ge=2)
        lr: float = setting(1e-4, "AdamW learning rate (official Adam 1e-4)", gt=0)
        weight_decay: float = setting(0.0, "AdamW weight decay (official: Adam, none)", ge=0)
        max_grad_norm: float = setting(5.0, "global gradient-norm clip (official 5)", gt=0)
        cm_steps: int = setting(8, "n: consistency-chain steps (official 8), taken every ⌊G/n⌋-th from the CM's "
                                   "G-step grid", ge=2)
        ppo_minibatch: int = setting(8, "chains per optimizer step (official 2 × 4 accumulation)", ge=1)
        clip_range: float = setting(1e-4, "PPO ratio clip ε on per-element-mean log-probs (official)", gt=0)
        adv_clip_max: float = setting(10.0, "advantage clip (official 10)", gt=0)
        num_inner_epochs: int = setting(1, "passes over each sampled batch (official 1)", ge=1)

    PER_PROCESS_KEYS: ClassVar[tuple[str, ...]] = ("train_batch", "ppo_minibatch")
    #: no regulariser: the frontier sweeps early stopping, the PPO epochs per round (the default 20 × 0.1,
    #: 0.25, 0.5, 1; module docstring)
    frontier_knob: ClassVar[tuple[str, tuple[int, ...]]] = ("updates_per_round", (2, 5, 10, 20))
    #: the frozen CM and the chain's grid are rebuilt from the task by __init__
    CHECKPOINT_SKIP: ClassVar[tuple[str, ...]] = ("cm", "cm_schedule", "chain_timesteps", "chain_alpha")

    @classmethod
    def resolve_config(cls, task, overrides):
        problem = consistency_problem(task)
        if problem is not None:
            raise ValueError(f"method rlcm needs a consistency model and task {task.name!r} has none it can "
                             f"fine-tune: {problem}")
        return super().resolve_config(task, overrides)

    def __init__(self, task, config=None, seed: int = 0):
        # ProxyGuidedAgent's setup (backbone, proxy, generator); the policy is a copy of the CM's network,
        # not of the DDIM backbone, so OnlineFinetuneAgent's LoRA setup is done here on that copy
        ProxyGuidedAgent.__init__(self, task, config, seed)
        self.cm, grid = load_trainable_cm(task, self.reference)
        self.cm_schedule, self.chain_timesteps, self.chain_alpha = chain_grid(self.cm.net.scheduler, grid,
                                                                              self.cfg.cm_steps)
        self.policy = copy.deepcopy(self.cm.net).requires_grad_(False)
        if self.cfg.lora_rank > 0 and self.policy.lora_targets():
            self.policy.add_lora(self.cfg.lora_rank)
        else:
            self.policy.requires_grad_(True)
        self.policy.train()
        self.global_step = 0
        self.round_progress: Optional[dict] = None
        self.proposal_kl = 0.0  # mean chain path KL of the last propose() call

    # ---- the chain ------------------------------------------------------------------------------------
    def policy_f(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """f_θ (with grad): the CM's parameterisation around the trainable network."""
        return consistency_denoise(self.cm, self.policy, x, t, cond)

    def reference_f(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.cm(x, t, cond)

    def draw_chains(self, n: int, generator: torch.Generator, cond: Any = None, with_kl: bool = False) -> list[Chains]:
        """n chains of the current policy in ``sample_batch`` chunks (no grad; the LoRA merged once)."""
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        net = self.sampling_policy()
        f = lambda x, t, c: consistency_denoise(self.cm, net, x, t, c)  # noqa: E731
        bs, out = self.cfg.sample_batch, []
        for i in range(0, n, bs):
            m = min(bs, n - i)
            x0 = self.reference.initial_noise(m, generator, self.cm_schedule)
            c = None if cond is None else cond[i:i + m]
            out.append(sample_chains(f, self.chain_timesteps, self.chain_alpha, x0, generator, c,
                                     f_ref=self.reference_f if with_kl else None))
        return out

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        if cond is None:
            return DiffusionAgent.propose(self, n, generator)  # data parallelism handled there
        return self._propose_local(n, generator, cond)

    def _propose_local(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        """n designs of the fine-tuned chain; records their mean path KL to the pretrained CM chain."""
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        chains = self.draw_chains(n, generator, cond, with_kl=True)
        self.proposal_kl = float(torch.cat([c.kl for c in chains]).mean())
        with torch.no_grad():
            return torch.cat([self.reference.decode(c.final) for c in chains])

    def analytic_path_kl(self) -> float:
        """Mean path KL (nats) of the last proposal's chains to the pretrained CM chain (module docstring)."""
        return self.proposal_kl

    # ---- one round -------------------------------------------------------------------------------------
    def collect(self, n: int) -> dict[str, Any]:
        """n chains from θ_old: latents, ℓ_old (n, cm_steps − 1), proxy rewards and clipped advantages."""
        chains = self.draw_chains(n, self.generator)
        latents = torch.cat([c.latents for c in chains])
        cond = None
        if chains[0].cond is not None:
            conds = [c.cond for c in chains]
            cond = torch.cat(conds) if isinstance(conds[0], Tensor) else [x for part in conds for x in part]
        with torch.no_grad():
            r = torch.cat([self.reward_of_designs(self.reference.decode(c.final)).double().cpu() for c in chains])
        adv = self.dp.shard(batch_advantages(self.dp.gather(r), self.cfg.adv_clip_max))
        return {"latents": latents, "cond": cond, "logp_old": torch.cat([c.logp for c in chains]), "reward": r,
                "adv": adv}

    def improve(self) -> dict[str, Any]:
        """One RLCM round: refit r̂⁺ and start a new AdamW; per step, one PPO epoch on fresh chains."""
        self.begin_round()
        c = self.cfg
        B, n = c.train_batch, c.cm_steps
        for _ in self.round_steps():
            batch = self.collect(B)
            stats = {"reward": float(batch["reward"].mean()), "loss": 0.0, "clipfrac": 0.0, "grad_norm": 0.0}
            steps, n_opt = torch.arange(n - 1).repeat(B, 1), 0
            for _epoch in range(c.num_inner_epochs):
                order = torch.randperm(B, generator=self.generator)
                for start in range(0, B, c.ppo_minibatch):
                    rows = order[start:start + c.ppo_minibatch]
                    logp = chain_log_probs(self.policy_f, self.chain_timesteps, self.chain_alpha,
                                           batch["latents"][rows], steps[rows], _take(batch["cond"], rows))
                    loss, clipfrac = ppo_clipped_loss(logp, batch["logp_old"][rows], batch["adv"][rows], c.clip_range)
                    loss.backward()
                    stats["grad_norm"] += self.clip_and_step()
                    stats["loss"] += float(loss.detach())
                    stats["clipfrac"] += float(clipfrac)
                    n_opt += 1
            for key in ("loss", "clipfrac", "grad_norm"):
                stats[key] /= max(n_opt, 1)
            stats["opt_steps"] = float(n_opt)
            self.record_step(stats)
        return self.end_round()


__all__ = ["RLCMAgent", "consistency_denoise", "chain_grid", "sample_chains", "chain_log_probs",
           "ppo_clipped_loss", "batch_advantages", "consistency_problem"]

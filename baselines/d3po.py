"""D3PO (Yang et al. 2024, "Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model"):
online DPO on denoising trajectories. In this benchmark the "human" who compares two samples is the
optimistic proxy r̂⁺ (standardised units), as for every fine-tuner. Follows the official d3po code (its
reward-ranked online variant).

Per optimizer step (``updates_per_round`` per round, after the proxy refit and a new AdamW):

1. draw P = ``train_batch``/2 initial latents x_0 (and conditions) and run the current policy (DDIM η > 0,
   no grad) twice from each: a pair of trajectories that share x_0 (and the prompt) and differ in their
   step noise; every x_k is recorded;
2. score both samples with r̂⁺ and label the pair: with ``labels=soft`` (the default) the pair (a, b) gets
   the probability p = σ((r_a − r_b)/τ) that a wins; with ``labels=hard`` (official) the higher reward
   wins (h = +1 for the first member, −1 for the second, 0 for a tie, which gives no gradient: the
   official ``compare`` on one reward);
3. for every step k kept (all N at ``timestep_fraction`` 1; the same k for both members of a pair):

       ℓ_θ(k), ℓ_ref(k) = log N(x_{k+1}; μ_k(x_k), s_k² I) under the policy and the frozen pretrained model,
                          averaged over the latent elements (the official convention)
       log ρ_k = log clamp(exp(ℓ_θ(k) − ℓ_ref(k)), 1 − ε, 1 + ε)           (ε = ``ratio_clip``; None: no clamp)
       hard labels:  L_k = −log σ(β h (log ρ_k^a − log ρ_k^b))              (= −log σ(β [log ρ^w − log ρ^l]))
       soft labels:  L_k = −p log σ(β Δ_k) − (1 − p) log σ(−β Δ_k),   Δ_k = log ρ_k^a − log ρ_k^b

   with β = β_code = ``dpo_beta``; loss = mean of L_k over pairs and kept steps; one AdamW step (gradient
   clip ``max_grad_norm``).

The reference is the pretrained model for the whole run (never the previous round's policy). The official
code samples 2 × 10 pairs per epoch and takes one optimizer step per pair (train batch 1), accumulating the
losses of all 20 steps; here each optimizer step uses P pairs drawn fresh from the current policy: the
same per-step loss on a larger, on-policy minibatch. The model calls of a step run as one flattened batch
per chunk of ``sample_batch``/2 pairs (gradients accumulated): the same gradient as separate calls.

KL and the knob. With soft labels and no clamp the loss has a fixed point: for one step (N = 1) its
optimum is exactly π ∝ π_ref·exp(r̂⁺/β_s) with β_s = τ·β_code/D (β_code = ``dpo_beta``, τ =
``label_temperature``, D = latent elements: the per-element-mean log-probs make β_code act per element;
tests/test_d3po.py checks ‖μ*‖ = s²/β_s for every D). So D3PO sits on the suite's common KL scale
(sqdf_bbo/agents/kl_scale.py): the setting ``beta`` = β_s, in standardised reward units per nat of path
KL as for every KL-regularised method, sets the DPO temperature β_code = beta·D/τ when the run is built
(both are recorded; ``dpo_beta`` alone sets beta = τ·dpo_beta/D, and the two set to values that disagree
is an error). With N steps each step is its own DPO problem (the per-step loss is not the path-sum DPO
loss) on a reward it sees only through its own x_{k+1}, so the path reaches the tilt only approximately;
the harness measures the path KL on DDIM trajectories as for every fine-tuner. Hard labels have no finite fixed point: the loss keeps pushing
log ρ^w − log ρ^l up. The clamp stops a member's gradient once its ratio leaves [1 − ε, 1 + ε], a trust
region of about log(1 + ε) per latent element at each step taken alone; but the steps share the
network's weights, so the other steps' gradients keep moving it, and measured path KLs do not follow ε
(levy-manifold, N = 10, lr 1e-3, two seeds: 26–45 and 28–321 nats after three rounds for ε from 0.01 to
0.3 and without the clamp). Inside the region |βΔ| is small, the loss is nearly linear in Δ and AdamW
does not see the loss scale, so β barely matters either: hard labels are off the common scale (``beta``
is recorded as None and setting it is an error).

Defaults: the suite configuration, which is also the frontier's: soft labels (τ 1), no clamp (ε = ∞),
``beta`` 0.1 (the default of the other peers on the common scale, FIND and DTS), swept by the frontier on
the common grid 0.01, 0.1, 1, 10 (the grid rule's ``beta`` knob). The official configuration
(``config/base.py``: hard labels, ε 0.1, β_code 0.1) is :data:`OFFICIAL`, reached with ``--set
labels=hard --set ratio_clip=0.1`` (``dpo_beta`` defaults to the official 0.1 under hard labels); it is
run as a separate configuration, off the KL scale (its frontier needs ``--knob d3po=lr`` or
``--knob d3po=dpo_beta --grid d3po=...``). Official in both: AdamW weight decay 1e-4, gradient clip 1.0,
η 1, timestep_fraction 1. Scaled as every baseline (``BaselineSettings``): 32 trajectories (16 pairs) per
optimizer step, 20 steps per round, and the suite's fine-tuning learning rate 1e-3 (official 3e-5 over
8 000 steps on Stable Diffusion; 3e-5 and 3e-4 barely move the LoRA in the rounds here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from baselines._common import BaselineSettings
from sqdf_bbo.agents.kl_scale import latent_elements, resolve_beta
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.diffusion import DDIMSchedule, log_prob, sample_trajectory
from sqdf_bbo.settings import setting

Tensor = torch.Tensor
LABELS = ("hard", "soft")
#: β_code of the official d3po code (``config/base.py`` L101); the DPO temperature under hard labels
OFFICIAL_DPO_BETA = 0.1
#: the official configuration (hard labels, ε 0.1, β_code 0.1): off the common KL scale, run separately
OFFICIAL = {"labels": "hard", "ratio_clip": 0.1, "dpo_beta": OFFICIAL_DPO_BETA}


def dpo_temperature(beta: float, latent_elements: int, label_temperature: float = 1.0) -> float:
    """β_code = β_s·D/τ: the DPO temperature on per-element-mean log-ratios whose soft-label fixed point is
    π_ref·exp(r/β_s) (β_s = ``beta``, reward units per nat; D latent elements; τ the soft-label temperature)."""
    return float(beta) * latent_elements / float(label_temperature)


def common_beta(dpo_beta: float, latent_elements: int, label_temperature: float = 1.0) -> float:
    """β_s = τ·β_code/D, the inverse of :func:`dpo_temperature`."""
    return float(label_temperature) * float(dpo_beta) / latent_elements


def preference(r_a: Tensor, r_b: Tensor, labels: str = "hard", temperature: float = 1.0) -> Tensor:
    """The label of each pair (a, b) from rewards r_a, r_b (P,): hard h = sign(r_a − r_b) ∈ {−1, 0, +1}
    (+1: a wins; 0: a tie), soft p = σ((r_a − r_b)/τ), the probability that a wins. Float64 (P,)."""
    d = r_a.double() - r_b.double()
    if labels == "hard":
        return torch.sign(d)
    if labels == "soft":
        if not temperature > 0:
            raise ValueError(f"label_temperature must be > 0, got {temperature}")
        return torch.sigmoid(d / temperature)
    raise ValueError(f"labels must be one of {', '.join(map(repr, LABELS))}, got {labels!r}")


def clamped_log_ratio(logp: Tensor, logp_ref: Tensor, ratio_clip: Optional[float]) -> Tensor:
    """log clamp(exp(ℓ_θ − ℓ_ref), 1 − ε, 1 + ε) elementwise, zero gradient where clamped; ε None or inf:
    ℓ_θ − ℓ_ref. Computed as a clamp of the log-ratio to [log(1 − ε), log(1 + ε)] (no lower bound for
    ε ≥ 1): the same value and gradient without overflowing exp. ℓ_ref is treated as data."""
    d = logp - logp_ref.detach()
    if ratio_clip is None or math.isinf(ratio_clip):
        return d
    lo = math.log(1.0 - ratio_clip) if ratio_clip < 1 else None
    return torch.clamp(d, min=lo, max=math.log1p(ratio_clip))


def d3po_step_losses(log_ratio_a: Tensor, log_ratio_b: Tensor, pref: Tensor, beta: float,
                     labels: str = "hard") -> Tensor:
    """Per-pair, per-step DPO losses L_k (P, T) from the clamped log-ratios of the two members (P, T) and
    the pair labels ``pref`` (P,) of :func:`preference`."""
    delta = beta * (log_ratio_a - log_ratio_b)
    p = pref.to(delta.device, delta.dtype)[:, None]
    if labels == "hard":
        return F.softplus(-p * delta)  # −log σ(β h Δ); h = 0 gives log 2 with zero gradient
    if labels == "soft":
        return p * F.softplus(-delta) + (1 - p) * F.softplus(delta)
    raise ValueError(f"labels must be one of {', '.join(map(repr, LABELS))}, got {labels!r}")


def _rows(cond: Any, rows: Tensor) -> Any:
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[rows.to(cond.device)]
    return [cond[i] for i in rows.tolist()]


def step_log_probs(eps_fn, schedule: DDIMSchedule, latents: Tensor, steps: Tensor, cond: Any = None) -> Tensor:
    """Per-element-mean log N(x_{k+1}; μ_k(x_k), s_k² I) of recorded chains at chosen steps, one flattened
    model call. latents (B, N+1, *shape), steps (B, T) long in [0, N−1] -> (B, T); x_{k+1} is data."""
    B, T = steps.shape
    N = schedule.num_steps
    if latents.shape[:2] != (B, N + 1):
        raise ValueError(f"latents must be (B={B}, N+1={N + 1}, ...), got {tuple(latents.shape)}")
    rows = torch.arange(B).repeat_interleave(T)
    ks = steps.reshape(-1).cpu()
    x, x_next = latents[rows, ks], latents[rows, ks + 1]
    eps = eps_fn(x, schedule.timestep_batch(ks, B * T, x.device), _rows(cond, rows))
    mu = schedule.mean(x, eps, ks)
    return log_prob(x_next, mu, schedule.step_std(ks, x), reduction="mean").reshape(B, T)


class D3POAgent(OnlineFinetuneAgent):
    """Online DPO on pairs of denoising trajectories that share their initial noise, labelled by r̂⁺."""

    @dataclass
    class Settings(BaselineSettings):
        train_batch: int = setting(32, "trajectories per optimizer step: train_batch/2 pairs sharing x_0 (even)", ge=2)
        lr: float = setting(1e-3, "AdamW learning rate (official 3e-5 for 8 000 steps on SD)", gt=0)
        weight_decay: float = setting(1e-4, "AdamW weight decay (official 1e-4)", ge=0)
        max_grad_norm: float = setting(1.0, "global gradient-norm clip (official 1.0)", gt=0)
        beta: Optional[float] = setting(0.1, "common KL scale (soft labels): reward units per nat of path KL; "
                                             "dpo_beta = beta·D/τ; none with hard labels", gt=0)
        dpo_beta: Optional[float] = setting(None, "β_code: DPO temperature on per-element-mean log-ratios; none: "
                                                  "beta·D/τ (soft labels) or the official 0.1 (hard)", gt=0)
        ratio_clip: Optional[float] = setting(None, "ε: ratio to the pretrained model clamped to [1 − ε, 1 + ε] "
                                                    "(official 0.1); none: no clamp (the suite's)", gt=0)
        labels: str = setting("soft", "soft: p = σ((r_a − r_b)/τ) (the suite's, on the beta scale); hard: the "
                                      "higher proxy reward wins (official)", choices=LABELS)
        label_temperature: float = setting(1.0, "τ of the soft labels, standardised reward units", gt=0)
        timestep_fraction: float = setting(1.0, "fraction of the steps of each pair trained on (the same steps "
                                                "for both members)", gt=0, le=1)

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if float(c["eta"]) <= 0:
            raise ValueError(f"D3PO needs eta > 0 (the log-prob of an eta=0 step does not exist), got {c['eta']}")
        if int(c["train_batch"]) % 2:
            raise ValueError(f"D3PO's train_batch counts the trajectories of its pairs and must be even, got "
                             f"{c['train_batch']}")
        return cls._resolve_temperature(c, overrides, latent_elements(task))

    @staticmethod
    def _resolve_temperature(c: dict, overrides: dict, D: int) -> dict:
        """Soft labels: ``beta`` (common scale) and ``dpo_beta`` made consistent, dpo_beta = beta·D/τ
        (``dpo_beta`` set alone derives beta). Hard labels: off the scale, beta None, dpo_beta official 0.1
        unless set."""
        given = lambda k: overrides.get(k) is not None  # noqa: E731
        if c["labels"] == "hard":
            if given("beta"):
                raise ValueError("beta (the common KL scale) needs labels=soft: hard labels have no finite fixed "
                                 "point; set dpo_beta, the DPO temperature, instead")
            c["beta"] = None
            if c["dpo_beta"] is None:
                c["dpo_beta"] = OFFICIAL_DPO_BETA
            return c
        tau = float(c["label_temperature"])
        if given("dpo_beta") and not given("beta"):
            c["beta"] = None  # the native knob alone: beta is derived from it
        if c["beta"] is None and c["dpo_beta"] is None:
            raise ValueError("D3PO with soft labels needs beta (reward units per nat) or dpo_beta; both are none")
        return resolve_beta(c, overrides, "dpo_beta", lambda b: dpo_temperature(b, D, tau),
                            lambda d: common_beta(d, D, tau))

    @property
    def train_steps(self) -> int:
        """Steps per pair that get a loss term: max(1, floor(N·timestep_fraction))."""
        return max(1, int(math.floor(self.schedule.num_steps * self.cfg.timestep_fraction + 1e-9)))

    # ---- one step's data ------------------------------------------------------------------------------
    def collect_pairs(self, pairs: int) -> dict[str, Any]:
        """``pairs`` pairs of trajectories from the current policy (no grad). Rows 0..P−1 are the first
        members, rows P..2P−1 the second ones; row i and row P+i share x_0 and the condition. Returns
        latents (2P, N+1, *shape), cond, reward (2P,) float64 (r̂⁺, standardised) and pref (P,)."""
        if pairs < 1 or self.cfg.train_batch % 2:
            raise ValueError(f"D3PO needs an even train_batch of at least 2 per process (its pairs' trajectories), "
                             f"got {self.cfg.train_batch}")
        g = self.generator
        cond = self.task.sample_conditions(pairs, g) if self.task.sample_conditions else None
        x0 = self.reference.initial_noise(pairs, g, self.schedule)
        x0 = torch.cat([x0, x0])
        if cond is not None:
            cond = torch.cat([cond, cond]) if isinstance(cond, Tensor) else list(cond) + list(cond)
        bs = max(2, self.cfg.sample_batch)
        pol = self.sampling_policy()
        latents, rewards = [], []
        for i in range(0, 2 * pairs, bs):
            c = None if cond is None else cond[i:i + bs]
            with torch.no_grad():
                tr = sample_trajectory(pol, self.schedule, x0[i:i + bs], cond=c, generator=g)
                rewards.append(self.reward_of_designs(self.reference.decode(tr.final)).double().cpu())
            latents.append(tr.latents)
        r = torch.cat(rewards)
        pref = preference(r[:pairs], r[pairs:], self.cfg.labels, self.cfg.label_temperature)
        return {"latents": torch.cat(latents), "cond": cond, "reward": r, "pref": pref}

    def step_order(self, pairs: int) -> Tensor:
        """(P, T) steps per pair: an independent permutation per pair, its first T = train_steps kept."""
        N = self.schedule.num_steps
        return torch.stack([torch.randperm(N, generator=self.generator)[: self.train_steps] for _ in range(pairs)])

    def pair_loss_backward(self, batch: dict[str, Any], steps: Tensor) -> dict[str, float]:
        """Backpropagate the mean D3PO loss of a batch of pairs over the chosen steps (P, T); model calls in
        chunks of ``sample_batch``/2 pairs, gradients accumulated. Returns the step's statistics."""
        P, T = steps.shape
        chunk = max(1, self.cfg.sample_batch // 2)
        c = self.cfg
        loss_sum, clipped = 0.0, 0.0
        for s in range(0, P, chunk):
            idx = torch.arange(s, min(s + chunk, P))
            rows = torch.cat([idx, idx + P])
            ks = torch.cat([steps[idx], steps[idx]])
            lat, cond = batch["latents"][rows], _rows(batch["cond"], rows)
            with torch.no_grad():
                lp_ref = step_log_probs(self.reference_eps, self.schedule, lat, ks, cond)
            lp = step_log_probs(self.policy_eps, self.schedule, lat, ks, cond)
            lr = clamped_log_ratio(lp, lp_ref, c.ratio_clip)
            m = len(idx)
            losses = d3po_step_losses(lr[:m], lr[m:], batch["pref"][idx], c.dpo_beta, c.labels)
            (losses.sum() / (P * T)).backward()
            with torch.no_grad():
                loss_sum += float(losses.sum())
                clipped += float((lr != lp - lp_ref).double().sum())
        return {"loss": loss_sum / (P * T), "clip_frac": clipped / (2 * P * T)}

    def improve(self) -> dict[str, Any]:
        """One D3PO round: refit r̂⁺ and start a new AdamW; per optimizer step, fresh pairs from the policy,
        labelled by r̂⁺, and one step on the per-step DPO loss against the pretrained model."""
        self.begin_round()
        for _ in self.round_steps():
            pairs = self.cfg.train_batch // 2
            batch = self.collect_pairs(pairs)
            r = batch["reward"]
            stats = {"reward": float(r.mean()), "reward_gap": float((r[:pairs] - r[pairs:]).abs().mean())}
            if self.cfg.labels == "hard":
                stats["tie_frac"] = float((batch["pref"] == 0).double().mean())
            stats.update(self.pair_loss_backward(batch, self.step_order(pairs)))
            stats["grad_norm"] = self.clip_and_step()
            self.record_step(stats)
        return self.end_round()


__all__ = ["D3POAgent", "OFFICIAL", "dpo_temperature", "common_beta", "preference", "clamped_log_ratio", "d3po_step_losses", "step_log_probs"]

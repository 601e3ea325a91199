"""FK steering (Singhal et al. 2025, Feynman-Kac steering): an inference-time peer that runs a population
of P particles through the frozen pretrained sampler and resamples them by potentials built from the
optimistic proxy (official code zacharyhorvitz/Fk-Diffusion-Steering).

Per population (batched over populations), with λ = ``potential_scale`` and S = the resampling steps:

    z_0(i) ~ N(0, I);  r_prev(i) = -inf (max) or 0 (add, diff);  logG(i) = 0;  logW(i) = 0
    for k = 0..N-1:
        ε̂ = ε_ref(z_k, τ_k);  x̂ = Tweedie(z_k, ε̂)           (the step input's estimate, as official)
        z_{k+1} = μ_k(z_k, ε̂) + s_k ξ                        (pretrained transition, η = the run's eta > 0)
        if k in S:                                          (S always holds N-1)
            r = r̂⁺(decode x̂)   (k < N-1)   or   r̂⁺(decode z_N)   (k = N-1)
            max:  c = max(r, r_prev);  log w = λ c;  r_prev = c
            add:  c = r + r_prev;      log w = λ c;  r_prev = c
            diff: log w = λ (r - r_prev);            r_prev = r
            k = N-1 and max/add:  log w = λ r - logG          (undo the intermediate potentials)
            logW += log w;  logG += log w
            resample if the rule says so (intermediate: always, or ESS < P/2 when ``adaptive``;
            final: ``final_resample`` = ess | always | never):
                idx ~ Multinomial(softmax(logW), P);  z, r_prev, logG <- [idx];  logW = 0
    unconditional tasks: propose every particle (n designs = ceil(n / P) populations, the first n particles);
    conditional tasks (prompts): one population per design's prompt, proposing one particle drawn by the
    final weights (so P times the sampling cost, as in the official text-to-image runs)

Every potential targets p_ref(z)·exp(λ r(z_N)) / Z as P -> inf; intermediate rewards only shape the
proposal. Weights are carried in log space between resamplings (the official adaptive mode drops them,
issue #12) and normalised with a max shift (the official exp(λr) clamp silently ties above λr = 23).

S scales the official SDXL schedule (every 20 of 100 steps from 20 to 80, plus the last) to the run's N:
every ``resample_every`` steps (0 = N // 5) from that step up to N - that step, plus N - 1.

KL to the pretrained model has no closed form: ``improve()`` logs the *target* KL of the P -> inf limit,
KL(p* ‖ p_ref) = E_{p*}[λ r] - log E_{p_ref}[exp(λ r)], estimated by self-normalised importance weights of
``kl_samples`` pretrained samples (``target_kl``), and the bound |S|·log P the resampling cannot exceed
(each multinomial resampling from P particles multiplies the density ratio by at most P).
``analytic_path_kl`` is NaN. On the common KL scale β = 1/λ (setting ``beta``), the frontier's knob.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from sqdf_bbo.agents.online import ProxyGuidedAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor
POTENTIALS = ("max", "add", "diff")


def resampling_steps(num_steps: int, every: int = 0) -> list[int]:
    """Sorted grid indices k at which potentials are applied: every ``every`` (0: num_steps // 5, at least 1)
    steps from ``every`` to num_steps - every, plus the last step num_steps - 1 (100 steps, every 20:
    20, 40, 60, 80, 99, the official SDXL schedule)."""
    every = every or max(1, num_steps // 5)
    return sorted(set(range(every, num_steps - every + 1, every)) | {num_steps - 1})


def potential_log_weights(kind: str, lam: float, r: Tensor, r_prev: Tensor, log_g: Tensor,
                          final: bool) -> tuple[Tensor, Tensor]:
    """(log w (B,), new r_prev (B,)) for rewards r at one potential step (module docstring)."""
    if kind == "max":
        c = torch.maximum(r, r_prev)
    elif kind == "add":
        c = r + r_prev
    elif kind == "diff":
        return lam * (r - r_prev), r
    else:
        raise ValueError(f"potential must be one of {', '.join(POTENTIALS)}, got {kind!r}")
    if final:
        return lam * r - log_g, c
    return lam * c, c


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = (Σ w)² / Σ w² per row of log-weights (..., P), computed in log space."""
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


class ParticleWeights:
    """The Feynman-Kac bookkeeping of ``pops`` populations of P particles (module docstring): the previous
    reward term r_prev, the sum of applied log-potentials log_g and the log-weights log_w carried since
    the last resampling, all (pops, P) float64. Independent of what a particle is, so the tests drive it
    with a discrete chain."""

    def __init__(self, pops: int, particles: int, kind: str, lam: float):
        if kind not in POTENTIALS:
            raise ValueError(f"potential must be one of {', '.join(POTENTIALS)}, got {kind!r}")
        self.kind, self.lam, self.P = kind, float(lam), int(particles)
        self.r_prev = torch.full((pops, particles), -math.inf if kind == "max" else 0.0, dtype=torch.float64)
        self.log_g = torch.zeros(pops, particles, dtype=torch.float64)
        self.log_w = torch.zeros(pops, particles, dtype=torch.float64)

    def weigh(self, r: Tensor, final: bool) -> None:
        """Apply the potential of rewards r (pops, P) at an intermediate or the final step."""
        lw, self.r_prev = potential_log_weights(self.kind, self.lam, r.double(), self.r_prev, self.log_g, final)
        self.log_w, self.log_g = self.log_w + lw, self.log_g + lw

    def due(self, rule: str) -> Tensor:
        """(pops,) bool: which populations resample under ``rule`` = always | never | ess (ESS < P/2)."""
        pops = self.log_w.shape[0]
        if rule == "always":
            return torch.ones(pops, dtype=torch.bool)
        if rule == "never":
            return torch.zeros(pops, dtype=torch.bool)
        return effective_sample_size(self.log_w) < self.P / 2

    def resample(self, due: Tensor, generator: torch.Generator) -> Tensor:
        """Multinomial ancestors (pops, P) by softmax(log_w) where ``due`` (identity elsewhere); reindexes the
        state and resets the resampled rows' log-weights. The caller reindexes its particles with them."""
        draws = torch.multinomial(torch.softmax(self.log_w, dim=1), self.P, replacement=True, generator=generator)
        anc = torch.where(due[:, None], draws, torch.arange(self.P).expand_as(draws))
        self.r_prev, self.log_g = self.r_prev.gather(1, anc), self.log_g.gather(1, anc)
        self.log_w = torch.where(due[:, None], torch.zeros_like(self.log_w), self.log_w)
        return anc


def tilted_target_kl(r: Tensor, lam: float) -> float:
    """KL(p* ‖ p) for p* ∝ p·exp(λ r), from rewards r (n,) of samples of p: E_w[λ r] - log mean exp(λ r)
    with self-normalised weights w = softmax(λ r)."""
    lr = lam * r.double()
    w = torch.softmax(lr, 0)
    return float((w * lr).sum() - (torch.logsumexp(lr, 0) - math.log(len(lr))))


class FKSteeringAgent(ProxyGuidedAgent):
    """Feynman-Kac particle steering of the frozen pretrained model with the optimistic proxy."""

    steers_sampling: ClassVar[bool] = True

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        particles: int = setting(4, "P: particles per population (official 4)", ge=1)
        potential_scale: float = setting(10.0, "λ: potential temperature, log w = λ·(reward term) (official 10)",
                                         ge=0)
        beta: Optional[float] = setting(None, "common KL scale (reward units per nat) of the P -> inf target: "
                                              "potential_scale = 1/beta", gt=0)
        potential: str = setting("max", "potential: max (official SDXL run), add or diff", choices=POTENTIALS)
        resample_every: int = setting(0, "steps between potentials (0 = num_steps // 5, the official 20 of 100)",
                                      ge=0)
        adaptive: bool = setting(False, "resample at intermediate steps only when ESS < P/2 (official off)")
        final_resample: str = setting("ess", "resampling at the last step: ess (ESS < P/2), always, never",
                                      choices=("ess", "always", "never"))
        kl_samples: int = setting(256, "pretrained samples for the self-normalised target-KL estimate (0: skip)",
                                  ge=0)

    @classmethod
    def resolve_config(cls, task, overrides):
        from sqdf_bbo.agents.kl_scale import resolve_beta

        c = super().resolve_config(task, overrides)
        resolve_beta(c, overrides, "potential_scale", lambda b: 1.0 / b, lambda lam: 1.0 / lam if lam > 0 else math.inf)
        if not float(c["eta"]) > 0:
            raise ValueError(f"FK steering needs eta > 0 (with eta=0 resampled copies never separate), "
                             f"got eta={c['eta']}")
        return c

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.policy = self.reference  # nothing is trained
        self.duplicates = 0  # exact duplicate proposals made by the final resampling (wasted queries)

    def analytic_path_kl(self) -> float:
        return 0.0 if not self.optimistic.fitted or self.cfg.particles == 1 else float("nan")

    @torch.no_grad()
    def steer(self, pops: int, generator: torch.Generator, cond: Any = None) -> tuple[Tensor, Tensor]:
        """(pops·P steered designs (pops·P, *design_shape) population-major, their final log-weights (pops, P);
        all zero where the last step resampled)."""
        P, N, sched = self.cfg.particles, self.schedule.num_steps, self.schedule
        steps = set(resampling_steps(N, self.cfg.resample_every))
        w = ParticleWeights(pops, P, self.cfg.potential, self.cfg.potential_scale)
        B = pops * P
        z = self.reference.initial_noise(B, generator, sched)
        for k in range(N):
            eps = self.reference_eps(z, sched.timestep_batch(k, B, z.device), cond)
            x_hat = sched.predict_x0(z, eps, k)
            xi = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            z = sched.mean(z, eps, k) + sched.step_std(k, z) * xi
            if k not in steps:
                continue
            final = k == N - 1
            w.weigh(self.reward(z if final else x_hat).double().cpu().reshape(pops, P), final)
            due = w.due(self.cfg.final_resample if final else ("ess" if self.cfg.adaptive else "always"))
            if not due.any():
                continue
            anc = w.resample(due, generator)
            rows = (torch.arange(pops)[:, None] * P + anc).reshape(-1)
            z = z[rows.to(z.device)]
            if cond is not None:
                cond = cond[rows.to(cond.device)] if isinstance(cond, Tensor) else [cond[i] for i in rows.tolist()]
            if final:
                self.duplicates += int(sum(P - len(set(a.tolist())) for a in anc[due]))
        return self.policy.decode(z), w.log_w

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        if n == 0:
            return torch.empty((0, *self.task.design_shape))
        P = self.cfg.particles
        if not self.optimistic.fitted or P == 1:  # plain pretrained samples
            return self._propose_local(n, generator, cond)
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        bs = max(1, self.cfg.sample_batch // P)  # populations per batch
        out = []
        if cond is None:
            pops = -(-n // P)
            for i in range(0, pops, bs):
                out.append(self.steer(min(bs, pops - i), generator)[0])
            return torch.cat(out)[:n].detach()
        for i in range(0, n, bs):  # one population per prompt, one particle out
            m = min(bs, n - i)
            rows = [i + j for j in range(m) for _ in range(P)]
            c = cond[torch.tensor(rows)] if isinstance(cond, Tensor) else [cond[t] for t in rows]
            designs, log_w = self.steer(m, generator, c)
            pick = torch.multinomial(torch.softmax(log_w, dim=1), 1, generator=generator)[:, 0]
            out.append(designs[torch.arange(m) * P + pick])
        return torch.cat(out).detach()

    def target_kl(self, generator: torch.Generator) -> float:
        """Self-normalised estimate of KL(p_ref·exp(λ r)/Z ‖ p_ref) from ``kl_samples`` pretrained samples."""
        n = self.cfg.kl_samples
        designs = self._propose_local(n, generator)
        bs = self.cfg.sample_batch
        with torch.no_grad():
            r = torch.cat([self.reward_of_designs(designs[i:i + bs]) for i in range(0, n, bs)])
        return tilted_target_kl(r.cpu(), self.cfg.potential_scale)

    def improve(self) -> dict[str, float]:
        stats = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.round += 1
        P, N = self.cfg.particles, self.schedule.num_steps
        S = resampling_steps(N, self.cfg.resample_every)
        stats["kl_resampling_bound"] = len(S) * math.log(P)
        if self.cfg.kl_samples > 0:
            stats["target_kl"] = self.target_kl(self.generator)
        stats["final_duplicates"] = float(self.duplicates)
        return stats

"""Best-of-N with the optimistic proxy: an inference-time peer that never changes the model
(no fine-tuning at all).

Pseudo-code, per proposal call of n designs (after round 1's proxy refit):

    draw N·n designs from the frozen pretrained model (the harness's sampler, same η)
    s = r̂⁺(designs)                                  # the proxy, standardised units
    mode=group (default): split into n groups of N, propose each group's argmax
    mode=pool:            propose the global top n of the N·n

``improve()`` only refits r̂⁺ on every observation (no fine-tuning). Before the first refit (round 0's
queries) there is no proxy and the proposals are plain pretrained samples.

KL to the pretrained model. Group mode is exactly best-of-N: the selected design's density ratio to
p_ref is N·F(s)^{N-1} (F = the CDF of s under p_ref), so KL = log N − (N−1)/N whenever ties have
probability 0 (Beirami et al. 2024); the selection depends on the final design only, so the path KL
equals this terminal KL. The harness reports it as ``path_kl`` for this method (``analytic_path_kl``);
with reward atoms (e.g. clamped designs) it is an upper bound. Pool mode is not best-of-N: its KL lies
between the group value and log N, and ``analytic_path_kl`` returns that upper bound log N.
Knob on the frontier: N (``oversample``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sqdf_bbo.agents.online import ProxyGuidedAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ p_ref) = log n − (n−1)/n for a continuous score (0 for n = 1)."""
    return math.log(n) - (n - 1) / n


def select_best(scores: Tensor, n: int, mode: str = "group") -> Tensor:
    """Indices (n,) into N·n candidates: each group's argmax (group g = rows g·N .. g·N+N−1) or the top n."""
    total = scores.shape[0]
    if total % n:
        raise ValueError(f"{total} candidates do not split into {n} groups")
    if mode == "group":
        N = total // n
        return torch.arange(n) * N + scores.reshape(n, N).argmax(dim=1)
    if mode == "pool":
        return torch.topk(scores, n).indices
    raise ValueError(f"mode must be 'group' or 'pool', got {mode!r}")


class BestOfNAgent(ProxyGuidedAgent):
    """Each proposal = the proxy's best of N pretrained samples; the model is never fine-tuned."""

    steers_sampling: ClassVar[bool] = True  # evaluated through propose(), not the policy's own samples

    @dataclass
    class Settings(ProxyGuidedAgent.Settings):
        oversample: int = setting(4, "N: pretrained samples per proposal (1 = the pretrained model)", ge=1)
        mode: str = setting("group", "group: best of each N (exact best-of-N); pool: top n of all N·n",
                            choices=("group", "pool"))

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.policy = self.reference  # nothing is trained: the pretrained model is the sampler

    def analytic_path_kl(self) -> float:
        """Path KL of the proposals to the pretrained model (nats): 0 before the first proxy exists."""
        N = self.cfg.oversample
        if not self.optimistic.fitted or N == 1:
            return 0.0
        return best_of_n_kl(N) if self.cfg.mode == "group" else math.log(N)

    def propose(self, n: int, generator: torch.Generator, cond: Any = None) -> Tensor:
        N = self.cfg.oversample
        if not self.optimistic.fitted or N == 1 or n == 0:
            return self._propose_local(n, generator, cond)
        cand_cond = None if cond is None else [c for c in cond for _ in range(N)]
        cands = self._propose_local(N * n, generator, cand_cond)
        bs = self.cfg.sample_batch
        with torch.no_grad():
            scores = torch.cat([self.reward_of_designs(cands[i:i + bs]) for i in range(0, len(cands), bs)])
        return cands[select_best(scores.detach().cpu(), n, self.cfg.mode)]

    def improve(self) -> dict[str, float]:
        stats = {f"proxy_{k}": v for k, v in self.refit_proxy().items()}
        self.round += 1
        stats["analytic_path_kl"] = self.analytic_path_kl()
        return stats

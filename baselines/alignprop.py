"""AlignProp (Prabhudesai et al. 2023) on the online harness (after the paper and its official code).

Update (one optimizer step): draw ``train_batch`` initial noises and step noises, run the DDIM chain
(eta = the task's eta, 1 by default) *with* gradient through every model call, each call wrapped in
non-reentrant gradient checkpointing; maximise the optimistic proxy, loss = -mean_b r̂⁺(x_N) (standardised
units; the official 0.01·|r - 10| has the same gradient direction while r < 10, and Adam is invariant to the
0.01). Randomised truncation as in the official code: one cut k* per *trajectory*; model outputs at steps
k < k* are detached. Strategies, with the official N = 50 numbers scaled by N/50 for other N:

- ``gaussian`` (default): k* = floor(Normal(42·N/50, 5·N/50)), redrawn until 1 <= k* <= N-1 (≈ 8 of 50
  steps carry gradient);
- ``uniform``: k* ~ randint[0, N), redrawn until 1 <= k* <= N-1;
- ``fixed``: k* = N - ``truncation_K`` (the official ``aesthetic_k1`` run is K = 1);
- ``none``: k* = 0 (full backprop).

The official code draws k* per trajectory (TRL and SEIKO redraw per step; we follow the official code).
Which strategy AlignProp's aesthetic config uses by default was not confirmed from its repository here
(our reading of the paper lists ``gaussian`` first); recorded as unverified.

Defaults: official ``alignprop_config.py`` optimizer (AdamW lr 1e-3, wd 1e-4, grad clip 1.0). Scaled for
the synthetic tier: 32 trajectories per step (official: 128) and 20 steps per round (official runs: one
step per epoch, 20 epochs) — the same ``train_batch``/``updates_per_round`` as every other baseline
(``baselines._common.BaselineSettings``) so methods differ only in their update rule. No KL term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from baselines._common import (CHECKPOINT_DOC, BaselineSettings, Checkpointing, uses_checkpointing, check_choice,
    check_positive_int, draw_noise, truncated_chain)
from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.settings import setting

Tensor = torch.Tensor

STRATEGIES = ("gaussian", "uniform", "fixed", "none")


def draw_cut(strategy: str, n: int, num_steps: int, generator: torch.Generator, K: int = 1) -> Tensor:
    """Per-trajectory truncation indices k* (n,) long in [0, N-1]; steps k >= k* carry gradient."""
    check_choice("truncation", strategy, STRATEGIES)
    N = num_steps
    if strategy == "none":
        return torch.zeros(n, dtype=torch.long)
    if strategy == "fixed":
        K = check_positive_int("truncation_K", K)
        if K > N:
            raise ValueError(f"truncation_K must be <= num_steps={N}, got {K}")
        return torch.full((n,), N - K, dtype=torch.long)
    if N < 2:
        raise ValueError(f"truncation {strategy!r} needs num_steps >= 2, got {N}")
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        while True:
            if strategy == "gaussian":
                v = int(torch.floor(42.0 * N / 50 + 5.0 * N / 50 * torch.randn((), generator=generator,
                                                                              dtype=torch.float64)))
            else:
                v = int(torch.randint(0, N, (), generator=generator))
            if 1 <= v <= N - 1:
                out[i] = v
                break
    return out


class AlignPropAgent(OnlineFinetuneAgent):
    """Reward backprop through the whole checkpointed chain with randomised per-trajectory truncation."""

    @dataclass
    class Settings(BaselineSettings):
        lr: float = setting(1e-3, "AdamW learning rate (AlignProp config)", gt=0)
        truncation: str = setting("gaussian", "randomised truncation of the backprop (per trajectory)",
                                  choices=STRATEGIES)
        truncation_K: int = setting(1, "steps with gradient when truncation = fixed", ge=1)
        checkpoint: Checkpointing = setting("auto", CHECKPOINT_DOC)

    @classmethod
    def resolve_config(cls, task, overrides):
        c = super().resolve_config(task, overrides)
        if c["truncation"] == "fixed" and c["truncation_K"] > int(c["num_steps"]):
            raise ValueError(f"truncation_K must be <= num_steps={c['num_steps']}, got {c['truncation_K']}")
        return c

    def cut_indices(self, n: int) -> Tensor:
        return draw_cut(self.cfg.truncation, n, self.schedule.num_steps, self.generator,
                        self.cfg.truncation_K)

    def improve(self) -> dict[str, Any]:
        """One AlignProp round: refit r̂⁺; per update, run the chain with gradient (checkpointed, truncated
        at a random step), ascend r̂⁺(x_N), step."""
        B = self.cfg.train_batch
        self.begin_round()
        for _ in self.round_steps():
            x0, noises, cond = draw_noise(self, B)
            cut = self.cut_indices(B)
            xN = truncated_chain(self.policy_eps, self.schedule, x0, noises, cond, cut=cut,
                                 checkpoint=uses_checkpointing(self))
            r = self.reward(xN)
            loss = -r.mean()
            loss.backward()
            self.record_step({"loss": loss.item(), "reward": r.mean().item(), "grad_norm": self.clip_and_step(),
                              "grad_steps": float(self.schedule.num_steps - cut.double().mean())})
        return self.end_round()

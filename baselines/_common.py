"""Shared pieces of the reward-backprop baselines (AlignProp, DRaFT, SEIKO): a differentiable DDIM chain
with per-trajectory truncation, and the common synthetic-tier settings.

Index convention (shared by every method): generation step k = 0..N-1 maps x_k -> x_{k+1}; x_0 is noise, x_N the sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
import torch.utils.checkpoint

from sqdf_bbo.agents.online import OnlineFinetuneAgent
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.settings import setting

Tensor = torch.Tensor
EpsFn = Callable[[Tensor, Tensor, Any], Tensor]

@dataclass
class BaselineSettings(OnlineFinetuneAgent.Settings):
    """Settings that mean the same thing in every baseline, scaled once for the synthetic (CPU) tier and
    shared unchanged: trajectories per optimizer step and optimizer steps per round. The official image
    runs use 64-256 trajectories per step; 32 keeps a 4-round budget-2000 run at a few seconds on one core."""

    train_batch: int = setting(32, "trajectories per optimizer step", ge=1)
    updates_per_round: int = setting(20, "optimizer steps per round", ge=0)
    weight_decay: float = setting(1e-4, "AdamW weight decay (AlignProp/DDPO/DRaFT configs)", ge=0)
    max_grad_norm: float = setting(1.0, "global gradient-norm clip (AlignProp/DDPO/DRaFT configs)", gt=0)


#: the ``checkpoint`` setting of the reward-backprop agents (SEIKO, AlignProp, DRaFT-K/DRaFT/DRaFT-1)
CHECKPOINT_DOC = ("gradient checkpointing of every model call: 'auto' = on for the image and SD backbones (their "
                  "activations dominate memory), off for the vector MLP (recomputing only costs time); same result")
Checkpointing = Union[bool, Literal["auto"]]


def uses_checkpointing(agent) -> bool:
    """The agent's ``checkpoint`` setting resolved: True/False as set, 'auto' = on outside the synthetic tier.
    Checkpointing recomputes each forward pass in backward, so it changes memory and time, not the result."""
    value = agent.cfg.checkpoint  # True, False or "auto" (typed: Union[bool, Literal["auto"]])
    return agent.task.tier != "synthetic" if value == "auto" else value


def check_choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def truncated_chain(
    eps_fn: EpsFn,
    schedule: DDIMSchedule,
    x_init: Tensor,
    noises: Tensor,
    cond: Any = None,
    cut: Optional[Tensor] = None,
    checkpoint: bool = True,
    mask: Optional[Tensor] = None,
    step_hook: Optional[Callable[[int, Tensor, Tensor, Tensor, Tensor], None]] = None,
) -> Tensor:
    """Differentiable chain x_0 -> x_N with fixed injected noises (reparameterisation).

    x_init: (B, *shape); noises: (B, N, *shape); cut: (B,) long, the per-trajectory truncation index k*:
    the model output at steps k < cut[b] is detached for trajectory b, so gradients reach the parameters
    only through steps k*..N-1 (both the direct d eps/d theta path and the d eps/d x path of later steps).
    cut=None or all zeros is full backprop. ``mask`` (B, N) bool instead gives an arbitrary per-(trajectory,
    step) pattern (True = step carries gradient; SEIKO's per-step redraw); pass cut or mask, not both.
    Steps where every trajectory is truncated run without grad.
    ``checkpoint`` recomputes each model call in backward (non-reentrant). ``step_hook(k, x_k, t, eps,
    grad_mask)`` is called after each model call (used by SEIKO's KL). Returns x_N (B, *shape).
    """
    B = x_init.shape[0]
    N = schedule.num_steps
    if noises.shape[:2] != (B, N):
        raise ValueError(f"noises must have shape (B={B}, N={N}, ...), got {tuple(noises.shape)}")
    if mask is None:
        if cut is None:
            cut = torch.zeros(B, dtype=torch.long)
        cut = cut.to(torch.long).cpu()
        if cut.shape != (B,) or (cut < 0).any() or (cut > N).any():
            raise ValueError(f"cut must be a (B,) long tensor with values in [0, {N}], got {cut.tolist()}")
        mask = torch.arange(N)[None, :] >= cut[:, None]
    elif cut is not None:
        raise ValueError("pass either cut or mask to truncated_chain, not both")
    mask = mask.to(torch.bool).cpu()
    if mask.shape != (B, N):
        raise ValueError(f"mask must have shape (B={B}, N={N}), got {tuple(mask.shape)}")
    x = x_init
    for k in range(N):
        t = schedule.timestep_batch(k, B, x.device)
        live = mask[:, k].to(x.device)  # (B,) True where step k carries gradient
        if not bool(live.any()):
            with torch.no_grad():
                eps = eps_fn(x, t, cond)
        else:
            if checkpoint:
                eps = torch.utils.checkpoint.checkpoint(eps_fn, x, t, cond, use_reentrant=False)
            else:
                eps = eps_fn(x, t, cond)
            if not bool(live.all()):
                m = live.reshape(B, *([1] * (eps.ndim - 1)))
                eps = torch.where(m, eps, eps.detach())
        if step_hook is not None:
            step_hook(k, x, t, eps, live)
        x, _, _ = schedule.step(x, eps, k, noises[:, k])
    return x


def draw_noise(agent, n: int) -> tuple[Tensor, Tensor, Any]:
    """Initial noise (n, *shape), step noises (n, N, *shape) and conditions from the agent's generator."""
    shape = tuple(agent.reference.latent_shape)
    param = next(agent.reference.parameters())
    g = agent.generator
    cond = agent.task.sample_conditions(n, g) if agent.task.sample_conditions else None
    x0 = agent.reference.initial_noise(n, g, agent.schedule)
    noises = torch.randn((n, agent.schedule.num_steps, *shape), generator=g, dtype=param.dtype).to(param.device)
    return x0, noises, cond

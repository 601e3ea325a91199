"""Trajectory replay buffer for SQDF (the SQDF paper's replay buffer).

Each entry is one trajectory: the N states z_0..z_{N-1} (the state *before* each step; the final z_N
is not stored), its condition (any picklable object, or None), a scalar reward (the optimistic proxy
at insertion time, never refreshed) and an integer insertion ``tag`` (the agent passes its global
optimizer step). Capacity is a ring: slot = insertion count mod capacity, oldest overwritten.

``sample(n, method, generator)`` returns (slots (n,), steps (n,), probs (n,) or None) for n training
pairs (trajectory j, step k):

- ``random``: n distinct trajectories uniformly, k ~ U{0..N-1}.
- ``on-policy``: the n most recent trajectories (largest tag; ties broken by insertion order, newest
  first), k uniform. (The official BBO tag is ``global_step mod 20``; we store the full step so that
  "most recent" stays true after 20 steps. Documented deviation.)
- ``reward``: the top-n by stored reward, k uniform.
- ``on-policy+random``: every trajectory of the newest tag (a random n of them if more), topped up with
  distinct uniformly drawn others, k uniform.
- ``reward+gamma_PER``: n joint draws of (j, k) *with replacement*, P(j, k) ∝ w_j · γ^{N-1-k};
  ``probs`` are those probabilities (for optional importance weights). The reward factor w_j is set by
  ``per_priority``: ``"clamp"`` (default here; the official rule) w_j = max(r_j, 0), which on the official
  all-positive aesthetic rewards is close to uniform over trajectories but on standardised rewards drops
  every below-average trajectory; ``"shift_min"`` w_j = r_j - min_i r_i, the same rule with the reward's
  zero moved to the buffer's minimum, so it means the same thing on any reward scale or sign (all
  rewards equal: w_j = 1). If every w_j is 0 (clamp with all rewards <= 0): ``per_fallback="error"``
  (default) raises a ValueError saying so; ``per_fallback="uniform"`` drops the reward factor
  (P(j, k) ∝ γ^{N-1-k}) and counts the event in ``per_fallbacks``. There is never a division by zero.

Every method except PER needs at least n stored trajectories (as the official code) and raises otherwise.
Storage ``memory`` (default) keeps the states in one tensor (capacity, N, *latent_shape);
``disk`` writes one ``torch.save`` file per trajectory into ``directory`` (SD scale: ≈3.3 MB each)
and keeps only rewards/tags in memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from sqdf_bbo.checkpoint import checkpointable

Tensor = torch.Tensor

SAMPLING_METHODS = ("random", "on-policy", "reward", "on-policy+random", "reward+gamma_PER")
PER_PRIORITIES = ("clamp", "shift_min")


@checkpointable
class TrajectoryBuffer:
    """Ring buffer of trajectories; see the module docstring. latent_shape excludes batch and step dims."""

    def __init__(self, capacity: int, num_steps: int, latent_shape: Sequence[int], storage: str = "memory",
                 directory: Optional[str | os.PathLike] = None, dtype: torch.dtype = torch.float32,
                 per_fallback: str = "error", per_priority: str = "clamp"):
        if int(capacity) < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if storage not in ("memory", "disk"):
            raise ValueError(f"buffer storage must be 'memory' or 'disk', got {storage!r}")
        if storage == "disk" and directory is None:
            raise ValueError("buffer storage 'disk' needs a directory")
        if per_fallback not in ("error", "uniform"):
            raise ValueError(f"per_fallback must be 'error' or 'uniform', got {per_fallback!r}")
        if per_priority not in PER_PRIORITIES:
            raise ValueError(f"per_priority must be one of {', '.join(PER_PRIORITIES)}, got {per_priority!r}")
        self.per_priority = per_priority
        self.capacity, self.num_steps = int(capacity), int(num_steps)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.storage, self.dtype, self.per_fallback = storage, dtype, per_fallback
        self.directory = Path(directory) if directory is not None else None
        self.per_fallbacks = 0
        self.reset()

    # ---- bookkeeping ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every stored trajectory (the per-round reset of the official BBO run)."""
        self.count = 0  # insertions ever (since the last reset)
        self.rewards = torch.zeros(self.capacity, dtype=torch.float64)
        self.tags = torch.zeros(self.capacity, dtype=torch.long)
        self.order = torch.zeros(self.capacity, dtype=torch.long)  # insertion number of each slot
        self.conds: list[Any] = [None] * self.capacity
        if self.storage == "memory":
            self.states = torch.zeros((self.capacity, self.num_steps, *self.latent_shape), dtype=self.dtype)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            for f in self.directory.glob("traj_*.pt"):
                f.unlink()

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def _path(self, slot: int) -> Path:
        return self.directory / f"traj_{slot:06d}.pt"

    def add(self, states: Tensor, rewards: Tensor, tag: int, conds: Optional[Sequence[Any]] = None) -> Tensor:
        """Append B trajectories. states: (B, N, *latent_shape) = z_0..z_{N-1}; rewards: (B,). Returns slots."""
        states = torch.as_tensor(states).detach()
        B = states.shape[0]
        if tuple(states.shape[1:]) != (self.num_steps, *self.latent_shape):
            raise ValueError(f"states must have shape (B, {self.num_steps}, {', '.join(map(str, self.latent_shape))}),"
                             f" got {tuple(states.shape)}")
        rewards = torch.as_tensor(rewards, dtype=torch.float64).detach().reshape(-1).cpu()
        if rewards.shape[0] != B:
            raise ValueError(f"got {B} trajectories but {rewards.shape[0]} rewards")
        if not torch.isfinite(rewards).all():
            raise ValueError("buffer rewards must be finite")
        if conds is not None and len(conds) != B:
            raise ValueError(f"got {B} trajectories but {len(conds)} conditions")
        slots = []
        for i in range(B):
            slot = self.count % self.capacity
            self.rewards[slot] = rewards[i]
            self.tags[slot] = int(tag)
            self.order[slot] = self.count
            self.conds[slot] = None if conds is None else conds[i]
            if self.storage == "memory":
                self.states[slot] = states[i].to(self.dtype).cpu()
            else:
                tmp = self._path(slot).with_suffix(".tmp")
                torch.save({"states": states[i].to(self.dtype).cpu().clone(), "cond": self.conds[slot]}, tmp)
                os.replace(tmp, self._path(slot))
            slots.append(slot)
            self.count += 1
        return torch.tensor(slots, dtype=torch.long)

    def get(self, slots: Tensor, steps: Tensor) -> tuple[Tensor, list[Any]]:
        """States z_k of trajectory ``slots[i]`` at step ``steps[i]``: (n, *latent_shape), and conditions."""
        slots, steps = torch.as_tensor(slots).long(), torch.as_tensor(steps).long()
        if self.storage == "memory":
            z = self.states[slots, steps]
        else:
            z = torch.stack([torch.load(self._path(int(s)), weights_only=True)["states"][int(k)]
                             for s, k in zip(slots, steps)])
        return z, [self.conds[int(s)] for s in slots]

    # ---- sampling ------------------------------------------------------------------------------
    def per_probabilities(self, gamma: float) -> Tensor:
        """(len, N) joint probabilities P(j, k) ∝ w_j γ^{N-1-k} over the filled slots (w_j: ``per_priority``)."""
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] for reward+gamma_PER, got {gamma}")
        m = len(self)
        k = torch.arange(self.num_steps, dtype=torch.float64)
        wk = gamma ** (self.num_steps - 1 - k)
        r = self.rewards[:m]
        if self.per_priority == "clamp":
            wr = r.clamp(min=0)
        else:
            wr = r - r.min() if bool(r.max() > r.min()) else torch.ones_like(r)
        if not bool((wr > 0).any()):
            if self.per_fallback == "error":
                raise ValueError(
                    f"reward+gamma_PER needs at least one stored trajectory with reward > 0, but all {m} "
                    f"rewards are <= 0 (max {float(self.rewards[:m].max()):.4g}); use per_fallback='uniform' "
                    "or another sampling method")
            self.per_fallbacks += 1
            wr = torch.ones(m, dtype=torch.float64)
        w = wr[:, None] * wk[None, :]
        return w / w.sum()

    def sample(self, n: int, method: str, generator: Optional[torch.Generator] = None,
               gamma: float = 0.9) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """n training pairs: (slots (n,) long, steps (n,) long, probs (n,) float64 or None)."""
        if method not in SAMPLING_METHODS:
            raise ValueError(f"unknown buffer sampling method {method!r}; allowed: {', '.join(SAMPLING_METHODS)}")
        m = len(self)
        n = int(n)
        if n < 1:
            raise ValueError(f"number of pairs to sample must be >= 1, got {n}")
        if m == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        N = self.num_steps
        if method == "reward+gamma_PER":
            P = self.per_probabilities(gamma)
            flat = torch.multinomial(P.reshape(-1), n, replacement=True, generator=generator)
            return flat // N, flat % N, P.reshape(-1)[flat]
        if m < n:
            raise ValueError(f"buffer holds {m} trajectories, fewer than the {n} requested by {method!r}")
        if method == "random":
            slots = torch.randperm(m, generator=generator)[:n]
        elif method == "on-policy":
            key = self.tags[:m] * (self.count + 1) + self.order[:m]  # tag first, then insertion order
            slots = torch.argsort(key, descending=True, stable=True)[:n]
        elif method == "reward":
            slots = torch.argsort(self.rewards[:m], descending=True, stable=True)[:n]
        else:  # on-policy+random
            newest = torch.nonzero(self.tags[:m] == self.tags[:m].max()).reshape(-1)
            newest = newest[torch.randperm(len(newest), generator=generator)][:n]
            rest_mask = torch.ones(m, dtype=torch.bool)
            rest_mask[newest] = False
            rest = torch.nonzero(rest_mask).reshape(-1)
            extra = rest[torch.randperm(len(rest), generator=generator)][: n - len(newest)]
            slots = torch.cat([newest, extra])
        steps = torch.randint(0, N, (n,), generator=generator)
        return slots, steps, None

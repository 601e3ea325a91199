"""What the Bayesian-optimisation peers (TuRBO-1, qLogNEI) share: the task's box, observations in the unit
cube u = (x - lo) / (hi - lo), scrambled Sobol designs."""
from __future__ import annotations

from typing import Optional

import torch

from sqdf_bbo.agents.base import Agent
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor


def sobol(n: int, dim: int, seed: int) -> Tensor:
    """n scrambled Sobol points in [0, 1]^d, float64, reproducible in ``seed``."""
    from torch.quasirandom import SobolEngine

    return SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)


def box_of(task: TaskInfo, method: str) -> tuple[Tensor, Tensor]:
    """(lo, hi) float64 (d,) of a vector task's box; one clear error for other tasks."""
    if task.bounds is None or len(task.design_shape) != 1:
        raise ValueError(f"method {method!r} needs a vector task with box bounds (design_shape (d,)), but task "
                         f"{task.name!r} has design_shape {tuple(task.design_shape)} and bounds "
                         f"{'None' if task.bounds is None else 'set'}")
    lo, hi = (torch.as_tensor(b, dtype=torch.float64).reshape(-1) for b in task.bounds)
    return lo, hi


class UnitCubeAgent(Agent):
    """Base of the BO agents: ``X`` (n, d) every finite observation in the unit cube, ``Y`` (n,) its value
    (float64); the box itself is rebuilt from the task, never checkpointed; a refit model neither."""

    METHOD = ""  # the CLI name, for error messages
    CHECKPOINT_SKIP = ("model", "lo", "hi", "dim")

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        box_of(task, cls.METHOD)
        return super().resolve_config(task, overrides)

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        self.lo, self.hi = box_of(task, self.METHOD)
        self.dim = len(self.lo)
        self.X = torch.empty(0, self.dim, dtype=torch.float64)
        self.Y = torch.empty(0, dtype=torch.float64)
        self.model = None

    def observe(self, designs: Tensor, values: Tensor) -> None:
        u = ((torch.as_tensor(designs, dtype=torch.float64) - self.lo) / (self.hi - self.lo)).clamp(0, 1)
        v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        ok = torch.isfinite(v)  # an unscored design carries no signal
        self.X, self.Y = torch.cat([self.X, u[ok]]), torch.cat([self.Y, v[ok]])

    def to_box(self, u: Tensor) -> Tensor:
        """Unit-cube points (n, d) -> designs in the task's box, float32."""
        return (self.lo + (self.hi - self.lo) * u).float()

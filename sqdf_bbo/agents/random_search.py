"""Random search: every proposal is uniform in the task's box bounds; learns nothing (the floor for BO
and for tasks with no pretrained backbone)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sqdf_bbo.agents.base import Agent
from sqdf_bbo.tasks.base import TaskInfo


class RandomSearchAgent(Agent):
    """propose(n) = n independent uniform draws in [lo, hi] (TaskInfo.bounds); observe/improve do nothing."""

    @dataclass
    class Settings:
        pass

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        if task.bounds is None:
            raise ValueError(f"method 'random' needs box bounds, but task {task.name!r} has TaskInfo.bounds = None")
        return super().resolve_config(task, overrides)

    def propose(self, n: int, generator: torch.Generator) -> torch.Tensor:
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.task.bounds)
        u = torch.rand((n, *self.task.design_shape), generator=generator)
        return lo + (hi - lo) * u

"""The agent interface every method implements, and the shared diffusion-agent plumbing.

The harness drives an agent with three calls per round:

    designs = agent.propose(n, generator)   # (n, *design_shape) tensor; the harness queries the oracle
    agent.observe(designs, values)          # values: (n,) float64 observed (noisy) oracle values
    stats = agent.improve()                 # refit proxy + fine-tune; returns a dict of floats to log

Agents never see the oracle, the environment or noise-free values. ``default_config`` lists every
hyperparameter an agent accepts; unknown keys are rejected with the allowed list.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar, Optional

import torch

from sqdf_bbo.diffusion import DDIMSchedule, Trajectory, sample_trajectory
from sqdf_bbo.tasks.base import TaskInfo

Tensor = torch.Tensor


class Agent:
    """Base class. Subclasses set ``default_config`` and override propose/observe/improve."""

    default_config: ClassVar[dict] = {}

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        self.task = task
        self.seed = int(seed)
        self.config = self.resolve_config(task, config or {})

    @classmethod
    def resolve_config(cls, task: TaskInfo, overrides: dict) -> dict:
        """Defaults <- task defaults for known keys <- user overrides (unknown keys raise)."""
        defaults = dict(cls.default_config)
        bad = sorted(set(overrides) - set(defaults))
        if bad:
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, bad))} for method {cls.__name__}; "
                f"allowed: {', '.join(sorted(defaults)) or '(none)'}"
            )
        for k, v in task.defaults.get("agent", {}).items():
            if k in defaults:
                defaults[k] = v
        defaults.update(overrides)
        return defaults

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def observe(self, designs: Tensor, values: Tensor) -> None:
        pass

    def improve(self) -> dict[str, float]:
        return {}


class DiffusionAgent(Agent):
    """An agent whose policy is a copy of the task's pretrained backbone.

    Holds ``reference`` (frozen pretrained backbone), ``policy`` (trainable copy), ``schedule``
    (DDIM with the task's number of steps and eta), and the dataset of every observation so far
    (``designs``, ``values``). Subclasses implement :meth:`improve`.
    """

    default_config: ClassVar[dict] = {"num_steps": 50, "eta": 1.0, "sample_batch": 256}

    def __init__(self, task: TaskInfo, config: Optional[dict] = None, seed: int = 0):
        super().__init__(task, config, seed)
        backbone = task.make_backbone()
        split = getattr(backbone, "make_policy_and_reference", None)
        if split is not None:  # e.g. Stable Diffusion: one shared UNet, the reference runs with adapters off
            self.policy, self.reference = split()
        else:
            self.reference = backbone
            self.reference.requires_grad_(False).eval()
            self.policy = copy.deepcopy(self.reference)
        self.schedule = DDIMSchedule.from_scheduler(
            self.reference.scheduler, int(self.config["num_steps"]), float(self.config["eta"])
        )
        self.generator = torch.Generator().manual_seed(self.seed)  # the agent's own randomness
        self.designs: list[Tensor] = []
        self.values: list[Tensor] = []

    # ---- sampling --------------------------------------------------------------------------------
    def policy_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.policy(x, t, cond)

    def reference_eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.reference(x, t, cond)

    def sample(self, n: int, generator: torch.Generator, cond: Any = None, eps_fn=None, **kw) -> Trajectory:
        """n trajectories from the current policy (no grad unless ``grad=True`` is passed); ``cond``
        overrides the training conditions (the harness passes held-out evaluation prompts); ``eps_fn``
        replaces :meth:`policy_eps` (e.g. an equivalent merged-LoRA copy of the policy)."""
        if cond is None and self.task.sample_conditions:
            cond = self.task.sample_conditions(n, generator)
        shape = tuple(self.reference.latent_shape)
        param = next(self.reference.parameters())
        x0 = torch.randn((n, *shape), generator=generator, dtype=param.dtype).to(param.device)
        return sample_trajectory(eps_fn or self.policy_eps, self.schedule, x0, cond=cond, generator=generator, **kw)

    def sample_batched(self, n: int, generator: torch.Generator, **kw) -> list[Trajectory]:
        """n trajectories in chunks of ``sample_batch`` (keyword arguments go to :meth:`sample`)."""
        bs = int(self.config["sample_batch"])
        return [self.sample(min(bs, n - i), generator, **kw) for i in range(0, n, bs)]

    def propose(self, n: int, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            return torch.cat([self.policy.decode(tr.final) for tr in self.sample_batched(n, generator)])

    def observe(self, designs: Tensor, values: Tensor) -> None:
        self.designs.append(designs.detach().cpu())
        self.values.append(torch.as_tensor(values, dtype=torch.float64).cpu())

    @property
    def dataset(self) -> tuple[Tensor, Tensor]:
        """All observations so far: designs (n, *design_shape), values (n,)."""
        if not self.designs:
            return torch.empty(0, *self.task.design_shape), torch.empty(0, dtype=torch.float64)
        return torch.cat(self.designs), torch.cat(self.values)

"""Tiny float64 backbones and a fake task for the baseline tests (test doubles: tests import them as `fake_agents`)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from sqdf_bbo.backbones.base import Backbone, default_scheduler
from sqdf_bbo.tasks.base import TaskInfo
from benchmarks.common.steps import one_more_step

Tensor = torch.Tensor


class TinyEps(Backbone):
    """eps(x, t) = W2 tanh(W1 x + b1 + w_t·t/1000); a handful of float64 parameters. x: (B, d)."""

    def __init__(self, dim: int = 2, hidden: int = 3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_shape = (dim,)
        self.scheduler = default_scheduler()
        r = lambda *s: nn.Parameter(0.6 * torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
        self.W1, self.b1, self.wt, self.W2 = r(hidden, dim), r(hidden), r(hidden), r(dim, hidden)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1) / 1000.0
        return torch.tanh(x @ self.W1.T + self.b1 + tt * self.wt) @ self.W2.T


class PerStepEps(Backbone):
    """eps(x, τ_k) = scale_k·tanh(x) + bias_k: parameters of step k act only at step k. timesteps: (N,)."""

    def __init__(self, timesteps: Tensor, dim: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_shape = (dim,)
        self.scheduler = default_scheduler()
        self.register_buffer("timesteps", timesteps.clone().long())
        N = len(timesteps)
        self.scale = nn.Parameter(0.5 * torch.randn(N, dim, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(0.5 * torch.randn(N, dim, generator=g, dtype=torch.float64))

    def step_index(self, t: Tensor) -> Tensor:
        idx = (t.reshape(-1, 1).to(self.timesteps.device) == self.timesteps[None]).long().argmax(dim=1)
        return idx

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        k = self.step_index(torch.as_tensor(t))
        return self.scale[k] * torch.tanh(x) + self.bias[k]


class GaussianExactEps(Backbone):
    """Exact ε* for data N(m, v I) plus a trainable per-step bias (zero at init).

    ε*(x, t) = √(1-a_t)(x - √a_t m)/(a_t v + 1 - a_t), a_t = alphabar[t]; eps = ε* + bias[k(t)].
    """

    def __init__(self, m: Tensor, v: float, timesteps: Tensor):
        super().__init__()
        self.latent_shape = (m.shape[0],)
        self.scheduler = default_scheduler()
        self.register_buffer("m", m.double().clone())
        self.v = float(v)
        self.register_buffer("acp", self.scheduler.alphas_cumprod.double().clone())
        self.register_buffer("timesteps", timesteps.clone().long())
        self.bias = nn.Parameter(torch.zeros(len(timesteps), m.shape[0], dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        a = self.acp[t].reshape(-1, 1)
        eps = torch.sqrt(1 - a) * (x - torch.sqrt(a) * self.m) / (a * self.v + 1 - a)
        k = (t.reshape(-1, 1) == self.timesteps[None]).long().argmax(dim=1)
        return eps + self.bias[k]


def tiny_task(make_backbone: Callable[[], Backbone], dim: int = 2, num_steps: int = 5) -> TaskInfo:
    """A TaskInfo around a test backbone; features = identity."""
    return TaskInfo(name="tiny", tier="test", design_shape=(dim,), make_backbone=make_backbone,
                    features=lambda x: x, feature_dim=dim, agent_defaults={"num_steps": num_steps})


def ready_agent(cls, backbone_factory: Callable[[], Backbone], reward: Callable[[Tensor], Tensor],
                config: Optional[dict] = None, seed: int = 0, dim: int = 2, num_steps: int = 5):
    """An agent whose proxy is ``reward`` (features -> (B,)) in raw units, with its optimizer made, so that
    :func:`one_update` runs single optimizer steps of its ``improve()`` (no dataset, no fit_proxy)."""
    cfg = {"num_steps": num_steps, "lora_rank": 0, "train_batch": 4, "updates_per_round": 1}
    cfg.update(config or {})
    agent = cls(tiny_task(backbone_factory, dim, num_steps), cfg, seed)
    agent.optimistic.model = reward
    agent.optimistic.offset, agent.optimistic.scale = 0.0, 1.0
    agent.optimizer = agent.make_optimizer()
    return agent


def one_update(agent) -> dict[str, float]:
    """Exactly one optimizer step of ``agent.improve()`` at the agent's current state
    (``benchmarks.common.steps.one_more_step``); returns that step's statistics."""
    assert agent.cfg.updates_per_round == 1, "one_update needs updates_per_round=1"
    return one_more_step(agent)


def hand_ddim_mean(scheduler, num_steps: int, k: int, x: Tensor, eps: Tensor, eta: float = 1.0):
    """Independent DDIM η-step from the x̂ form (the shared index convention): returns (μ_k, s_k) from raw alphas_cumprod."""
    T = scheduler.config.num_train_timesteps
    step = T // num_steps
    tau = (num_steps - 1 - k) * step + scheduler.config.steps_offset
    acp = scheduler.alphas_cumprod.double()
    a = acp[tau]
    a_prev = acp[tau - step] if tau - step >= 0 else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    s = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
    x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    mu = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - s**2) * eps
    return mu, s, tau


def improve_cut_and_resumed(fresh: Callable[[], Any], build: Callable[[], Any], cut_at: int, folder) -> tuple:
    """Run one ``improve()`` whole, and once cut by a checkpoint after step ``cut_at`` and resumed.

    ``fresh()`` builds an agent whose round is open (same state every call); ``build()`` builds the agent the
    checkpoint is loaded into (as a resumed run does). The cut run saves ``state_tree()`` to ``folder`` from the
    step callback after step ``cut_at`` and stops there. Returns (whole agent, its stats, resumed agent, its
    stats), for the caller to compare."""
    import pytest

    from sqdf_bbo import checkpoint
    from sqdf_bbo.harness.callbacks import StepCallback

    whole = fresh()
    stats_whole = whole.improve()

    class Stop(Exception):
        pass

    cut = fresh()

    def hook(done):
        if done == cut_at:
            checkpoint.save(folder, "agent", cut.state_tree())
            raise Stop

    cut.step_callback = StepCallback(hook)
    with pytest.raises(Stop):
        cut.improve()
    desc, tensors = checkpoint.load(folder, "agent")
    resumed = build()
    resumed.load_state_tree(desc, tensors)
    return whole, stats_whole, resumed, resumed.improve()

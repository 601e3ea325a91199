"""SVDD (baselines/svdd.py): the resampling step against closed forms, the analytic KL, the agent."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.best_of_n import best_of_n_kl
from baselines.svdd import SVDDAgent, svdd_select
from sqdf_bbo.tasks import make_task


def one_step(M: int, rows: int, alpha: float, g: float = 1.0, seed: int = 0) -> torch.Tensor:
    """p_ref = N(0, 1) one step, value v(z') = g z': the chosen candidate of each row."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, M, generator=gen, dtype=torch.float64)
    pick = svdd_select(g * z, alpha, gen)
    return z[torch.arange(rows), pick]


def test_argmax_step_is_best_of_m():
    """α = 0: the chosen z' is the max of M standard normals, mean 1.8675 for M = 20 (the expected maximum of M standard normals)."""
    x = one_step(20, 40_000, 0.0)
    assert abs(float(x.mean()) - 1.8675) < 4 * float(x.std()) / math.sqrt(len(x))


def test_soft_step_tilts_the_gaussian():
    """α > 0, M → ∞: the choice ~ p_ref(z')·exp(g z'/α) = N(g/α, 1) (here α = 2: mean 0.5, variance 1)."""
    x = one_step(2000, 4000, 2.0)
    assert abs(float(x.mean()) - 0.5) < 0.06 and abs(float(x.var()) - 1.0) < 0.1


def test_agent_kl_eta_and_proposals():
    info = make_task("levy").info
    with pytest.raises(ValueError, match="eta > 0"):
        SVDDAgent.resolve_config(info, {"eta": 0.0})
    agent = SVDDAgent(info, {"num_steps": 5, "candidates": 8, "proxy_epochs": 5}, seed=0)
    x = agent.propose(32, torch.Generator().manual_seed(1))  # no proxy yet: plain pretrained samples
    agent.observe(x, -(x.double() ** 2).sum(1))
    agent.improve()
    assert agent.analytic_path_kl() == pytest.approx(5 * best_of_n_kl(8))
    y = agent.propose(6, torch.Generator().manual_seed(2))
    assert y.shape == (6, 8) and torch.isfinite(y).all()
    # with select_last the final design is the proxy's best of the M last candidates: its reward is at
    # least that of a plain pretrained sample on average
    with torch.no_grad():
        r_svdd = agent.reward_of_designs(agent.propose(64, torch.Generator().manual_seed(3))).mean()
        r_pre = agent.reward_of_designs(agent.policy.decode(agent.sample(64, torch.Generator().manual_seed(3)).final)).mean()
    assert r_svdd > r_pre
    agent.cfg.temperature = 0.5
    assert math.isnan(agent.analytic_path_kl())

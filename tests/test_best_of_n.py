"""Best-of-N (baselines/best_of_n.py): selection vs brute force, the KL formula vs Monte Carlo and
quadrature, and the agent's proposals vs a hand-made best-of-N with the same draws."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from baselines.best_of_n import BestOfNAgent, best_of_n_kl, select_best
from sqdf_bbo.tasks import make_task


def test_selection_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5 * 7, generator=g)
    idx = select_best(s, 5, "group")
    for j in range(5):  # brute force: the best of each block of 7
        block = s[j * 7:(j + 1) * 7].tolist()
        assert int(idx[j]) == j * 7 + block.index(max(block))
    assert sorted(select_best(s, 5, "pool").tolist()) == sorted(np.argsort(-s.numpy())[:5].tolist())
    with pytest.raises(ValueError, match="groups"):
        select_best(s, 4, "group")


@pytest.mark.parametrize("N", [2, 8])
def test_kl_formula_against_monte_carlo_and_quadrature(N):
    """Score s ~ N(0, 1): the best of N has density N Φ(s)^{N-1} φ(s); KL = E[log N + (N-1) log Φ(s_max)]."""
    rng = np.random.default_rng(0)
    s_max = rng.standard_normal((200_000, N)).max(axis=1)
    mc = np.mean(math.log(N) + (N - 1) * stats.norm.logcdf(s_max))
    quad = integrate.quad(lambda x: N * stats.norm.cdf(x) ** (N - 1) * stats.norm.pdf(x)
                          * (math.log(N) + (N - 1) * stats.norm.logcdf(x)), -12, 12)[0]
    assert abs(quad - best_of_n_kl(N)) < 1e-7
    assert abs(mc - best_of_n_kl(N)) < 4 * np.std(math.log(N) + (N - 1) * stats.norm.logcdf(s_max)) / math.sqrt(len(s_max))
    if N == 8:
        assert best_of_n_kl(8) == pytest.approx(1.2044, abs=1e-4)  # log N - (N-1)/N at N = 8 (docs/methods/best-of-n.md)


def test_agent_proposes_the_proxy_best_of_its_own_draws():
    info = make_task("levy").info
    agent = BestOfNAgent(info, {"num_steps": 5, "oversample": 6, "proxy_epochs": 5}, seed=0)
    g0 = torch.Generator().manual_seed(1)
    assert agent.analytic_path_kl() == 0.0
    x = agent.propose(40, g0)  # no proxy yet: plain pretrained samples
    agent.observe(x, -(x.double() ** 2).sum(1))
    agent.improve()
    assert agent.analytic_path_kl() == pytest.approx(math.log(6) - 5 / 6)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    picked = agent.propose(4, g1)
    cands = agent._propose_local(24, g2)  # the same 24 draws, then the argmax by hand
    with torch.no_grad():
        scores = agent.reward_of_designs(cands)
    expect = torch.stack([cands[j * 6 + int(scores[j * 6:(j + 1) * 6].argmax())] for j in range(4)])
    torch.testing.assert_close(picked, expect)
    # the policy is the frozen pretrained model
    assert agent.policy is agent.reference

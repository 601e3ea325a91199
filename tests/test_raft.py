"""RAFT (baselines/raft.py): selection vs brute force and the truncated-normal mean, the loss by hand,
the agent moves its samples towards the proxy's best."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from baselines.raft import RAFTAgent, denoising_loss, raft_select
from sqdf_bbo.agents.base import DiffusionAgent
from sqdf_bbo.tasks import make_task


def test_selection_matches_brute_force():
    s = torch.randn(30, generator=torch.Generator().manual_seed(0))
    assert sorted(raft_select(s, 0.2, "global").tolist()) == sorted(np.argsort(-s.numpy())[:6].tolist())
    local = raft_select(s, 0.2, "local")  # K = 5: argmax of each block of 5
    assert local.tolist() == [j * 5 + int(np.argmax(s[j * 5:(j + 1) * 5].numpy())) for j in range(6)]
    with pytest.raises(ValueError, match="mode"):
        raft_select(s, 0.2, "pool")


def test_global_selection_mean_is_the_truncated_normal_mean():
    """Kept samples of N(m, σ²) at fraction ρ have mean m + σ φ(z)/ρ, z = Φ⁻¹(1 - ρ)."""
    m, sd, rho = 1.5, 2.0, 0.1
    x = m + sd * torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept = x[raft_select(x, rho)]
    z = stats.norm.ppf(1 - rho)
    expect = m + sd * stats.norm.pdf(z) / rho
    assert abs(float(kept.mean()) - expect) < 4 * float(kept.std()) / math.sqrt(len(kept))


def test_denoising_loss_by_hand():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    noise = torch.tensor([[0.3, 0.1], [-1.0, 2.0]])
    t = torch.tensor([0, 2])
    acp = torch.tensor([0.64, 0.5, 0.36])
    eps_fn = lambda x, tt, c: 0.5 * x  # noqa: E731
    xt = torch.stack([0.8 * x0[0] + 0.6 * noise[0], 0.6 * x0[1] + 0.8 * noise[1]])
    expect = ((0.5 * xt - noise) ** 2).mean()
    torch.testing.assert_close(denoising_loss(eps_fn, x0, t, noise, acp), expect)


def test_agent_fine_tunes_towards_the_proxy_best():
    info = make_task("levy").info
    with pytest.raises(ValueError, match="keep_fraction"):
        RAFTAgent.resolve_config(info, {"keep_fraction": 0.0})
    agent = RAFTAgent(info, {"num_steps": 6, "proxy_epochs": 50, "samples_per_iteration": 200,
                             "keep_fraction": 0.2, "updates_per_round": 60, "iterations": 2, "lr": 3e-3}, seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))
    agent.observe(x, -(x.double() ** 2).sum(1))
    agent.improve()
    stats_ = agent.improve()
    assert stats_["kept_proxy_reward"] > stats_["sampled_proxy_reward"]
    assert math.isfinite(stats_["denoise_loss"]) and stats_["grad_norm"] > 0
    with torch.no_grad():
        r_raft = agent.reward_of_designs(agent.propose(256, torch.Generator().manual_seed(3))).mean()
        ref = agent.reference
        traj = DiffusionAgent.sample(agent, 256, torch.Generator().manual_seed(3), eps_fn=agent.reference_eps)
        r_pre = agent.reward_of_designs(ref.decode(traj.final)).mean()
    assert r_raft > r_pre


def test_frontier_sweeps_the_kept_fraction():
    """The grid rule sweeps the declared ρ (not lr); at the default 160 samples per iteration every grid value
    keeps ⌊160 ρ⌋ = 4, 16, 40, 80 samples (global ranking), i.e. 3.5 to 0.69 nats per exact iteration."""
    from benchmarks.run import frontier as fr

    info = make_task("levy").info
    plan = fr.plan_grid(["raft"])["raft"]
    assert (plan.knob, plan.values, plan.source) == ("keep_fraction", [0.03, 0.1, 0.25, 0.5], "rule")
    assert plan.folder(0.03) == "raft__keep_fraction=0.03"
    scores = torch.randn(160, generator=torch.Generator().manual_seed(2))
    kept = []
    for rho in plan.values:
        cfg = RAFTAgent.resolve_config(info, {"keep_fraction": rho})
        assert cfg["keep_fraction"] == rho and cfg["lr"] == 1e-3 and cfg["samples_per_iteration"] == 160
        kept.append(len(raft_select(scores, rho)))
    assert kept == [4, 16, 40, 80]
    assert [round(math.log(1 / rho), 2) for rho in plan.values] == [3.51, 2.3, 1.39, 0.69]

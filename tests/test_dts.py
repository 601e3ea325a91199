"""DTS / DTS* (baselines/dts.py): the tree's backups and shape by brute force, the descent's leaf law and
its KL against exact enumeration, the samples' moments against the exact tilted Gaussian of a linear-Gaussian
chain, DTS* against the best leaf, the agent, and tiny CLI runs on the vector and image tiers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fake_agents import GaussianExactEps, tiny_task
from baselines.dts import DTSAgent, DTSStarAgent, Forest, soft_mean
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.tasks import make_task

M0, V0 = 0.3, 0.5  # data N(M0, V0) of the exact-ε backbone


class LinearProxy(torch.nn.Module):
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, 0]


def _agent(cls, N: int, config: dict, seed: int = 0):
    sched0 = DDIMSchedule.from_scheduler(GaussianExactEps(torch.zeros(1), 1.0, torch.zeros(N)).scheduler, N, 1.0)
    m = torch.tensor([M0], dtype=torch.float64)
    agent = cls(tiny_task(lambda: GaussianExactEps(m, V0, sched0.timesteps), 1, N), {"num_steps": N, **config}, seed)
    agent.optimistic.model = LinearProxy()  # r = x_N in standardised units
    agent.optimistic.offset, agent.optimistic.scale = 0.0, 1.0
    return agent


def _final_moments(agent) -> tuple[float, float]:
    """Exact mean and variance of x_N of the pretrained chain: x_0 ~ N(0, 1), each step affine with slope
    A_k + C_k √(1 − a_k)/(a_k V0 + 1 − a_k) plus N(0, s_k²) noise."""
    s = agent.schedule
    mean, var = torch.zeros(1, dtype=torch.float64), 1.0
    for k in range(s.num_steps):
        a = float(s.alpha[k])
        slope = float(s.coef_x[k]) + float(s.coef_eps[k]) * math.sqrt(1 - a) / (a * V0 + 1 - a)
        with torch.no_grad():
            mean = s.mean(mean[None], agent.reference(mean[None], s.timestep_batch(k, 1)), k)[0]
        var = slope ** 2 * var + float(s.std[k]) ** 2
    return float(mean), var


def test_soft_mean_by_hand():
    v = torch.tensor([[0.0, 1.0, 5.0], [2.0, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    lam = 2.0
    expect = [math.log((1 + math.exp(2)) / 2) / 2, math.log((math.exp(4) + math.exp(-2) + 1) / 3) / 2]
    torch.testing.assert_close(soft_mean(v, mask, lam), torch.tensor(expect, dtype=torch.float64))


def _walk(f: Forest, t: int, node: int, lam: float):
    """Brute force over one tree: (list of (leaf, descent probability)), checking each backup on the way."""
    ch = [int(c) for c in f.children[t, node] if c >= 0]
    if not ch:
        assert int(f.level[t, node]) == f.N
        return [(node, 1.0)]
    vals = [float(f.value[t, c]) for c in ch]
    assert float(f.value[t, node]) == pytest.approx(math.log(sum(math.exp(lam * x) for x in vals) / len(ch)) / lam)
    z = sum(math.exp(lam * x) for x in vals)
    out = []
    for c, x in zip(ch, vals):
        assert int(f.parent[t, c]) == node and int(f.level[t, c]) == int(f.level[t, node]) + 1
        out += [(leaf, p * math.exp(lam * x) / z) for leaf, p in _walk(f, t, c, lam)]
    return out


def test_tree_backups_descent_law_and_kl_by_enumeration():
    """Every v̂ is the soft mean of its children's; a descent picks leaf ℓ with probability
    exp(λ (r_ℓ − v̂(root))) / Π m (m = children along the way), so E_descent[λ (r − v̂(root))] is exactly
    the KL of the descent law to the uniform descent (the pretrained law on this tree)."""
    N, R, B, lam = 3, 40, 3, 1.5
    agent = _agent(DTSAgent, N, {"beta": 1 / lam, "rollouts": R, "branching": B})
    f = agent.search(2, torch.Generator().manual_seed(0))
    t = 0
    leaves = _walk(f, t, 0, lam)
    assert len(leaves) == R  # one leaf per rollout
    assert int(f.n_child[t].max()) <= B and int(f.size[t]) <= 1 + R * (N + 1)
    probs = torch.tensor([p for _, p in leaves], dtype=torch.float64)
    assert float(probs.sum()) == pytest.approx(1.0)
    r = torch.tensor([float(f.value[t, leaf]) for leaf, _ in leaves], dtype=torch.float64)

    def uniform_prob(leaf):
        p, node = 1.0, leaf
        while node != 0:
            node = int(f.parent[t, node])
            p /= int(f.n_child[t, node])
        return p

    unif = torch.tensor([uniform_prob(leaf) for leaf, _ in leaves], dtype=torch.float64)
    torch.testing.assert_close(probs, unif * torch.exp(lam * (r - f.value[t, 0])))
    kl_exact = float((probs * (probs / unif).log()).sum())
    assert kl_exact == pytest.approx(float((probs * lam * (r - f.value[t, 0])).sum()))
    # the descent's empirical law and its mean selection KL (a per-step chain-rule sum) against enumeration
    g = torch.Generator().manual_seed(1)
    big = Forest(1, 1, B, N, (1,), torch.float64, "cpu")  # the same tree, replicated 40000 times
    T = 40_000
    for name in ("x", "level", "parent", "children", "n_child", "value", "closed"):
        setattr(big, name, getattr(f, name)[t:t + 1].expand(T, *getattr(f, name).shape[1:]).clone())
    big.T, big.rows = T, torch.arange(T)
    picked, sel_kl = big.descend(lam, g)
    index = {leaf: i for i, (leaf, _) in enumerate(leaves)}
    freq = torch.bincount(torch.tensor([index[int(x)] for x in picked]), minlength=R).double() / T
    assert torch.all((freq - probs).abs() < 5 * torch.sqrt(probs * (1 - probs) / T) + 1e-3)
    assert abs(float(sel_kl.mean()) - kl_exact) < 5 * float(sel_kl.std()) / math.sqrt(T) + 1e-9


def test_dts_samples_match_the_exact_tilted_gaussian():
    """1-D linear-Gaussian chain, r = x_N: p(x_N) = N(μ, V), the target N(μ + λV, V), log E_p e^{λr} = λμ + λ²V/2,
    KL = λ²V/2. 2000 trees, full trees (8 children per node, 512 leaves): the residual nested-resampling bias
    is ~0.005 in the mean and ~0.01 in v̂(root) (measured), against a tilt of 0.108."""
    N, lam, T = 2, 0.5, 2000
    agent = _agent(DTSAgent, N, {"beta": 1 / lam, "rollouts": 512, "branching": 8, "sample_batch": T})
    mu, V = _final_moments(agent)
    pre = agent._propose_local(50_000, torch.Generator().manual_seed(3))[:, 0].double()
    assert abs(float(pre.mean()) - mu) < 0.01 and abs(float(pre.var()) - V) < 0.01  # the moments are right
    x = agent.propose(T, torch.Generator().manual_seed(4))[:, 0].double()
    se = math.sqrt(V / T)
    assert abs(float(x.mean()) - (mu + lam * V)) < 4 * se + 0.01
    assert abs(float(x.mean()) - mu) > 0.07  # the tilt is resolved
    assert abs(float(x.var()) - V) < 0.1 * V
    assert abs(agent.last_root_value - (mu + lam * V / 2)) < 0.02
    assert abs(agent.analytic_path_kl() - lam ** 2 * V / 2) < 0.012  # 0.027 nats; per-tree sd ~0.23/√2000
    assert abs(agent.last_selection_kl - agent.analytic_path_kl()) < 0.012


def test_dts_star_returns_each_trees_best_leaf():
    agent = _agent(DTSStarAgent, 3, {"rollouts": 20, "branching": 3, "beta": 0.5})
    assert agent.config["greedy"] is True
    f = agent.search(5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x = agent.propose(5, g)
    for t in range(5):
        leaves = (f.level[t] == 3).nonzero()[:, 0]
        assert len(leaves) == 20
        assert float(f.x[t, leaves[f.value[t, leaves].argmax()], 0]) == pytest.approx(float(x[t, 0]))
    assert math.isnan(agent.analytic_path_kl())
    # greedy search concentrates on the best branch: its best leaf beats plain DTS's Boltzmann descent
    dts = _agent(DTSAgent, 3, {"rollouts": 20, "branching": 3, "beta": 0.5})
    star = agent.propose(400, torch.Generator().manual_seed(1)).mean()
    boltz = dts.propose(400, torch.Generator().manual_seed(1)).mean()
    assert star > boltz + 0.1


def test_agent_steers_levy_towards_higher_proxy_reward_and_settings():
    from benchmarks.run.frontier import plan_grid
    from sqdf_bbo.run import settings_help

    info = make_task("levy").info
    with pytest.raises(ValueError, match="eta > 0"):
        DTSAgent.resolve_config(info, {"eta": 0.0})
    with pytest.raises(ValueError, match="rollouts"):
        DTSAgent.resolve_config(info, {"rollouts": 0})
    agent = DTSAgent(info, {"num_steps": 6, "rollouts": 8, "branching": 3, "beta": 0.2, "proxy_epochs": 50}, seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))  # no proxy yet: plain pretrained samples
    assert agent.analytic_path_kl() == 0.0
    agent.observe(x, -(x.double() ** 2).sum(1))
    agent.improve()
    with torch.no_grad():
        r_dts = agent.reward_of_designs(agent.propose(64, torch.Generator().manual_seed(3)))
        r_pre = agent.reward_of_designs(agent._propose_local(64, torch.Generator().manual_seed(3)))
    assert r_dts.mean() > r_pre.mean() + 0.5 * r_pre.std()
    assert agent.analytic_path_kl() > 0 and agent.policy is agent.reference
    assert "rollouts" in settings_help("dts") and "greedy" in settings_help("dts-star")
    plans = plan_grid(["dts", "find"])
    assert plans["dts"].knob == "beta"


@pytest.mark.parametrize("task,method", [("levy", "dts"), ("aesthetic-manifold", "dts-star")])
def test_cli_runs_on_vector_and_image_tiers(tmp_path, task, method):
    from sqdf_bbo.run import main

    argv = ["--task", task, "--method", method, "--budget", "24", "--no-progress", "--out", str(tmp_path),
            "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set", "run.batch_size=12",
            "--set", "task.num_steps=3", "--set", "proxy_epochs=2", "--set", "proxy_heads=2",
            "--set", "rollouts=3", "--set", "branching=2"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 24 and math.isfinite(final["eval_reward"])
    assert math.isfinite(final["path_kl"]) == (method == "dts")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"]["rollouts"] == 3 and cfg["agent"]["greedy"] == (method == "dts-star")

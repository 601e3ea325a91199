"""FK steering (baselines/fk_steering.py): potentials by hand, ESS by brute force, the particle system on a
tiny discrete chain against exact enumeration, the target-KL estimate in closed form, the agent."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from baselines.fk_steering import (FKSteeringAgent, ParticleWeights, effective_sample_size,
                                   potential_log_weights, resampling_steps, tilted_target_kl)
from sqdf_bbo.tasks import make_task


def test_potentials_by_hand():
    r1, r2 = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.2, 0.3]])
    lam = 2.0
    # max: c1 = r1 (r_prev = -inf), c2 = max(r2, c1); final undoes the intermediate potentials
    w = ParticleWeights(1, 2, "max", lam)
    w.weigh(r1, final=False)
    torch.testing.assert_close(w.log_w, torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    w.weigh(r2, final=False)
    torch.testing.assert_close(w.log_w, torch.tensor([[1.0 + 1.0, -2.0 + 0.6]], dtype=torch.float64))
    w.weigh(torch.tensor([[1.0, 2.0]]), final=True)
    torch.testing.assert_close(w.log_w, torch.tensor([[2.0, 4.0]], dtype=torch.float64))  # λ r_final only
    # add: c accumulates; the final weight is again λ r_final in total
    w = ParticleWeights(1, 2, "add", lam)
    w.weigh(r1, final=False)
    w.weigh(r2, final=False)
    torch.testing.assert_close(w.log_w, lam * (r1 + (r1 + r2)).double())
    w.weigh(torch.tensor([[1.0, 2.0]]), final=True)
    torch.testing.assert_close(w.log_w, torch.tensor([[2.0, 4.0]], dtype=torch.float64))
    # diff telescopes
    lw, prev = potential_log_weights("diff", lam, r2.double(), r1.double(), torch.zeros(1, 2), final=False)
    torch.testing.assert_close(lw, lam * (r2 - r1).double())
    torch.testing.assert_close(prev, r2.double())
    with pytest.raises(ValueError, match="potential must be one of"):
        ParticleWeights(1, 2, "mul", 1.0)


def test_ess_and_schedule():
    lw = torch.tensor([[0.0, math.log(3.0), -math.inf], [1.0, 1.0, 1.0]], dtype=torch.float64)
    w = lw.exp()
    torch.testing.assert_close(effective_sample_size(lw), w.sum(1) ** 2 / (w ** 2).sum(1))
    assert effective_sample_size(lw)[1] == pytest.approx(3.0)
    assert resampling_steps(100, 20) == [20, 40, 60, 80, 99]  # the official SDXL schedule
    assert resampling_steps(20) == [4, 8, 12, 16, 19]
    assert resampling_steps(3) == [1, 2]


CHAIN_P1 = torch.tensor([0.7, 0.3], dtype=torch.float64)  # p(x1)
CHAIN_P2 = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)  # p(x2 | x1)
R_INT = torch.tensor([0.5, -0.3], dtype=torch.float64)  # intermediate reward of x1
R_FIN = torch.tensor([0.0, 1.0], dtype=torch.float64)  # final reward of x2


def run_chain(kind: str, lam: float, P: int, adaptive: bool, seed: int = 0) -> torch.Tensor:
    """One population of P particles through the 2-step chain with ParticleWeights; joint (x1, x2) histogram."""
    g = torch.Generator().manual_seed(seed)
    w = ParticleWeights(1, P, kind, lam)
    x1 = torch.multinomial(CHAIN_P1, P, replacement=True, generator=g)
    w.weigh(R_INT[x1][None], final=False)
    anc = w.resample(w.due("ess" if adaptive else "always"), g)[0]
    x1 = x1[anc]
    x2 = torch.multinomial(CHAIN_P2[x1], 1, generator=g)[:, 0]
    w.weigh(R_FIN[x2][None], final=True)
    anc = w.resample(w.due("always"), g)[0]
    x1, x2 = x1[anc], x2[anc]
    return torch.bincount(2 * x1 + x2, minlength=4).double() / P


@pytest.mark.parametrize("kind,adaptive", [("max", False), ("add", False), ("diff", False), ("max", True)])
def test_discrete_chain_matches_exact_tilted_target(kind, adaptive):
    """Every potential targets p(x1, x2)·exp(λ r(x2)) / Z; the intermediate rewards only shape the proposal."""
    lam = 1.5
    exact = torch.tensor([CHAIN_P1[a] * CHAIN_P2[a, b] * math.exp(lam * R_FIN[b])
                          for a, b in itertools.product((0, 1), (0, 1))], dtype=torch.float64)
    exact /= exact.sum()
    P = 100_000
    hist = run_chain(kind, lam, P, adaptive)
    se = torch.sqrt(exact * (1 - exact) / P)
    assert torch.all((hist - exact).abs() < 6 * se + 2e-3), (hist, exact)


def test_target_kl_closed_form():
    """p = N(0, 1), r = x: p* = N(λ, 1), KL = λ²/2."""
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert tilted_target_kl(x, 0.8) == pytest.approx(0.32, abs=0.01)
    assert tilted_target_kl(x, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_agent_steers_towards_higher_proxy_reward():
    info = make_task("levy").info
    with pytest.raises(ValueError, match="eta > 0"):
        FKSteeringAgent.resolve_config(info, {"eta": 0.0})
    with pytest.raises(ValueError, match="potential"):
        FKSteeringAgent.resolve_config(info, {"potential": "mul"})
    agent = FKSteeringAgent(info, {"num_steps": 6, "particles": 8, "proxy_epochs": 50, "potential_scale": 5.0,
                                   "final_resample": "always", "kl_samples": 128}, seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))  # no proxy yet: plain pretrained samples
    assert agent.analytic_path_kl() == 0.0
    agent.observe(x, -(x.double() ** 2).sum(1))
    stats = agent.improve()
    assert stats["kl_resampling_bound"] == pytest.approx(len(resampling_steps(6)) * math.log(8))
    assert 0 < stats["target_kl"] and math.isnan(agent.analytic_path_kl())
    y = agent.propose(10, torch.Generator().manual_seed(2))
    assert y.shape == (10, 8) and torch.isfinite(y).all()
    with torch.no_grad():
        r_fk = agent.reward_of_designs(agent.propose(128, torch.Generator().manual_seed(3)))
        r_pre = agent.reward_of_designs(agent._propose_local(128, torch.Generator().manual_seed(3)))
    assert r_fk.mean() > r_pre.mean() + r_pre.std()  # measured: 1.17 vs 0.42 (std 0.69)
    assert agent.policy is agent.reference and agent.duplicates > 0


@pytest.mark.parametrize("task", ["levy-manifold", "aesthetic"])
def test_cli_runs_on_vector_and_image_tiers(tmp_path, task):
    import json

    from sqdf_bbo.run import main

    argv = ["--task", task, "--method", "fk-steering", "--budget", "24", "--no-progress", "--out", str(tmp_path),
            "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set", "run.batch_size=12",
            "--set", "task.num_steps=3", "--set", "proxy_epochs=2", "--set", "proxy_heads=2",
            "--set", "particles=3", "--set", "kl_samples=8", "--set", "potential=diff"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 24 and math.isfinite(final["eval_reward"])
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"]["particles"] == 3 and cfg["agent"]["potential"] == "diff"


def test_cli_bad_setting_is_one_line_before_any_query(tmp_path, capsys):
    from sqdf_bbo.run import main

    rc = main(["--task", "levy", "--method", "fk-steering", "--budget", "24", "--no-progress",
               "--out", str(tmp_path), "--set", "particles=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "particles" in err[0]
    assert not any(tmp_path.rglob("journal*"))


def test_beta_maps_to_the_potential_scale_and_the_frontier_sweeps_it():
    from benchmarks.run.frontier import plan_grid

    info = make_task("levy").info
    c = FKSteeringAgent.resolve_config(info, {"beta": 0.1})
    assert c["potential_scale"] == pytest.approx(10.0)
    assert FKSteeringAgent.resolve_config(info, {})["beta"] == pytest.approx(0.1)  # from the default λ = 10
    with pytest.raises(ValueError, match="set beta or potential_scale"):
        FKSteeringAgent.resolve_config(info, {"beta": 1.0, "potential_scale": 2.0})
    plans = plan_grid(["fk-steering", "turbo", "raft"])
    assert plans["fk-steering"].knob == "beta" and plans["turbo"].knob is None and plans["raft"].knob == "keep_fraction"

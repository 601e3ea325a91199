"""FIND (baselines/find.py): the Gaussian KL against Monte Carlo and the full-covariance formula, the
whitening map against the image backbone's own initial noise, training to the exact tilt on a
linear-Gaussian chain, resuming mid-round, and tiny CLI runs on the vector and image tiers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.common.steps import one_more_step
from fake_agents import GaussianExactEps, improve_cut_and_resumed, tiny_task
from baselines.find import (FINDAgent, InitialNoise, find_loss, gaussian_kl_to_standard, initial_affine,
                            leave_one_out_advantage)
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.tasks import make_task

DIM, N = 2, 3


def test_kl_closed_form_vs_monte_carlo_and_full_covariance():
    g = torch.Generator().manual_seed(0)
    q = InitialNoise(3)
    with torch.no_grad():
        q.mu.copy_(torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64))
        q.log_sigma.copy_(torch.tensor([0.3, -0.4, 0.0], dtype=torch.float64))
    kl = float(q.kl().detach())
    u = q.sample(400_000, g)
    log_ratio = q.log_prob(u) - (-0.5 * u ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)
    assert abs(float(log_ratio.mean()) - kl) < 4 * float(log_ratio.std()) / math.sqrt(len(u))
    # the KL is invariant under the whitening map x = m0 + K u: full-covariance Gaussian KL in x space
    K = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.7, 0.0], [-0.3, 0.2, 1.3]], dtype=torch.float64)
    S1 = K @ torch.diag(torch.exp(2 * q.log_sigma.detach())) @ K.T
    S0, dm = K @ K.T, K @ q.mu.detach()
    kl_x = 0.5 * (torch.trace(torch.linalg.solve(S0, S1)) + dm @ torch.linalg.solve(S0, dm) - 3
                  + torch.logdet(S0) - torch.logdet(S1))
    assert float(kl_x) == pytest.approx(kl, rel=1e-10)
    assert float(gaussian_kl_to_standard(torch.zeros(4), torch.zeros(4))) == 0.0


def test_leave_one_out_advantage_by_hand():
    r = torch.tensor([1.0, 2.0, 6.0])
    torch.testing.assert_close(leave_one_out_advantage(r), torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5]))


def test_policy_gradient_at_ratio_one_is_the_gradient_of_the_objective():
    """At the sampler (ρ = 1) the loss gradient is −∇E_q[r] + beta ∇KL; for r = c·u, E_q[r] = c·μ, so the
    mean gradient over many batches is −c + beta μ for μ (and beta(σ² − 1) for log σ at E_q term 0)."""
    g = torch.Generator().manual_seed(1)
    c, beta = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.7
    q = InitialNoise(2)
    with torch.no_grad():
        q.mu.copy_(torch.tensor([0.3, 0.1], dtype=torch.float64))
        q.log_sigma.copy_(torch.tensor([0.2, -0.1], dtype=torch.float64))
    grads = []
    for _ in range(400):
        u = q.sample(64, g)
        loss, _ = find_loss(q, u, u @ c, q.log_prob(u).detach(), beta, 0.2)
        gm, gs = torch.autograd.grad(loss, [q.mu, q.log_sigma])
        grads.append(torch.cat([gm, gs]))
    G = torch.stack(grads)
    sigma = torch.exp(q.log_sigma.detach())
    expect = torch.cat([-c + beta * q.mu.detach(), beta * (sigma ** 2 - 1)])
    se = G.std(0) / math.sqrt(len(G))
    assert torch.all((G.mean(0) - expect).abs() < 5 * se + 1e-9), (G.mean(0), expect)


def _chain_slope(sched: DDIMSchedule, v: float) -> float:
    """d E[x_N] / d x_0 of the DDIM chain with the exact ε* of data N(m, v I): each step is affine with
    slope A_k + C_k √(1 − a_k)/(a_k v + 1 − a_k)."""
    slope = 1.0
    for k in range(sched.num_steps):
        a = float(sched.alpha[k])
        slope *= float(sched.coef_x[k]) + float(sched.coef_eps[k]) * math.sqrt(1 - a) / (a * v + 1 - a)
    return slope


class LinearProxy(torch.nn.Module):
    """r(x) = c·x: a proxy linear in the design (raw = standardised units); a module, so it checkpoints."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.register_buffer("c", c.clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.c


def _gaussian_agent(config: dict, c: torch.Tensor, seed: int = 0) -> FINDAgent:
    sched0 = DDIMSchedule.from_scheduler(GaussianExactEps(torch.zeros(DIM), 1.0, torch.zeros(N)).scheduler, N, 1.0)
    m = torch.tensor([0.3, -0.2], dtype=torch.float64)
    task = tiny_task(lambda: GaussianExactEps(m, 0.5, sched0.timesteps), DIM, N)
    agent = FINDAgent(task, {"num_steps": N, **config}, seed)
    agent.optimistic.model = LinearProxy(c)
    agent.optimistic.offset, agent.optimistic.scale = 0.0, 1.0
    agent.optimizer = agent.make_optimizer()
    return agent


def test_training_converges_to_the_exact_tilt_on_a_linear_gaussian_chain():
    """r = c·x_N with x_N = s·x_0 + noise: E[r | u] = s c·u + const, so the optimum of E[r] − beta KL over
    N(μ, diag σ²) is the exact tilt μ = s c / beta, σ = 1; the reported KL is ½‖μ‖² there."""
    c, beta = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    agent = _gaussian_agent({"beta": beta, "train_batch": 128, "inner_steps": 2, "lr": 0.03,
                             "max_grad_norm": 10.0, "updates_per_round": 1}, c)
    assert agent.noise_factor is None  # N(0, I) initial noise: whitening is the identity
    s = _chain_slope(agent.schedule, 0.5)
    target = s * c / beta
    trace = []
    for step in range(900):
        if step == 600:
            for grp in agent.optimizer.param_groups:
                grp["lr"] = 0.005
        one_more_step(agent)
        if step >= 700:
            trace.append(torch.cat([agent.noise.mu.detach(), agent.noise.log_sigma.detach()]))
    avg = torch.stack(trace).mean(0)
    torch.testing.assert_close(avg[:DIM], target, atol=0.08, rtol=0)
    torch.testing.assert_close(avg[DIM:], torch.zeros(DIM, dtype=torch.float64), atol=0.08, rtol=0)
    assert agent.analytic_path_kl() == pytest.approx(float(agent.noise.kl()))
    assert agent.analytic_path_kl() == pytest.approx(0.5 * float(target @ target), rel=0.15)
    # and the proposals are the pretrained chain from the learned noise: mean s·μ + chain offset
    with torch.no_grad():
        base = agent._propose_local(20_000, torch.Generator().manual_seed(5)).mean(0)
        tilted = agent.propose(20_000, torch.Generator().manual_seed(6)).mean(0)
    torch.testing.assert_close(tilted - base, s * agent.noise.mu.detach(), atol=0.05, rtol=0)


def test_whitening_reproduces_the_image_backbones_initial_noise():
    info = make_task("aesthetic-manifold").info
    agent = FINDAgent(info, {"num_steps": 4}, seed=0)
    assert agent.noise_factor is not None  # the moment-matched Gaussian, not N(0, I)
    n = 20_000
    x_ref = agent.reference.initial_noise(n, torch.Generator().manual_seed(0), agent.schedule).reshape(n, -1).double()
    x_ours = agent.latents_from_noise(torch.randn(n, x_ref.shape[1], generator=torch.Generator().manual_seed(1),
                                                  dtype=torch.float64)).reshape(n, -1).double()
    se = x_ref.std(0) / math.sqrt(n)
    assert ((x_ref.mean(0) - x_ours.mean(0)).abs() < 6 * se * math.sqrt(2)).float().mean() > 0.99
    idx = torch.randperm(x_ref.shape[1], generator=torch.Generator().manual_seed(2))[:40]
    cov_ref, cov_ours = torch.cov(x_ref[:, idx].T), torch.cov(x_ours[:, idx].T)
    assert (cov_ref - cov_ours).abs().max() < 0.05 * cov_ref.diag().max()


def test_resume_mid_round_gives_the_uninterrupted_round(tmp_path):
    c = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cfg = {"train_batch": 8, "inner_steps": 3, "updates_per_round": 7, "beta": 0.5}

    def fresh():
        a = _gaussian_agent(cfg, c, seed=3)
        a.round_progress = {"stats": {}, "sums": {}, "done": 0}  # the round is open (proxy fixed by hand)
        return a

    # cut mid-batch: step 4 of 7 reuses the batch drawn at step 3
    whole, stats_whole, resumed, stats_resumed = improve_cut_and_resumed(
        fresh, lambda: _gaussian_agent(cfg, c, seed=3), cut_at=4, folder=tmp_path)
    torch.testing.assert_close(resumed.noise.mu, whole.noise.mu, rtol=0, atol=0)
    torch.testing.assert_close(resumed.noise.log_sigma, whole.noise.log_sigma, rtol=0, atol=0)
    assert stats_resumed == pytest.approx(stats_whole)


def test_settings_are_typed_and_beta_is_the_frontier_knob():
    from benchmarks.run.frontier import plan_grid
    from sqdf_bbo.run import settings_help

    info = make_task("levy").info
    with pytest.raises(ValueError, match="train_batch"):
        FINDAgent.resolve_config(info, {"train_batch": 1})
    with pytest.raises(ValueError, match="clip_against"):
        FINDAgent.resolve_config(info, {"clip_against": "old"})
    assert FINDAgent.resolve_config(info, {"beta": "2"})["beta"] == 2.0
    assert "lora_rank" not in FINDAgent.default_config
    text = settings_help("find")
    assert "beta" in text and "inner_steps" in text and "clip_against" in text
    assert plan_grid(["find"])["find"].knob == "beta"


@pytest.mark.parametrize("task,steps", [("levy", 4), ("aesthetic-manifold", 3)])
def test_cli_runs_on_vector_and_image_tiers(tmp_path, task, steps):
    from sqdf_bbo.run import main

    argv = ["--task", task, "--method", "find", "--budget", "24", "--no-progress", "--out", str(tmp_path),
            "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set", "run.batch_size=12",
            "--set", f"task.num_steps={steps}", "--set", "proxy_epochs=2", "--set", "proxy_heads=2",
            "--set", "train_batch=4", "--set", "updates_per_round=3", "--set", "beta=0.5"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 24 and math.isfinite(final["eval_reward"])
    assert final["path_kl"] > 0 and math.isfinite(final["path_kl"])  # the closed-form KL of the learned noise
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"]["beta"] == 0.5 and cfg["agent"]["updates_per_round"] == 3

"""RLCM (baselines/rlcm.py): the consistency map against the boundary coefficients written out, the chain's
timesteps against the LCM skipping rule, a chain step's log-prob against the Gaussian density, the chain's
path KL against Monte Carlo, the clipped objective and its gradient at ρ = 1 by hand, the KL growing with
the number of updates (no fixed point: the frontier knob), the refusal of tasks without a trainable
consistency model, learning on levy-manifold, resuming mid-round, and short CLI runs."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from fake_agents import TinyEps, improve_cut_and_resumed
from baselines.rlcm import (RLCMAgent, batch_advantages, chain_grid, chain_log_probs, consistency_denoise,
                            consistency_problem, ppo_clipped_loss, sample_chains)
from sqdf_bbo.consistency import ConsistencyModel
from sqdf_bbo.diffusion import log_prob
from sqdf_bbo.tasks import make_task
from sqdf_bbo.tasks.base import TaskInfo

DIM = 2


class FirstCoordinate(torch.nn.Module):
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, 0]


def _tiny_cm(seed: int = 0, grid: int = 10, dim: int = DIM) -> ConsistencyModel:
    cm = ConsistencyModel(TinyEps(dim, 3, seed=seed))
    cm.num_steps = grid
    return cm.eval().requires_grad_(False)


def _tiny_task(factory=None, name: str = "tiny", dim: int = DIM) -> TaskInfo:
    """A TaskInfo around TinyEps whose consistency-model factory is ``factory``."""
    return TaskInfo(name=name, tier="test", design_shape=(dim,), make_backbone=lambda: TinyEps(dim, 3, seed=0),
                    features=lambda x: x, feature_dim=dim,
                    agent_defaults={"num_steps": 4}, make_consistency_model=factory)


def _tiny_agent(config: dict, seed: int = 0, dim: int = DIM) -> RLCMAgent:
    agent = RLCMAgent(_tiny_task(lambda: _tiny_cm(grid=10, dim=dim), dim=dim),
                      {"cm_steps": 4, "lora_rank": 0, **config}, seed)
    agent.optimistic.model = FirstCoordinate()
    agent.optimistic.offset, agent.optimistic.scale = 0.0, 1.0
    return agent


def test_consistency_map_matches_the_boundary_coefficients_written_out():
    cm = _tiny_cm()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, DIM, generator=g, dtype=torch.float64)
    t = torch.tensor([981, 801, 501, 101, 1])
    f = consistency_denoise(cm, cm.net, x, t)
    torch.testing.assert_close(f, cm(x, t), rtol=0, atol=0)  # the CM itself when its own network is used
    acp = cm.net.scheduler.alphas_cumprod.double()
    for i in range(5):
        u = 10.0 * float(t[i])
        c_skip, c_out = 0.25 / (u * u + 0.25), u / math.sqrt(u * u + 0.25)
        a = float(acp[t[i]])
        eps = cm.net(x[i:i + 1], t[i:i + 1])[0]
        expect = c_skip * x[i] + c_out * (x[i] - math.sqrt(1 - a) * eps) / math.sqrt(a)
        torch.testing.assert_close(f[i], expect, rtol=1e-12, atol=1e-12)


def test_chain_timesteps_follow_the_lcm_skipping_rule():
    sched = TinyEps(DIM).scheduler
    for grid, n in ((50, 8), (20, 8), (10, 4), (10, 10)):
        _, ts, alpha = chain_grid(sched, grid, n)
        step, skip = 1000 // grid, grid // n
        expect = [(grid - 1 - j * skip) * step + sched.config.steps_offset for j in range(n)]
        assert ts.tolist() == expect
        torch.testing.assert_close(alpha, sched.alphas_cumprod.double()[ts], rtol=0, atol=0)
    assert chain_grid(sched, 50, 8)[1].tolist() == [981, 861, 741, 621, 501, 381, 261, 141]
    with pytest.raises(ValueError, match="cm_steps"):
        chain_grid(sched, 10, 11)


def test_chain_step_log_prob_is_the_gaussian_density():
    cm = _tiny_cm(seed=1)
    _, ts, alpha = chain_grid(cm.net.scheduler, 10, 5)
    g = torch.Generator().manual_seed(2)
    f = lambda x, t, c: cm(x, t, c)  # noqa: E731
    ch = sample_chains(f, ts, alpha, torch.randn(4, DIM, generator=g, dtype=torch.float64), g)
    assert ch.latents.shape == (4, 5, DIM) and ch.logp.shape == (4, 4)
    torch.testing.assert_close(ch.final, cm(ch.latents[:, -1], ts[-1].repeat(4)), rtol=0, atol=0)
    steps = torch.arange(4).repeat(4, 1)
    lp = chain_log_probs(f, ts, alpha, ch.latents, steps)
    torch.testing.assert_close(lp, ch.logp, rtol=1e-12, atol=1e-12)  # sampling and training agree: ρ = 1 at θ_old
    for b in range(4):
        for j in range(4):
            a = float(alpha[j + 1])
            mean = math.sqrt(a) * cm(ch.latents[b:b + 1, j], ts[j:j + 1])[0]
            dens = torch.distributions.Normal(mean, math.sqrt(1 - a)).log_prob(ch.latents[b, j + 1]).mean()
            torch.testing.assert_close(lp[b, j], dens, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        chain_log_probs(f, ts, alpha, ch.latents, torch.full((4, 1), 4))


def test_chain_path_kl_equals_the_monte_carlo_log_ratio():
    """E_{π_θ}[log π_θ − log π_ref] over the chain's stochastic steps (full densities) equals the formula
    Σ_j ᾱ_{j+1} ‖f_θ − f_ref‖² / (2 (1 − ᾱ_{j+1})); with f_θ = f_ref + c the formula is a constant."""
    cm = _tiny_cm(seed=2)
    _, ts, alpha = chain_grid(cm.net.scheduler, 10, 5)
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    f_ref = lambda x, t, cond: cm(x, t, cond)  # noqa: E731
    f_pol = lambda x, t, cond: cm(x, t, cond) + c  # noqa: E731
    g = torch.Generator().manual_seed(3)
    n = 20000
    ch = sample_chains(f_pol, ts, alpha, torch.randn(n, DIM, generator=g, dtype=torch.float64), g, f_ref=f_ref)
    formula = sum(float(alpha[j + 1]) * float(c @ c) / (2 * (1 - float(alpha[j + 1]))) for j in range(4))
    torch.testing.assert_close(ch.kl, torch.full((n,), formula, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    steps = torch.arange(4).repeat(n, 1)
    log_ratio = DIM * (chain_log_probs(f_pol, ts, alpha, ch.latents, steps)
                       - chain_log_probs(f_ref, ts, alpha, ch.latents, steps)).sum(1)  # per-element means × D
    assert abs(float(log_ratio.mean()) - formula) < 4 * float(log_ratio.std()) / math.sqrt(n)


def test_clipped_objective_by_hand_and_its_gradient_at_ratio_one():
    logp_old = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    shift = torch.tensor([[0.2, -0.00005], [-0.3, 0.00002]], dtype=torch.float64)
    adv = torch.tensor([1.5, -2.0], dtype=torch.float64)
    eps = 1e-4
    loss, clipfrac = ppo_clipped_loss(logp_old + shift, logp_old, adv, eps)
    terms = []
    for b in range(2):
        for j in range(2):
            rho = math.exp(float(shift[b, j]))
            terms.append(max(-float(adv[b]) * rho, -float(adv[b]) * min(max(rho, 1 - eps), 1 + eps)))
    assert float(loss) == pytest.approx(sum(terms) / 4, rel=1e-12)
    assert float(clipfrac) == 0.5
    # at θ_old (ρ = 1) the gradient is −mean_{b,j} A_b ∇ℓ_bj
    cm = _tiny_cm(seed=4)
    _, ts, alpha = chain_grid(cm.net.scheduler, 10, 4)
    net = TinyEps(DIM, 3, seed=4).requires_grad_(True)
    f = lambda x, t, cond: consistency_denoise(cm, net, x, t, cond)  # noqa: E731
    g = torch.Generator().manual_seed(5)
    ch = sample_chains(f, ts, alpha, torch.randn(3, DIM, generator=g, dtype=torch.float64), g)
    a3 = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    steps = torch.arange(3).repeat(3, 1)
    lp = chain_log_probs(f, ts, alpha, ch.latents, steps)
    loss, _ = ppo_clipped_loss(lp, lp.detach(), a3, eps)
    g_ppo = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
    g_pg = torch.autograd.grad(-(a3[:, None] * lp).mean(), list(net.parameters()))
    for x, y in zip(g_ppo, g_pg):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
    assert sum(float(x.abs().sum()) for x in g_ppo) > 0


def test_kl_grows_monotonically_with_the_number_of_updates_on_a_1d_bandit():
    """A 1-D Gaussian bandit written as a two-step chain, f_θ(x, τ_0) = μ (the action's
    mean, trainable; reference 0) and f(x, τ_1) = x/√ᾱ_1 (read-out), so the output is N(μ, s²),
    s² = (1 − ᾱ_1)/ᾱ_1, and the chain's measured KL is ᾱ_1 μ²/(2 (1 − ᾱ_1)) = μ²/(2 s²). With the linear
    reward r = output and RLCM's update (fresh samples, batch z-score advantages, the clipped loss at the
    official ε = 1e-4, AdamW), the KL grows at every update and keeps growing: the gradient −mean(A ∂ℓ/∂μ)
    is negative for every batch (Σ_b z_b (x_b − x̄) > 0), so μ rises by about the learning rate each time and
    there is no fixed point, unlike a KL-regularised method."""
    _, ts, alpha = chain_grid(TinyEps(1).scheduler, 10, 2)
    a1 = float(alpha[1])
    mu = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def f(shift):
        return lambda x, t, cond: torch.where((t == ts[0]).reshape(-1, 1), shift.expand_as(x), x / math.sqrt(a1))

    f_ref = f(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.AdamW([mu], lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    steps = torch.zeros(32, 1, dtype=torch.long)
    kls = []
    for _ in range(200):
        with torch.no_grad():
            ch = sample_chains(f(mu), ts, alpha, torch.randn(32, 1, generator=g, dtype=torch.float64), g, f_ref=f_ref)
        kls.append(float(ch.kl.mean()))
        s2 = (1 - a1) / a1
        assert float(ch.kl.mean()) == pytest.approx(float(mu.detach()) ** 2 / (2 * s2), rel=1e-12)  # μ²/(2s²)
        torch.testing.assert_close(ch.final, ch.latents[:, 1] / math.sqrt(a1), rtol=1e-12, atol=0)  # N(μ, s²)
        adv = batch_advantages(ch.final[:, 0], 10.0)
        lp = chain_log_probs(f(mu), ts, alpha, ch.latents, steps)
        torch.testing.assert_close(lp.detach(), ch.logp, rtol=1e-12, atol=1e-12)
        loss, _ = ppo_clipped_loss(lp, ch.logp, adv, 1e-4)
        opt.zero_grad()
        loss.backward()
        assert float(mu.grad) < 0  # every batch pushes μ up
        opt.step()
    assert kls[0] == 0.0 and all(b > a for a, b in zip(kls, kls[1:]))
    assert float(mu.detach()) > 0.5 * 200 * 1e-2  # about lr per update: linear growth of μ, no plateau
    assert kls[-1] > 3 * kls[len(kls) // 2]  # KL ∝ μ²: about 4 times the KL at half the updates


def test_the_frontier_knob_sets_the_kl_on_a_tiny_consistency_model():
    """The agent itself, on a 1-D tiny CM with the linear proxy r = x: the chain's measured KL after one
    round grows monotonically over the frontier grid of ``updates_per_round`` (2, 5, 10, 20), by a factor
    of at least 2 between neighbours (the later updates move the policy more, not less: no fixed point)."""
    key, grid = RLCMAgent.frontier_knob
    assert key == "updates_per_round" and grid == (2, 5, 10, 20)
    kls = []
    for u in grid:
        agent = _tiny_agent({"train_batch": 32, "ppo_minibatch": 32, "updates_per_round": u, "lr": 1e-2}, dim=1)
        agent.optimizer = agent.make_optimizer()
        agent.round_progress = {"stats": {}, "sums": {}, "done": 0}  # the round is open (proxy fixed by hand)
        assert agent.improve()["opt_steps"] == 1.0
        agent.propose(4000, torch.Generator().manual_seed(5))
        kls.append(agent.analytic_path_kl())
    assert kls[0] > 0 and all(b > 2 * a for a, b in zip(kls, kls[1:])), kls


def test_batch_advantages_by_hand():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
    mean = sum(r.tolist()) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in r.tolist()) / 5)  # population std, as the official tracker
    expect = [max(min((v - mean) / (std + 1e-6), 1.5), -1.5) for v in r.tolist()]
    assert batch_advantages(r, 1.5).tolist() == pytest.approx(expect, rel=1e-12)


def test_tasks_without_a_trainable_consistency_model_are_refused_in_one_line(tmp_path):
    from sqdf_bbo.run import main

    with pytest.raises(ValueError, match="task 'rosenbrock'") as e:
        RLCMAgent.resolve_config(make_task("rosenbrock").info, {})
    assert "\n" not in str(e.value) and "levy" in str(e.value)  # names the task and the tasks that have one
    assert consistency_problem(make_task("levy-manifold").info) is None
    sd_like = dataclasses.replace(_tiny_task(lambda: _tiny_cm()), name="sd-like", tier="sd")
    assert "LCM-LoRA" in consistency_problem(sd_like)
    not_a_cm = _tiny_task(lambda: torch.nn.Identity(), name="odd")
    with pytest.raises(ValueError, match="task 'odd'.*no network"):
        RLCMAgent(not_a_cm, {}, 0)
    # the command line stops before any oracle query: exit code 2, no run folder
    argv = ["--task", "rosenbrock", "--method", "rlcm", "--budget", "8", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert not list(tmp_path.iterdir())


def test_settings_are_the_official_ones_and_the_frontier_sweeps_updates_per_round():
    from benchmarks.run.frontier import default_knob, rule_values
    from sqdf_bbo.run import settings_help

    cfg = RLCMAgent.resolve_config(make_task("levy").info, {})
    assert (cfg["lr"], cfg["clip_range"], cfg["cm_steps"], cfg["adv_clip_max"], cfg["max_grad_norm"]) == \
        (1e-4, 1e-4, 8, 10.0, 5.0)
    assert cfg["weight_decay"] == 0.0 and cfg["num_inner_epochs"] == 1 and cfg["ppo_minibatch"] == 8
    # no regulariser: no common beta; the frontier sweeps early stopping, default 20 × 0.1, 0.25, 0.5, 1
    assert "beta" not in RLCMAgent.default_config and cfg["updates_per_round"] == 20
    assert default_knob("rlcm", RLCMAgent) == "updates_per_round"
    assert rule_values("rlcm", RLCMAgent, "updates_per_round") == [2, 5, 10, 20] == \
        [max(1, round(20 * f)) for f in (0.1, 0.25, 0.5, 1)]
    assert "cm_steps" in settings_help("rlcm") and "frontier knob" in settings_help("rlcm")


def test_tiny_agent_trains_the_consistency_network_and_reports_the_chain_kl():
    agent = _tiny_agent({"train_batch": 16, "ppo_minibatch": 8, "updates_per_round": 30, "lr": 3e-2})
    g = torch.Generator().manual_seed(7)
    before = agent.propose(2000, g)
    assert agent.analytic_path_kl() == 0.0  # the policy starts as the pretrained CM
    agent.optimizer = agent.make_optimizer()
    agent.round_progress = {"stats": {}, "sums": {}, "done": 0}  # the round is open (proxy fixed by hand)
    stats = agent.improve()
    assert stats["opt_steps"] == 2.0 and math.isfinite(stats["loss"])
    after = agent.propose(2000, torch.Generator().manual_seed(7))
    assert float(after[:, 0].mean()) > float(before[:, 0].mean()) + 0.1
    assert agent.analytic_path_kl() > 0
    # the frozen CM did not move
    for p, q in zip(agent.cm.net.parameters(), _tiny_cm().net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_the_agent_raises_the_proxy_reward_on_levy_manifold():
    """One round from 64 pretrained samples and their oracle values: under the refitted proxy, the
    fine-tuned chain's designs score higher than the pretrained chain's (same noise)."""
    torch.manual_seed(0)
    task = make_task("levy-manifold")
    agent = RLCMAgent(task.info, {"updates_per_round": 10, "lr": 1e-3, "proxy_epochs": 50}, seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))
    agent.observe(x, task.evaluate_true(x))
    with torch.no_grad():
        x_ref = agent.propose(1024, torch.Generator().manual_seed(2))
    stats = agent.improve()
    assert all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
    with torch.no_grad():
        r_pol = agent.reward_of_designs(agent.propose(1024, torch.Generator().manual_seed(2)))
        r_ref = agent.reward_of_designs(x_ref)
    se = math.sqrt(float(r_pol.var()) / 1024 + float(r_ref.var()) / 1024)
    assert float(r_pol.mean() - r_ref.mean()) > 4 * se
    assert agent.analytic_path_kl() > 0


def test_resume_mid_round_gives_the_uninterrupted_round(tmp_path):
    cfg = {"train_batch": 8, "ppo_minibatch": 4, "updates_per_round": 5, "lr": 1e-2}

    def fresh():
        a = _tiny_agent(cfg, seed=3)
        a.optimizer = a.make_optimizer()
        a.round_progress = {"stats": {}, "sums": {}, "done": 0}
        return a

    whole, stats_whole, resumed, stats_resumed = improve_cut_and_resumed(
        fresh, lambda: _tiny_agent(cfg, seed=3), cut_at=3, folder=tmp_path)
    for p, q in zip(resumed.policy.parameters(), whole.policy.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert stats_resumed == pytest.approx(stats_whole)


@pytest.mark.parametrize("task", ["levy-manifold", "aesthetic-manifold"])
def test_cli_runs_on_vector_and_image_tiers(tmp_path, task):
    from sqdf_bbo.run import main

    argv = ["--task", task, "--method", "rlcm", "--budget", "24", "--no-progress", "--out", str(tmp_path),
            "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set", "run.batch_size=12",
            "--set", "task.num_steps=3", "--set", "proxy_epochs=2", "--set", "proxy_heads=2",
            "--set", "train_batch=4", "--set", "ppo_minibatch=2", "--set", "updates_per_round=2",
            "--set", "cm_steps=4"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 24
    assert all(math.isfinite(final[k]) for k in ("eval_reward", "path_kl", "best_so_far"))
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["path_kl"] == 0.0 and rounds[-1]["path_kl"] > 0  # the chain's KL to the pretrained CM chain
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"]["cm_steps"] == 4 and cfg["agent"]["clip_range"] == 1e-4

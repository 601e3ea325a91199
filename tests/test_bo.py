"""Bayesian-optimisation peers (baselines/turbo.py, baselines/qlognei.py): TuRBO's published state rules
table-driven, its trust region, qLogNEI against the analytic EI, both agents on the harness API."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from baselines.qlognei import QLogNEIAgent
from baselines.turbo import TuRBOAgent, TurboState, sobol, trust_region, update_turbo_state
from sqdf_bbo.tasks import make_task


@pytest.mark.parametrize("dim,q,tol", [(8, 1, 8), (2, 1, 4), (8, 4, 2), (8, 16, 1), (3, 3, 2)])
def test_failure_tolerance_formula(dim, q, tol):
    assert TurboState(dim=dim, batch_size=q).failure_tolerance == tol == math.ceil(max(4 / q, dim / q))


def test_state_sequences_follow_the_published_rules():
    s = TurboState(dim=8, batch_size=4, best_value=1.0)  # failure tolerance 2
    s = update_turbo_state(s, 1.0005)  # not above best + 1e-3 |best|: a failure
    assert (s.failure_counter, s.success_counter, s.length) == (1, 0, 0.8) and s.best_value == 1.0005
    s = update_turbo_state(s, 0.5)  # second failure: halve, reset
    assert (s.failure_counter, s.length) == (0, 0.4)
    s = update_turbo_state(s, 2.0)  # success resets failures
    assert (s.success_counter, s.failure_counter, s.best_value) == (1, 0, 2.0)
    for i in range(9):  # ten successes in a row double L
        s = update_turbo_state(s, 3.0 + i)
    assert (s.success_counter, s.length) == (0, 0.8)
    s = replace_length(s, 1.2)
    for i in range(10):
        s = update_turbo_state(s, 20.0 + i)
    assert s.length == 1.6  # capped at length_max
    # from 0.8, seven halvings fall below 0.5^7 and trigger a restart; six do not
    s = TurboState(dim=8, batch_size=8)  # failure tolerance 1
    for i in range(6):
        s = update_turbo_state(s, -math.inf if i else s.best_value)
    assert not s.restart_triggered and s.length == pytest.approx(0.8 / 2 ** 6)
    s = update_turbo_state(s, -math.inf)
    assert s.restart_triggered and s.length == pytest.approx(0.8 / 2 ** 7)


def replace_length(s: TurboState, length: float) -> TurboState:
    from dataclasses import replace

    return replace(s, length=length)


def test_trust_region_weights_and_clamping():
    centre = torch.tensor([0.5, 0.5, 0.95], dtype=torch.float64)
    ls = torch.tensor([0.2, 0.8, 0.4], dtype=torch.float64)
    lo, hi = trust_region(centre, ls, 0.4)
    w = ls / ls.mean()
    w = w / w.prod() ** (1 / 3)
    assert float(w.prod()) == pytest.approx(1.0)
    torch.testing.assert_close(lo, (centre - 0.2 * w).clamp(0, 1))
    assert float(hi[2]) == 1.0 and float(hi[2] - lo[2]) < 0.2 * float(w[2]) * 2  # clamped at the cube's edge
    torch.testing.assert_close(sobol(16, 3, 5), sobol(16, 3, 5))  # reproducible per seed
    assert not torch.equal(sobol(16, 3, 5), sobol(16, 3, 6))


def test_qlognei_matches_analytic_ei_for_one_point_and_one_baseline():
    """q = 1, one baseline point b: exp(qLogNEI(x)) ≈ E[max(f(x) - f(b), 0)] = σφ(μ/σ) + μΦ(μ/σ) with
    (μ, σ²) the mean and variance of f(x) - f(b) under the GP posterior."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.models import SingleTaskGP
    from botorch.sampling import SobolQMCNormalSampler

    X = torch.tensor([[0.1], [0.4], [0.5], [0.9]], dtype=torch.float64)
    Y = torch.sin(6 * X)
    model = SingleTaskGP(X, Y, outcome_transform=None).eval()
    b, x = torch.tensor([[0.45]], dtype=torch.float64), torch.tensor([[0.7]], dtype=torch.float64)
    acq = qLogNoisyExpectedImprovement(model, X_baseline=b, prune_baseline=False,
                                       sampler=SobolQMCNormalSampler(torch.Size([8192]), seed=0))
    got = float(acq(x.unsqueeze(0)).detach().exp())
    with torch.no_grad():
        post = model.posterior(torch.cat([x, b]))
        m, C = post.mean.reshape(-1), post.covariance_matrix
    mu, sd = float(m[0] - m[1]), math.sqrt(float(C[0, 0] + C[1, 1] - 2 * C[0, 1]))
    ei = sd * stats.norm.pdf(mu / sd) + mu * stats.norm.cdf(mu / sd)
    assert got == pytest.approx(ei, rel=0.03)


def run_rounds(agent, sizes, task, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = agent.propose(n, g)
        assert x.shape == (n, *task.info.design_shape)
        lo, hi = task.info.bounds
        assert torch.all(x >= lo - 1e-6) and torch.all(x <= hi + 1e-6)
        agent.observe(x, task.evaluate_true(x))
        out.append(agent.improve())
    return out


def test_turbo_agent_rounds_and_restart():
    task = make_task("levy")
    agent = TuRBOAgent(task.info, {"n_candidates": 500}, seed=0)
    s = run_rounds(agent, [16, 8, 8], task)
    assert agent.state is not None and s[-1]["gp_points"] == 32
    # a forced restart: a huge length_min makes the first failure restart; the next design is a fresh Sobol
    agent = TuRBOAgent(task.info, {"n_candidates": 500, "length_min": 0.79}, seed=0)
    run_rounds(agent, [16], task)
    g = torch.Generator().manual_seed(1)
    x = agent.propose(8, g)
    agent.observe(torch.full_like(x, float(task.info.bounds[0][0])), torch.full((8,), -1e9, dtype=torch.float64))
    st = agent.improve()
    assert st["restarts"] == 1 and agent.model is None and agent.local_start == 24


def test_qlognei_agent_rounds():
    task = make_task("levy")
    agent = QLogNEIAgent(task.info, {"q_chunk": 3, "num_restarts": 2, "raw_samples": 32, "maxiter": 20,
                                     "mc_samples": 64}, seed=0)
    s = run_rounds(agent, [12, 5], task)
    assert s[-1]["gp_points"] == 17 and s[-1]["gp_noise_std"] >= 0


@pytest.mark.parametrize("cls", [TuRBOAgent, QLogNEIAgent])
def test_bo_rejects_image_tasks_in_one_line(cls):
    with pytest.raises(ValueError, match="needs a vector task"):
        cls.resolve_config(make_task("aesthetic").info, {})


@pytest.mark.parametrize("method,extra", [("turbo", ["n_candidates=200"]),
                                          ("qlognei", ["q_chunk=4", "num_restarts=2", "raw_samples=16",
                                                       "maxiter=10", "mc_samples=32"])])
def test_cli_runs_on_a_manifold_task(tmp_path, method, extra):
    import json

    from sqdf_bbo.run import main

    argv = ["--task", "ackley-manifold", "--method", method, "--budget", "30", "--no-progress",
            "--out", str(tmp_path), "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set", "run.batch_size=15"]
    for e in extra:
        argv += ["--set", e]
    assert main(argv) == 0
    final = json.loads((next(tmp_path.iterdir()) / "final.json").read_text())
    assert final["queries_used"] == 30 and math.isnan(final["path_kl"]) and "invalid_frac" in final

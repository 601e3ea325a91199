"""One KL scale for every KL-regularised method (sqdf_bbo/agents/kl_scale.py).

The identity tested per method, at a fixed state z and step k with a linear reward r(x) = g·x:
    ∇_δ loss = c · (−∇_δ r(x_N) + beta · ∇_δ KL(N(μ_θ, s²I) ‖ N(μ_ref, s²I)))
where δ is an offset added to the policy's noise prediction at step k (so μ_θ moves with δ), x_N is
reached from x_{k+1} = μ_θ + s ξ by the pretrained chain with frozen noises (x_N = x_{k+1} at the last
step), c > 0 is a method-specific constant (batch averaging, AM's 2λ), and the exact Gaussian KL is
computed independently with ``torch.distributions``. c is read off the pure-reward gradient (δ = 0, where
the KL gradient vanishes), then the full gradient at δ ≠ 0 must match with the method's configured beta.
"""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from baselines.adjoint_matching import AdjointMatchingAgent, adjoint_matching_loss, lean_adjoint
from baselines.seiko import SEIKOAgent
from sqdf_bbo.agents.sqdf import SQDFAgent
from sqdf_bbo.tasks import make_task

N_STEPS = 3
B = 5


@pytest.fixture(scope="module")
def task():
    return make_task("levy").info  # d = 8 latent elements


def _patch(agent, delta: torch.Tensor, k_star: int):
    """Policy ε = reference ε + δ at step k_star only; linear reward g·x (set per call)."""
    t_star = int(agent.schedule.timesteps[k_star])
    seen = {}

    def eps(x, t, cond=None):
        out = agent.reference_eps(x, t, cond)
        rows = t.reshape(-1).expand(x.shape[0]) == t_star  # AM evaluates all steps in one batch
        if bool(rows.any()):
            seen["x"] = x[rows].detach().clone()
            out = out.index_put((rows.nonzero().reshape(-1),), out[rows] + delta)
        return out

    agent.policy_eps = eps
    return seen


def _independent_grads(agent, x, k, delta, xi, g, tail=None):
    """∇_δ Σ_b r(x_N) and ∇_δ Σ_b KL_exact at (x, k), by autograd on torch.distributions; x_N = tail(x_{k+1})
    (the identity at the last step), x_{k+1} = μ_θ + s ξ."""
    sched = agent.schedule
    d = delta.detach().clone().requires_grad_(True)
    with torch.no_grad():
        eps_ref = agent.reference_eps(x, sched.timestep_batch(k, x.shape[0], x.device))
    mu_t = sched.mean(x, eps_ref + d, k)
    mu_r = sched.mean(x, eps_ref, k)
    s = sched.step_std(k, x)
    x_next = mu_t + s * xi
    xN = x_next if tail is None else tail(x_next)
    (gr,) = torch.autograd.grad((xN * g).sum(), d, retain_graph=True)
    kl = kl_divergence(Normal(mu_t, s.expand_as(mu_t)), Normal(mu_r, s.expand_as(mu_r))).sum()
    (gk,) = torch.autograd.grad(kl, d)
    return gr, gk


def _check_identity(loss_grad, agent, beta, k=None, tail=None, dtype=torch.float32):
    """loss_grad(delta, g) -> (∇_δ loss, state x at step k, ξ at step k); k defaults to K_STAR."""
    k = K_STAR if k is None else k
    gen = torch.Generator().manual_seed(3)
    shape = (B, 8)
    g = torch.randn(8, generator=gen, dtype=torch.float64).to(dtype)
    zero = torch.zeros(shape, dtype=dtype)
    g_r, x, xi = loss_grad(zero, g)
    gr, _ = _independent_grads(agent, x, k, zero, xi, g, tail)
    c = -float((g_r * gr).sum() / (gr * gr).sum())
    assert c > 0
    torch.testing.assert_close(g_r, -c * gr, rtol=1e-4, atol=1e-6)  # δ = 0: pure reward gradient
    delta = 0.3 * torch.randn(shape, generator=gen).to(dtype)
    g_full, x2, xi2 = loss_grad(delta, g)
    gr2, gk2 = _independent_grads(agent, x2, k, delta, xi2, g, tail)
    assert float(gk2.abs().max()) > 1e-3  # the KL gradient is not trivially zero
    torch.testing.assert_close(g_full, c * (-gr2 + beta * gk2), rtol=1e-4, atol=1e-5)
    return c


K_STAR = N_STEPS - 1  # the last step: x_{k+1} is the final sample, so every method's reward sees it directly


@pytest.mark.parametrize("beta", [0.05, 0.7])
@pytest.mark.parametrize("reduction", ["mean_no_half", "exact"])
def test_sqdf_gradient_equals_beta_times_exact_kl_gradient(task, beta, reduction):
    agent = SQDFAgent(task, {"num_steps": N_STEPS, "beta": beta, "kl_reduction": reduction, "gamma": 1.0,
                             "q_estimator": "tweedie", "buffer": "none", "lora_rank": 0}, seed=0)
    assert agent.config["alpha"] == pytest.approx(beta * (8 / 2 if reduction == "mean_no_half" else 1))
    z = torch.randn(B, 8, generator=torch.Generator().manual_seed(1))
    xi = torch.randn(B, 8, generator=torch.Generator().manual_seed(2))
    k = torch.full((B,), K_STAR, dtype=torch.long)

    def loss_grad(delta, g):
        d = delta.clone().requires_grad_(True)
        _patch(agent, d, K_STAR)
        agent.reward = lambda x: (x * g).sum(-1)
        loss, _ = agent.sqdf_loss(z, k, noise=xi)
        (gd,) = torch.autograd.grad(loss, d)
        return gd, z, xi

    c = _check_identity(loss_grad, agent, beta)
    assert c == pytest.approx(1 / B, rel=1e-4)  # loss = mean over pairs of -(r - alpha KL~)


@pytest.mark.parametrize("beta", [0.05, 0.7])
@pytest.mark.parametrize("reference", ["pretrained", "previous"])
def test_seiko_gradient_equals_beta_times_exact_kl_gradient(task, beta, reference):
    agent = SEIKOAgent(task, {"num_steps": N_STEPS, "beta": beta, "kl_reference": reference,
                              "truncation": "none", "checkpoint": False, "lora_rank": 0}, seed=0)
    assert agent.config["kl_weight"] == pytest.approx(beta * 8)
    agent.kl_model = agent.frozen_kl_reference()  # round 1: the "previous" model is the pretrained one
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, 8, generator=gen)
    noises = torch.randn(B, N_STEPS, 8, generator=gen)

    def loss_grad(delta, g):
        d = delta.clone().requires_grad_(True)
        seen = _patch(agent, d, K_STAR)
        agent.reward = lambda x: (x * g).sum(-1)
        loss, _, _ = agent.seiko_loss(x0, noises)
        (gd,) = torch.autograd.grad(loss, d)
        return gd, seen["x"], noises[:, K_STAR]

    c = _check_identity(loss_grad, agent, beta)
    assert c == pytest.approx(1 / B, rel=1e-4)


def _am_setup(agent, k):
    """AM's loss gradient at step k on a trajectory whose steps after k are the pretrained chain (as the lean
    adjoint assumes), and the independent tail x_{k+1} -> x_N of that chain with the same frozen noises.
    In float64 (the pretrained model is cast), so that the chain through several steps stays exact."""
    agent.reference.double()
    sched, N = agent.schedule, agent.schedule.num_steps
    gen = torch.Generator().manual_seed(1)
    head = torch.randn(B, k + 1, 8, generator=gen, dtype=torch.float64)  # x_0..x_k (x_k enters step k's term)
    noises = torch.randn(B, N, 8, generator=gen, dtype=torch.float64)

    def base_step(x, j, eps_offset=0.0):
        eps = agent.reference_eps(x, sched.timestep_batch(j, x.shape[0], x.device)) + eps_offset
        return sched.mean(x, eps, j) + sched.step_std(j, x) * noises[:, j]

    def tail(x):
        for j in range(k + 1, N):
            x = base_step(x, j)
        return x

    def loss_grad(delta, g):
        d = delta.clone().requires_grad_(True)
        _patch(agent, d, k)
        with torch.no_grad():  # the policy's rollout: δ at step k, pretrained afterwards
            states = [head[:, -1]]
            for j in range(k, N):
                states.append(base_step(states[-1], j, delta if j == k else 0.0))
        latents = torch.cat([head, torch.stack(states[1:], dim=1)], dim=1)
        terminal = -agent.lam * g.expand(B, 8)  # ã_N = -λ ∇r(x_N) for r = g·x
        adj, _ = lean_adjoint(agent.reference_eps, agent.schedule, latents, terminal)
        loss = adjoint_matching_loss(agent.policy_eps, agent.reference_eps, agent.schedule, latents, adj,
                                     index=agent.config["adjoint_index"])
        (gd,) = torch.autograd.grad(loss, d)
        return gd, latents[:, k], noises[:, k]

    return loss_grad, tail


@pytest.mark.parametrize("k", [0, 1, K_STAR])
@pytest.mark.parametrize("beta", [0.05, 0.7])
def test_adjoint_matching_default_gradient_equals_beta_times_exact_kl_gradient(task, beta, k):
    """The DEFAULT configuration (no adjoint_index given) is on the common scale at every step, intermediate
    ones included, where the reward reaches x_N through the rest of the chain."""
    agent = AdjointMatchingAgent(task, {"num_steps": N_STEPS, "beta": beta, "lora_rank": 0}, seed=0)
    assert agent.config["alpha"] == pytest.approx(beta) and agent.lam == pytest.approx(1 / beta)
    assert agent.config["adjoint_index"] == "k+1"
    loss_grad, tail = _am_setup(agent, k)
    c = _check_identity(loss_grad, agent, beta, k, tail, torch.float64)
    assert c == pytest.approx(2 * agent.lam / B, rel=1e-4)  # mean_b (N/|S|) ‖…‖², S = all steps: N/|S| = 1


@pytest.mark.parametrize("k", [0, 1, K_STAR])
def test_adjoint_matching_index_k_is_off_the_beta_scale(task, k):
    """adjoint_index='k' pairs step k's control with ã_k = J_k^T ã_{k+1} and fails the same identity; its
    adjoint is visibly shorter than the discrete-exact one at N = 10 (the effective beta is larger)."""
    beta = 0.7
    agent = AdjointMatchingAgent(task, {"num_steps": N_STEPS, "beta": beta, "adjoint_index": "k",
                                        "lora_rank": 0}, seed=0)
    loss_grad, tail = _am_setup(agent, k)
    with pytest.raises(AssertionError):
        _check_identity(loss_grad, agent, beta, k, tail, torch.float64)
    # the size of the mismatch on a 10-step pretrained rollout: |ã_k| / |ã_{k+1}| per intermediate step
    agent10 = AdjointMatchingAgent(task, {"num_steps": 10, "beta": beta, "lora_rank": 0}, seed=0)
    gen = torch.Generator().manual_seed(4)
    traj = agent10.sample(64, gen)
    g = torch.randn(8, generator=gen)
    adj, _ = lean_adjoint(agent10.reference_eps, agent10.schedule, traj.latents, -agent10.lam * g.expand(64, 8))
    norms = adj.norm(dim=-1).mean(0)  # (N+1,)
    ratio = norms[:-1] / norms[1:]  # |ã_k| / |ã_{k+1}|, k = 0..N-1
    assert float(ratio[1:-1].min()) < 0.8, ratio


def test_one_scale_across_methods(task):
    """The same beta gives every method the same weight per nat; defaults differ by factors of D."""
    D = 8
    for beta in (0.01, 1.0, 10.0):
        sq = SQDFAgent.resolve_config(task, {"beta": beta})
        se = SEIKOAgent.resolve_config(task, {"beta": beta})
        am = AdjointMatchingAgent.resolve_config(task, {"beta": beta})
        assert sq["beta"] == se["beta"] == am["beta"] == beta
        assert (sq["alpha"], se["kl_weight"], am["alpha"]) == pytest.approx((beta * D / 2, beta * D, beta))
    # native defaults, expressed on the common scale
    assert SQDFAgent.resolve_config(task, {})["beta"] == pytest.approx(2 / D)
    assert SEIKOAgent.resolve_config(task, {})["beta"] == pytest.approx(1 / D)
    assert AdjointMatchingAgent.resolve_config(task, {})["beta"] == pytest.approx(1.0)


def test_beta_and_native_knob_conflict_is_one_line_error(task):
    with pytest.raises(ValueError, match="set beta or alpha, not both"):
        SQDFAgent.resolve_config(task, {"beta": 0.1, "alpha": 3.0})
    with pytest.raises(ValueError, match="set beta or kl_weight, not both"):
        SEIKOAgent.resolve_config(task, {"beta": 0.1, "kl_weight": 3.0})
    assert SQDFAgent.resolve_config(task, {"beta": 0.1, "alpha": 0.4})["alpha"] == pytest.approx(0.4)
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="beta"):
            SQDFAgent.resolve_config(task, {"beta": bad})
    with pytest.raises(ValueError, match="must be > 0"):
        AdjointMatchingAgent.resolve_config(task, {"beta": 0.0})

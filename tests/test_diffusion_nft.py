"""DiffusionNFT (baselines/diffusion_nft.py): the loss on a hand-computed batch, its gradient at θ = θ_old
in closed form, the free-ε optimum, the optimality weights, the old-policy decay, the agent."""
from __future__ import annotations

import math

import pytest
import torch

from baselines.diffusion_nft import DiffusionNFTAgent, nft_loss, nft_weights, old_policy_decay
from sqdf_bbo.tasks import make_task


def test_loss_on_a_hand_computed_batch():
    a, beta, c, kappa = 0.64, 0.5, 5.0, 0.1  # √a = 0.8, √(1-a) = 0.6
    x0 = torch.tensor([[1.0, 0.0]])
    x_t = torch.tensor([[0.8, 0.6]])
    e_th, e_old, e_ref = torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    r = torch.tensor([0.75])
    # ε⁺ = (0.75, 1.0), ε⁻ = (1.25, 1.0); x̂ = (x_t - 0.6 ε)/0.8
    xp = torch.tensor([(0.8 - 0.45) / 0.8, 0.0])
    xn = torch.tensor([(0.8 - 0.75) / 0.8, 0.0])
    dp, dn = xp - x0[0], xn - x0[0]
    wp, wn = dp.abs().mean(), dn.abs().mean()
    expect = (c / beta) * (0.75 * (dp ** 2).mean() / wp + 0.25 * (dn ** 2).mean() / wn) + kappa * 0.25 / 2
    got = nft_loss(e_th, e_old, e_ref, x0, x_t, a, r, beta, c, kappa)
    torch.testing.assert_close(got, expect.reshape(1))


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_gradient_at_old_policy_is_independent_of_beta(beta):
    """∂ℓ/∂ε_θ at ε_θ = ε_old = -(2 c b / (w D)) (2r - 1)(x̂_old - x_0), b = √((1-a)/a)."""
    g = torch.Generator().manual_seed(0)
    B, D, a, c = 3, 6, 0.3, 5.0
    x0, eps = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    e_old = torch.randn(B, D, generator=g)
    r = torch.tensor([0.1, 0.5, 0.9])
    e_th = e_old.clone().requires_grad_(True)
    nft_loss(e_th, e_old, e_old, x0, x_t, a, r, beta, c, 0.0).sum().backward()
    x_old = (x_t - math.sqrt(1 - a) * e_old) / math.sqrt(a)
    w = (x_old - x0).abs().mean(1, keepdim=True)
    b = math.sqrt((1 - a) / a)
    expect = -(2 * c * b / (w * D)) * (2 * r[:, None] - 1) * (x_old - x0)
    torch.testing.assert_close(e_th.grad, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.7, *DiffusionNFTAgent.frontier_knob[1]])
def test_free_minimiser_without_adaptive_weights(beta):
    """Minimising E over (ε, r) of the policy term in a free ε_θ at fixed x_t gives
    β (ε_θ - ε_old) = 2 (E[r ε] - E[r] ε_old) with ε_old := E[ε]: the shift away from the old policy is
    1/β_NFT, so the frontier's grid of β_NFT (the class's frontier_knob) acts like a KL weight."""
    g = torch.Generator().manual_seed(1)
    n, D, a = 4000, 2, 0.5
    eps = torch.randn(n, D, generator=g, dtype=torch.float64)
    r = torch.rand(n, generator=g, dtype=torch.float64)
    x0 = torch.zeros(n, D, dtype=torch.float64)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps  # x̂(ε) = x0 exactly, so the target ε is the drawn one
    e_old = eps.mean(0, keepdim=True).expand(n, D)
    e = torch.zeros(1, D, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([e], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nft_loss(e.expand(n, D), e_old, e_old, x0, x_t, a, r, beta, 5.0, 0.0, adaptive=False).mean()
        loss.backward()
        return loss

    opt.step(closure)
    expect = 2 * ((r[:, None] * eps).mean(0) - r.mean() * e_old[0]) / beta + e_old[0]
    torch.testing.assert_close(e.detach()[0], expect, rtol=1e-4, atol=1e-6)


def test_weights_and_decay():
    r = nft_weights(torch.tensor([0.0, 1.0, 2.0, 100.0], dtype=torch.float64), 5.0)
    assert torch.all((r >= 0) & (r <= 1)) and torch.all(r[1:] >= r[:-1])
    A = (torch.tensor([0.0, 1.0, 2.0, 100.0]) - 25.75) / (torch.tensor([0.0, 1.0, 2.0, 100.0]).std(unbiased=False) + 1e-4)
    torch.testing.assert_close(r, (A.double().clamp(-5, 5) / 10 + 0.5), rtol=1e-6, atol=1e-6)
    assert [old_policy_decay(s, 1) for s in (0, 100, 1000)] == [0.0, pytest.approx(0.1), 0.5]
    assert old_policy_decay(74, 2) == 0.0 and old_policy_decay(85, 2) == pytest.approx(0.075)
    assert old_policy_decay(10_000, 2) == 0.999 and old_policy_decay(5, 0) == 0.0


def test_agent_moves_towards_the_proxy_best():
    info = make_task("levy").info
    agent = DiffusionNFTAgent(info, {"num_steps": 6, "proxy_epochs": 50, "updates_per_round": 15,
                                     "train_batch": 32, "lr": 3e-3, "decay_type": 0}, seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))
    agent.observe(x, -(x.double() ** 2).sum(1))
    s = agent.improve()
    assert math.isfinite(s["loss"]) and s["grad_norm"] > 0
    # θ_old follows θ exactly with decay type 0
    for po, p in zip(agent.old.parameters(), agent.policy.parameters()):
        torch.testing.assert_close(po, p.detach())
    with torch.no_grad():
        r_nft = agent.reward_of_designs(agent.propose(256, torch.Generator().manual_seed(3))).mean()
        from sqdf_bbo.agents.base import DiffusionAgent

        traj = DiffusionAgent.sample(agent, 256, torch.Generator().manual_seed(3), eps_fn=agent.reference_eps)
        r_pre = agent.reward_of_designs(agent.reference.decode(traj.final)).mean()
    assert r_nft > r_pre


def test_frontier_sweeps_nft_beta_at_the_default_kl_coef():
    """The grid rule sweeps the declared β_NFT (not lr), every value passes the typed settings, κ stays 1e-4."""
    from benchmarks.run import frontier as fr

    info = make_task("levy").info
    plan = fr.plan_grid(["diffusion-nft"])["diffusion-nft"]
    assert (plan.knob, plan.values, plan.source) == ("nft_beta", [0.1, 1.0, 10.0, 100.0], "rule")
    assert plan.folder(100.0) == "diffusion-nft__nft_beta=100"
    for v in plan.values:
        cfg = DiffusionNFTAgent.resolve_config(info, {"nft_beta": v})
        assert cfg["nft_beta"] == v and cfg["kl_coef"] == 1e-4 and cfg["lr"] == 3e-4

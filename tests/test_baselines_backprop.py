"""AlignProp and DRaFT (full, K, 1, LV): gradients against central finite differences of an independently
written DDIM chain on tiny float64 models."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from baselines._common import truncated_chain
from fake_agents import PerStepEps, TinyEps, hand_ddim_mean, one_update, ready_agent
from baselines.alignprop import AlignPropAgent, draw_cut
from baselines.draft import DRaFT1Agent, DRaFTAgent, DRaFTKAgent, DRaFTLVAgent, draft_lv_samples
from sqdf_bbo.diffusion import DDIMSchedule

N = 5
DIM = 2


def reward_fn(x: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear reward (B, 2) -> (B,)."""
    return torch.sin(1.3 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.2 * x[:, 0] * x[:, 1]


def hand_chain(model, params_old, params_new, x0, noises, cut):
    """x_N of the chain where trajectory b uses params_old at steps k < cut[b] and params_new after."""
    sched = model.scheduler
    x = x0
    for k in range(N):
        tau = (N - 1 - k) * (1000 // N) + sched.config.steps_offset
        t = torch.full((x.shape[0],), tau, dtype=torch.long)
        e_old = functional_call(model, params_old, (x, t))
        e_new = functional_call(model, params_new, (x, t))
        use_new = (k >= cut).reshape(-1, 1)
        eps = torch.where(use_new, e_new, e_old)
        mu, s, _ = hand_ddim_mean(sched, N, k, x, eps)
        x = mu + s * noises[:, k]
    return x


def fd_grad(model, x0, noises, cut, h=1e-6):
    """Central finite differences of mean_b r(x_N) w.r.t. the parameters of the steps k >= cut."""
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = {}
    for name, p in base.items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            vals = []
            for sgn in (1, -1):
                q = {k: v.clone() for k, v in base.items()}
                q[name].view(-1)[i] += sgn * h
                vals.append(reward_fn(hand_chain(model, base, q, x0, noises, cut)).mean())
            g.view(-1)[i] = (vals[0] - vals[1]) / (2 * h)
        out[name] = g
    return out


def capture_grads(agent):
    """Run one_update(agent) with the optimizer step replaced by a gradient snapshot."""
    grads = {}

    def fake_step():
        for n, p in agent.policy.named_parameters():
            grads[n] = None if p.grad is None else p.grad.detach().clone()
        agent.optimizer.zero_grad(set_to_none=True)
        return 0.0

    agent.clip_and_step = fake_step
    one_update(agent)
    return grads


@pytest.mark.parametrize("cls,cfg,expect_cut", [
    (DRaFTAgent, {}, 0),
    (DRaFTKAgent, {"K": 2}, N - 2),
    (DRaFT1Agent, {}, N - 1),
    (AlignPropAgent, {"truncation": "uniform"}, None),
    (AlignPropAgent, {"truncation": "none", "checkpoint": False}, 0),
])
def test_agent_gradient_matches_finite_differences(cls, cfg, expect_cut):
    agent = ready_agent(cls, lambda: TinyEps(DIM, 3, seed=1), reward_fn, cfg, num_steps=N)
    state = agent.generator.get_state()
    grads = capture_grads(agent)
    # replay the same draws: noises first, then (AlignProp) the cut
    agent.generator.set_state(state)
    from baselines._common import draw_noise

    x0, noises, _ = draw_noise(agent, agent.config["train_batch"])
    if cls is AlignPropAgent:
        cut = agent.cut_indices(x0.shape[0])
    else:
        cut = torch.full((x0.shape[0],), expect_cut, dtype=torch.long)
    if expect_cut is not None:
        assert (cut == expect_cut).all()
    fd = fd_grad(agent.policy, x0, noises, cut)
    for name, g in fd.items():
        # the agent minimises -mean r, so its gradient is -FD(mean r)
        torch.testing.assert_close(grads[name], -g, rtol=1e-5, atol=1e-8, msg=f"param {name}")


def test_draft_k_zero_gradient_before_cut():
    sched = DDIMSchedule.from_scheduler(TinyEps().scheduler, N, 1.0)
    for K in (1, 2, N):
        agent = ready_agent(DRaFTKAgent, lambda: PerStepEps(sched.timesteps, DIM, seed=2), reward_fn,
                            {"K": K}, num_steps=N)
        grads = capture_grads(agent)
        for name in ("scale", "bias"):
            g = grads[name]
            assert torch.count_nonzero(g[: N - K]) == 0, f"K={K}: {name} of steps before the cut got gradient"
            assert (g[N - K:].abs().sum(dim=1) > 0).all(), f"K={K}: {name} after the cut has no gradient"


def test_full_draft_equals_alignprop_without_truncation_and_checkpoint_is_exact():
    model = TinyEps(DIM, 3, seed=3)
    model.requires_grad_(True)
    sched = DDIMSchedule.from_scheduler(model.scheduler, N, 1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    noises = torch.randn(6, N, DIM, generator=g, dtype=torch.float64)
    out = []
    for ckpt in (True, False):
        for cut in (None, torch.zeros(6, dtype=torch.long)):
            model.zero_grad()
            reward_fn(truncated_chain(model, sched, x0, noises, cut=cut, checkpoint=ckpt)).mean().backward()
            out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    for o in out[1:]:
        torch.testing.assert_close(o, out[0], rtol=1e-12, atol=1e-14)


def test_draw_cut_distributions():
    g = torch.Generator().manual_seed(0)
    c = draw_cut("gaussian", 4000, 50, g)
    assert c.min() >= 1 and c.max() <= 49
    # exact pmf of floor(Normal(42, 5)) conditioned on 1 <= k* <= 49 (the redraw)
    normal = torch.distributions.Normal(torch.tensor(42.0, dtype=torch.float64), 5.0)
    j = torch.arange(1, 50, dtype=torch.float64)
    pmf = normal.cdf(j + 1) - normal.cdf(j)
    pmf = pmf / pmf.sum()
    emp = torch.bincount(c - 1, minlength=49).double() / len(c)
    assert (emp.cumsum(0) - pmf.cumsum(0)).abs().max() < 0.03  # Kolmogorov distance, n = 4000
    u = draw_cut("uniform", 4000, 50, g)
    assert u.min() == 1 and u.max() == 49 and abs(u.double().mean().item() - 25.0) < 0.8
    assert (draw_cut("fixed", 5, 50, g, K=3) == 47).all()
    assert (draw_cut("none", 5, 50, g) == 0).all()
    with pytest.raises(ValueError, match="truncation"):
        draw_cut("random", 5, 50, g)
    with pytest.raises(ValueError, match="truncation_K"):
        draw_cut("fixed", 5, 50, g, K=51)


def test_draft_lv_equals_autograd_of_renoised_last_step():
    agent = ready_agent(DRaFTLVAgent, lambda: TinyEps(DIM, 3, seed=4), reward_fn, {"n_lv": 3}, num_steps=N)
    state = agent.generator.get_state()
    grads = capture_grads(agent)
    agent.generator.set_state(state)
    from baselines._common import draw_noise
    from sqdf_bbo.diffusion import sample_trajectory

    B = agent.config["train_batch"]
    x0, noises, _ = draw_noise(agent, B)
    with torch.no_grad():
        x_bar = sample_trajectory(agent.policy_eps, agent.schedule, x0, noises=noises).final
    eps_i = torch.randn((3, B, DIM), generator=agent.generator, dtype=torch.float64)
    xi_i = torch.randn((3, B, DIM), generator=agent.generator, dtype=torch.float64)
    sched = agent.policy.scheduler
    tau_last = sched.config.steps_offset
    a = sched.alphas_cumprod.double()[tau_last]
    model = agent.policy
    base = {k: v.detach().clone() for k, v in model.named_parameters()}

    def f(params):
        xt = torch.sqrt(a) * x_bar + torch.sqrt(1 - a) * eps_i
        vals = []
        for i in range(3):
            e = functional_call(model, params, (xt[i], torch.full((B,), tau_last)))
            mu, s, _ = hand_ddim_mean(sched, N, N - 1, xt[i], e)
            vals.append(reward_fn(mu + s * xi_i[i]).mean())
        return torch.stack(vals).mean()

    h = 1e-6
    for name, p in base.items():
        for i in range(p.numel()):
            up = {k: v.clone() for k, v in base.items()}
            dn = {k: v.clone() for k, v in base.items()}
            up[name].view(-1)[i] += h
            dn[name].view(-1)[i] -= h
            fd = (f(up) - f(dn)) / (2 * h)
            torch.testing.assert_close(grads[name].view(-1)[i], -fd, rtol=1e-5, atol=1e-8)
    # x_bar is a constant: no gradient path through the earlier chain
    out = draft_lv_samples(model, agent.schedule, x_bar.requires_grad_(True), eps_i, xi_i)
    (gx,) = torch.autograd.grad(out.sum(), x_bar, allow_unused=True)
    assert gx is None or torch.count_nonzero(gx) == 0


def test_draft_lv_variance_drops_with_n():
    """Gradient variance of the LV estimator falls roughly like 1/n (a Monte Carlo check of the estimator's variance)."""
    model = TinyEps(DIM, 3, seed=5).requires_grad_(True)
    sched = DDIMSchedule.from_scheduler(model.scheduler, N, 1.0)
    x_bar = torch.full((1, DIM), 0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)

    def grad_var(n, reps=300):
        gs = []
        for _ in range(reps):
            model.zero_grad()
            e = torch.randn((n, 1, DIM), generator=g, dtype=torch.float64)
            xi = torch.randn((n, 1, DIM), generator=g, dtype=torch.float64)
            reward_fn(draft_lv_samples(model, sched, x_bar, e, xi).reshape(n, DIM)).mean().backward()
            gs.append(model.W2.grad.reshape(-1).clone())
        return torch.stack(gs).var(dim=0).sum().item()

    v1, v4 = grad_var(1), grad_var(4)
    assert 2.0 < v1 / v4 < 8.0, f"variance ratio n=1 vs n=4 is {v1 / v4:.2f}, expected ≈ 4"


def test_bad_settings_raise():
    mk = lambda: TinyEps(DIM, 3)  # noqa: E731
    with pytest.raises(ValueError, match="K must be"):
        ready_agent(DRaFTKAgent, mk, reward_fn, {"K": N + 1}, num_steps=N)
    with pytest.raises(ValueError, match="truncation"):
        ready_agent(AlignPropAgent, mk, reward_fn, {"truncation": "sometimes"}, num_steps=N)
    with pytest.raises(ValueError, match="n_lv"):
        ready_agent(DRaFTLVAgent, mk, reward_fn, {"n_lv": 0}, num_steps=N)
    with pytest.raises(ValueError, match="unknown setting"):
        ready_agent(DRaFTKAgent, mk, reward_fn, {"kappa": 1}, num_steps=N)


def test_update_steps_improve_reward():
    """A few hundred DRaFT-1 / AlignProp steps on the tiny model raise the mean reward of fresh samples."""
    for cls in (DRaFT1Agent, AlignPropAgent):
        agent = ready_agent(cls, lambda: TinyEps(DIM, 3, seed=6), reward_fn,
                            {"train_batch": 16, "lr": 2e-2, "truncation": "none"} if cls is AlignPropAgent
                            else {"train_batch": 16, "lr": 2e-2}, num_steps=N)
        g = torch.Generator().manual_seed(7)
        before = reward_fn(agent.sample(512, g).final).mean()
        for _ in range(150):
            one_update(agent)
        g = torch.Generator().manual_seed(7)
        after = reward_fn(agent.sample(512, g).final).mean()
        assert after > before + 0.1, f"{cls.__name__}: reward {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("cls,cfg", [(AlignPropAgent, {}), (DRaFTAgent, {}), (DRaFTKAgent, {"K": 3}),
                                     ("seiko", {"truncation": "none"}), ("seiko", {})])
def test_gradient_checkpointing_changes_nothing_but_cost(cls, cfg):
    """checkpoint=True (recompute every model call in backward) and False give the same update to the last
    bit; 'auto' resolves to off on the vector tier and on for the image and SD backbones."""
    from types import SimpleNamespace

    from baselines._common import uses_checkpointing
    from baselines.seiko import SEIKOAgent

    cls = SEIKOAgent if cls == "seiko" else cls
    grads = {}
    for ck in (True, False):
        agent = ready_agent(cls, lambda: TinyEps(DIM, 3, seed=1), reward_fn, {**cfg, "checkpoint": ck}, num_steps=N)
        grads[ck] = capture_grads(agent)
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[True].items():
        assert torch.equal(g, grads[False][name]), name
    auto = lambda tier: uses_checkpointing(SimpleNamespace(cfg=SimpleNamespace(checkpoint="auto"),  # noqa: E731
                                                           task=SimpleNamespace(tier=tier)))
    assert [auto(t) for t in ("synthetic", "image", "sd")] == [False, True, True]

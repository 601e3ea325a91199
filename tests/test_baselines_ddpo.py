"""DDPO-IS / DDPO-SF math on tiny float64 models."""
from __future__ import annotations

import pytest
import torch

from fake_agents import PerStepEps, TinyEps, hand_ddim_mean, one_update, ready_agent
from baselines.ddpo import (DDPOAgent, DDPOSFAgent, normalise_advantages, ppo_loss, sf_loss,
                            step_log_probs)
from sqdf_bbo.diffusion import DDIMSchedule, sample_trajectory

N, DIM = 5, 2


def reward_fn(x):
    return -((x - 0.7) ** 2).sum(dim=1)


def _setup(seed=0, B=6):
    model = TinyEps(DIM, 3, seed=seed).requires_grad_(True)
    sched = DDIMSchedule.from_scheduler(model.scheduler, N, 1.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        traj = sample_trajectory(model, sched, torch.randn(B, DIM, generator=g, dtype=torch.float64), generator=g)
    steps = torch.stack([torch.randperm(N, generator=g)[:3] for _ in range(B)])
    return model, sched, traj, steps


def test_step_log_prob_equals_torch_normal():
    model, sched, traj, steps = _setup()
    lp = step_log_probs(model, sched, traj.latents, steps)
    B, T = steps.shape
    for b in range(B):
        for j in range(T):
            k = int(steps[b, j])
            x = traj.latents[b:b + 1, k]
            mu, s, tau = hand_ddim_mean(model.scheduler, N, k, x, model(x, torch.tensor([tau_of(model, k)])))
            ref = torch.distributions.Normal(mu, s).log_prob(traj.latents[b:b + 1, k + 1]).mean()
            torch.testing.assert_close(lp[b, j], ref, rtol=1e-12, atol=1e-12)


def tau_of(model, k):
    return (N - 1 - k) * (1000 // N) + model.scheduler.config.steps_offset


def test_ppo_ratio_one_and_gradients_equal_sf_at_theta_old():
    model, sched, traj, steps = _setup(seed=1)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.3, 0.0], dtype=torch.float64)
    with torch.no_grad():
        old = step_log_probs(model, sched, traj.latents, steps)
    lp = step_log_probs(model, sched, traj.latents, steps)
    loss, ratio, clipfrac = ppo_loss(lp, old, adv, 1e-4)
    assert torch.equal(ratio, torch.ones_like(ratio)) and clipfrac == 0
    # the clipped and unclipped surrogates agree at theta_old, value and gradient
    unclipped = (-adv[:, None] * ratio).mean()
    torch.testing.assert_close(loss, unclipped, rtol=0, atol=0)
    g_is = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    g_un = torch.autograd.grad(unclipped, list(model.parameters()), retain_graph=True)
    g_sf = torch.autograd.grad(sf_loss(lp, adv), list(model.parameters()))
    for a, b, c in zip(g_is, g_un, g_sf):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
    assert sum(float(a.abs().sum()) for a in g_is) > 0


@pytest.mark.parametrize("sign,shift,zero", [
    (1.0, 0.01, True),     # A > 0, rho > 1 + eps: clipped, no gradient
    (-1.0, -0.01, True),   # A < 0, rho < 1 - eps: clipped, no gradient
    (1.0, -0.01, False),   # A > 0, rho < 1 - eps: unclipped branch is the max, gradient flows
    (-1.0, 0.01, False),   # A < 0, rho > 1 + eps: unclipped branch is the max, gradient flows
])
def test_ppo_clipping_zeroes_gradient(sign, shift, zero):
    model, sched, traj, steps = _setup(seed=2)
    adv = torch.full((steps.shape[0],), sign, dtype=torch.float64)
    lp = step_log_probs(model, sched, traj.latents, steps)
    old = lp.detach() - shift  # rho = exp(shift)
    loss, ratio, clipfrac = ppo_loss(lp, old, adv, 1e-4)
    assert clipfrac == 1.0
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    total = sum(0.0 if g is None else float(g.abs().sum()) for g in grads)
    assert (total == 0.0) == zero, f"grad abs sum {total}"


def test_advantages():
    r = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
    a = normalise_advantages(r, clip_max=1.5)
    ref = (r - r.mean()) / (r.std() + 1e-8)
    torch.testing.assert_close(a, ref.clamp(-1.5, 1.5))
    with pytest.raises(ValueError, match="rewards"):
        normalise_advantages(torch.zeros(1))
    with pytest.raises(ValueError, match="adv_clip_max"):
        normalise_advantages(r, clip_max=0)


def test_per_prompt_tracker_by_hand():
    """Worked example (buffer 3, min_count 2), numbers computed by hand."""
    from baselines.ddpo import PerPromptStatTracker

    tr = PerPromptStatTracker(buffer_size=3, min_count=2)
    # batch 1: 'a' has 2 rewards (>= min_count): mean 2, population std 1; 'b' has 1: batch mean 3,
    # batch population std sqrt(8/3)
    a1 = tr.update(["a", "b", "a"], torch.tensor([1.0, 5.0, 3.0]))
    s = (8 / 3) ** 0.5 + 1e-6
    torch.testing.assert_close(a1, torch.tensor([-1 / (1 + 1e-6), 2 / s, 1 / (1 + 1e-6)], dtype=torch.float64))
    # batch 2: FIFO 'a' = [1, 3, 7] (mean 11/3, std sqrt(56/9)); FIFO 'b' = [5, 9]: mean 7, std 2
    a2 = tr.update(["a", "b"], torch.tensor([7.0, 9.0]))
    sa = (56 / 9) ** 0.5 + 1e-6
    torch.testing.assert_close(a2, torch.tensor([(7 - 11 / 3) / sa, 2 / (2 + 1e-6)], dtype=torch.float64))
    # batch 3: 'a' FIFO keeps the last 3: [3, 7, 2] -> mean 4, std sqrt(14/3)
    a3 = tr.update(["a"], torch.tensor([2.0]))
    torch.testing.assert_close(a3, torch.tensor([(2 - 4) / ((14 / 3) ** 0.5 + 1e-6)], dtype=torch.float64))
    assert tr.history == {"a": [3.0, 7.0, 2.0], "b": [5.0, 9.0]}
    with pytest.raises(ValueError, match="prompts for"):
        tr.update(["a"], torch.tensor([1.0, 2.0]))


def test_agent_uses_tracker_only_for_prompts():
    """Prompt lists go through the tracker (then clipped), unconditional batches through the batch version."""
    agent = DDPOAgent.__new__(DDPOAgent)
    agent.cfg = DDPOAgent.Settings(adv_clip_max=1.0)
    r = torch.tensor([0.0, 10.0, 1.0, 2.0])
    torch.testing.assert_close(agent.advantages(r, None), normalise_advantages(r.double(), 1.0).float())
    adv = agent.advantages(r, ["x", "x", "y", "y"])
    # fewer than 16 values per prompt -> batch statistics (mean 3.25, population std), then clipped
    m, sd = r.mean(), r.std(unbiased=False) + 1e-6
    by_hand = ((r - m) / sd).clamp(-1, 1)
    torch.testing.assert_close(adv, by_hand)
    assert set(agent.stat_tracker.history) == {"x", "y"}


def test_sf_gradient_matches_pathwise_gradient():
    """1-D chain, r(x) = x_N: the Monte-Carlo score-function gradient (DDPO-SF's estimator, per-step
    log-probs from step_log_probs) matches the pathwise derivative of E[x_N] within 4 standard errors.
    Checked for the per-step biases of the first three steps (s_k >= 0.28); the last two
    steps have s_k < 0.01, where the score-function variance ~ 1/s_k² is too large for any test."""
    sched0 = DDIMSchedule.from_scheduler(TinyEps().scheduler, N, 1.0)
    model = PerStepEps(sched0.timesteps, dim=1, seed=3).requires_grad_(True)
    sched = DDIMSchedule.from_scheduler(model.scheduler, N, 1.0)
    g = torch.Generator().manual_seed(3)
    B = 100_000
    with torch.no_grad():
        traj = sample_trajectory(model, sched, torch.randn(B, 1, generator=g, dtype=torch.float64), generator=g)
    r = traj.final[:, 0]
    adv = r - r.mean()
    steps = torch.arange(N).repeat(B, 1)
    chunks = []
    for idx in torch.arange(B).chunk(20):
        lp = step_log_probs(model, sched, traj.latents[idx], steps[idx])  # (b, N); D = 1
        (gb,) = torch.autograd.grad((adv[idx, None] * lp).sum(1).mean(), [model.bias])
        chunks.append(gb[:3, 0])
    chunks = torch.stack(chunks)
    g_sf, se = chunks.mean(0), chunks.std(0) / 20**0.5
    xN = sample_trajectory(model, sched, traj.latents[:, 0], noises=traj.noises, grad=True).final[:, 0]
    (gb,) = torch.autograd.grad(xN.mean(), [model.bias])
    g_pw = gb[:3, 0]
    assert ((g_sf - g_pw).abs() < 4 * se).all(), f"SF {g_sf.tolist()} ± {se.tolist()} vs pathwise {g_pw.tolist()}"
    assert (se < 0.1 * g_pw.abs()).all(), f"Monte-Carlo error {se.tolist()} too large vs {g_pw.tolist()}"


def test_agent_first_minibatch_unclipped_and_updates():
    for cls in (DDPOAgent, DDPOSFAgent):
        agent = ready_agent(cls, lambda: TinyEps(DIM, 3, seed=4), reward_fn,
                            {"train_batch": 8, "timestep_fraction": 0.6, **({"ppo_minibatch": 4} if cls is DDPOAgent else {})},
                            num_steps=N)
        assert agent.train_steps == 3
        before = [p.detach().clone() for p in agent.policy.parameters()]
        stats = one_update(agent)
        if cls is DDPOAgent:
            assert stats["first_clipfrac"] == 0.0
            assert stats["opt_steps"] == 2.0
        else:
            assert stats["opt_steps"] == 1.0
        after = list(agent.policy.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_ddpo_is_improves_tiny_problem():
    agent = ready_agent(DDPOAgent, lambda: TinyEps(DIM, 3, seed=5), reward_fn,
                        {"train_batch": 16, "ppo_minibatch": 8, "clip_range": 0.2, "lr": 3e-2,
                         "num_inner_epochs": 2}, num_steps=N)
    g = torch.Generator().manual_seed(0)
    before = reward_fn(agent.sample(1024, g).final).mean()
    for _ in range(40):
        one_update(agent)
    g = torch.Generator().manual_seed(0)
    after = reward_fn(agent.sample(1024, g).final).mean()
    assert after > before + 0.1, f"reward {before:.3f} -> {after:.3f}"


def test_bad_settings_raise():
    mk = lambda: TinyEps(DIM, 3)  # noqa: E731
    with pytest.raises(ValueError, match="eta"):
        ready_agent(DDPOAgent, mk, reward_fn, {"eta": 0.0}, num_steps=N)
    with pytest.raises(ValueError, match="timestep_fraction"):
        ready_agent(DDPOAgent, mk, reward_fn, {"timestep_fraction": 0.0}, num_steps=N)
    with pytest.raises(ValueError, match="num_inner_epochs"):
        ready_agent(DDPOSFAgent, mk, reward_fn, {"num_inner_epochs": 2}, num_steps=N)
    with pytest.raises(ValueError, match="unknown setting"):
        ready_agent(DDPOSFAgent, mk, reward_fn, {"clip_range": 0.1}, num_steps=N)

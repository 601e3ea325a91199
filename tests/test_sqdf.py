"""SQDF math against independent computations and the decisive Gaussian/linear-reward
test: fine-tuning reaches the KL-regularised optimum p* ∝ p_ref exp(r/α) in closed form."""

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from sqdf_bbo.agents import resolve_method
from sqdf_bbo.agents.sqdf import SQDFAgent, ddim_n_predict, kl_tilde
from sqdf_bbo.backbones.base import Backbone, default_scheduler
from sqdf_bbo.backbones.mlp import MLPDenoiser
from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.tasks import make_task
from sqdf_bbo.tasks.base import TaskInfo

torch.set_num_threads(1)


def sd15_scheduler():
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# ---- KL scale ----------------------------------------------------------------------------------------
def test_kl_tilde_is_2_over_D_times_exact_kl():
    g = torch.Generator().manual_seed(0)
    mp, mq = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    s = torch.rand(5, 1, 1, 1, generator=g) + 0.1
    D = 4 * 3 * 3
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mp, s.expand_as(mp)),
                                              torch.distributions.Normal(mq, s.expand_as(mq))).sum((1, 2, 3))
    torch.testing.assert_close(kl_tilde(mp, mq, s, "exact"), exact)
    torch.testing.assert_close(kl_tilde(mp, mq, s, "mean_no_half"), 2.0 / D * exact)
    with pytest.raises(ValueError, match="kl_reduction"):
        kl_tilde(mp, mq, s, "sum")


@pytest.mark.parametrize("tau,want", [(981, 0.262709), (961, 0.254400), (501, 0.142268), (481, 0.141139),
                                      (21, 10.724235), (1, 1.006388)])
def test_sd15_fixture_c_over_s_squared(tau, want):
    sch = DDIMSchedule.from_scheduler(sd15_scheduler(), 50, eta=1.0)
    k = int((sch.timesteps == tau).nonzero())
    ratio = float((sch.coef_eps[k] / sch.std[k]) ** 2)
    assert ratio == pytest.approx(want, rel=1e-4)  # 1.006388 at tau=1 is 4.5e-5 above float32/64 values
    # KL~ from a noise-prediction gap = (C/s)^2 * mean(d_eps^2)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    e1, e2 = torch.randn(2, *x.shape, generator=g, dtype=torch.float64)
    got = kl_tilde(sch.mean(x, e1, k), sch.mean(x, e2, k), sch.step_std(k, x))
    torch.testing.assert_close(got, ratio * ((e1 - e2) ** 2).mean((1, 2, 3)))


# ---- a tiny agent ----------------------------------------------------------------------------------------
class ExactRewardSQDF(SQDFAgent):
    """SQDF with a known differentiable reward instead of the fitted proxy (for math tests)."""

    reward_fn = None

    def refit_proxy(self):
        return {}

    def reward(self, z):
        return type(self).reward_fn(z)


def tiny_info(dim=2, width=16, dtype=torch.float64, seed=0):
    def make():
        torch.manual_seed(seed)
        m = MLPDenoiser(dim, -torch.ones(dim), torch.ones(dim), width=width, depth=1, temb_dim=8)
        return m.to(dtype)

    return TaskInfo(name="tiny", tier="test", design_shape=(dim,), make_backbone=make, features=lambda x: x,
                    feature_dim=dim)


def make_agent(cls=ExactRewardSQDF, reward_fn=None, info=None, **cfg):
    cls.reward_fn = staticmethod(reward_fn or (lambda z: -((z - 0.3) ** 2).sum(-1)))
    base = {"num_steps": 10, "buffer": "none", "train_batch": 8}
    base.update(cfg)
    return cls(info or tiny_info(), base, seed=0)


def test_fallback_to_tweedie_is_recorded():
    ag = make_agent(q_estimator="cm")
    assert ag.q_estimator_used == "tweedie" and "no consistency model" in ag.q_fallback_reason


def test_kl_and_its_gradient_vanish_at_reference():
    ag = make_agent(alpha=1.0, gamma=0.9, lora_rank=4)
    ag.reward_fn = staticmethod(lambda z: 0.0 * z.sum(-1))
    type(ag).reward_fn = ag.reward_fn
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 2, generator=g, dtype=torch.float64)
    k = torch.randint(0, 10, (16,), generator=g)
    loss, info = ag.sqdf_loss(z, k)
    assert info["kl_tilde"] == 0.0 and float(loss.detach()) == 0.0
    loss.backward()
    grads = [p.grad for p in ag.trainable_parameters()]
    assert all(gr is not None for gr in grads)
    assert max(float(gr.abs().max()) for gr in grads) == 0.0
    # and away from the reference the KL term is positive with non-zero gradient
    for p in ag.trainable_parameters():
        p.data.add_(0.1)
    loss, info = ag.sqdf_loss(z, k)
    loss.backward()
    assert info["kl_tilde"] > 0 and max(float(p.grad.abs().max()) for p in ag.trainable_parameters()) > 0


def test_gamma1_alpha0_last_step_equals_draft1_gradient():
    target = torch.tensor([0.4, -0.2], dtype=torch.float64)
    rf = lambda z: -((z - target) ** 2).sum(-1)  # noqa: E731
    ag = make_agent(reward_fn=rf, alpha=0.0, gamma=1.0, lora_rank=0, num_steps=10)
    with torch.no_grad():
        for p in ag.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    g = torch.Generator().manual_seed(2)
    z = torch.randn(6, 2, generator=g, dtype=torch.float64)
    xi = torch.randn(6, 2, generator=g, dtype=torch.float64)
    k = torch.full((6,), 9)
    loss, _ = ag.sqdf_loss(z, k, noise=xi)
    ours = torch.autograd.grad(loss, ag.trainable_parameters())
    # DRaFT-1 independently, in float64 from alphas_cumprod and the DDPM-posterior form of the last step:
    # z_N = sqrt(a')·x̂ + sqrt(1 - a' - s²)·ε̂ + s·ξ, x̂ = (z - sqrt(1-a) ε̂)/sqrt(a), a' = ᾱ_0 (no alpha-to-one)
    acp = ag.reference.scheduler.alphas_cumprod.double()
    tau = 1000 // 10 * 0 + 1  # last DDIM timestep of the 10-step grid with steps_offset=1
    a, a_prev = acp[tau], acp[0]
    s = torch.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    eps = ag.policy(z, torch.full((6,), tau))
    x0 = (z - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    zN = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - s**2) * eps + s * xi
    draft = torch.autograd.grad(-rf(zN).mean(), ag.trainable_parameters())
    for a, b in zip(ours, draft):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("q_estimator,kl_reduction", [("tweedie", "mean_no_half"), ("ddim_n", "exact")])
def test_loss_gradient_matches_finite_differences(q_estimator, kl_reduction):
    rf = lambda z: torch.sin(2 * z[:, 0]) - (z[:, 1] - 0.2) ** 2  # noqa: E731
    ag = make_agent(reward_fn=rf, alpha=0.7, gamma=0.9, lora_rank=0, q_estimator=q_estimator,
                    kl_reduction=kl_reduction, ddim_n_steps=3)
    params = ag.trainable_parameters()
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1), dtype=p.dtype))
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 2, generator=g, dtype=torch.float64)
    xi = torch.randn(7, 2, generator=g, dtype=torch.float64)
    k = torch.tensor([0, 2, 5, 7, 8, 9, 9])
    loss, _ = ag.sqdf_loss(z, k, noise=xi)
    grads = torch.autograd.grad(loss, params)
    h = 1e-6
    checked = 0
    for p, gr in zip(params, grads):
        flat = p.data.view(-1)
        for i in torch.randperm(flat.numel(), generator=g)[:3].tolist():
            old = float(flat[i])
            flat[i] = old + h
            lp, _ = ag.sqdf_loss(z, k, noise=xi)
            flat[i] = old - h
            lm, _ = ag.sqdf_loss(z, k, noise=xi)
            flat[i] = old
            fd = (float(lp) - float(lm)) / (2 * h)
            assert float(gr.view(-1)[i]) == pytest.approx(fd, rel=1e-5, abs=1e-8)
            checked += 1
    assert checked >= 10


def test_gradients_reach_only_the_policy():
    ag = make_agent(lora_rank=4, alpha=0.5)
    z = torch.randn(8, 2, dtype=torch.float64)
    loss, _ = ag.sqdf_loss(z, torch.arange(8) % 10)
    loss.backward()
    assert all(p.grad is None for p in ag.reference.parameters())
    assert all(p.grad is None for n, p in ag.policy.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None for n, p in ag.policy.named_parameters() if "lora_" in n)


def test_ddim_n_with_all_steps_equals_full_deterministic_ddim():
    ag = make_agent(num_steps=10)
    sched = DDIMScheduler.from_config(ag.reference.scheduler.config)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, generator=g, dtype=torch.float64)
    start = torch.tensor([2, 2, 2])
    got = ddim_n_predict(ag.reference, ag.schedule, x, start, n_steps=8)
    y = x.clone()
    with torch.no_grad():
        for tau in sched.timesteps[2:]:
            y = sched.step(ag.reference(y, tau.repeat(3)), int(tau), y, eta=0.0).prev_sample
    torch.testing.assert_close(got.detach(), y)


@pytest.mark.parametrize("bad", [{"q_estimator": "lcm"}, {"kl_reduction": "sum"}, {"buffer": "fifo"},
                                 {"gamma": 0.0}, {"train_batch": 0}, {"kl_reference": "ema"}])
def test_bad_settings_are_named(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        make_agent(**bad)


# ---- the decisive test: Gaussian prior, linear reward, closed-form optimum ---------------------------
class GaussianPriorDenoiser(Backbone):
    """Exact ε* for data N(m, Σ) plus a learnable per-step correction (s_k/C_k)(u_k + W_k x), zero at init.

    The (s_k/C_k) factor only preconditions the parameters: it makes the policy-mean shift s_k(u_k + W_k x)."""

    def __init__(self, mean, cov, num_steps):
        super().__init__()
        d = mean.shape[0]
        self.latent_shape = (d,)
        self.scheduler = default_scheduler()
        self.register_buffer("m", mean.double())
        self.register_buffer("S", cov.double())
        self.register_buffer("acp", self.scheduler.alphas_cumprod.double())
        sch = DDIMSchedule.from_scheduler(self.scheduler, num_steps, 1.0)
        scale = torch.zeros(1000, dtype=torch.float64)
        scale[sch.timesteps] = sch.std / sch.coef_eps
        self.register_buffer("scale", scale)
        self.u = nn.Parameter(torch.zeros(1000, d, dtype=torch.float64))
        self.W = nn.Parameter(torch.zeros(1000, d, d, dtype=torch.float64))

    def exact_eps(self, x, t):
        a = self.acp[t][:, None]
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        M = a[:, :, None] * self.S + (1 - a)[:, :, None] * eye
        return torch.sqrt(1 - a) * torch.linalg.solve(M, (x - torch.sqrt(a) * self.m)[..., None])[..., 0]

    def forward(self, x, t, cond=None):
        t = torch.as_tensor(t).long()
        corr = self.u[t] + (self.W[t] @ x[..., None])[..., 0]
        return self.exact_eps(x, t) + self.scale[t][:, None] * corr


def chain_moments(model, sch):
    """Exact mean/cov of z_N for the linear-Gaussian chain z_{k+1} = G_k z + h_k + s_k ξ (z_0 ~ N(0, I))."""
    d = model.m.shape[0]
    mean, cov = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    with torch.no_grad():
        for k in range(sch.num_steps):
            t = sch.timesteps[k].reshape(1)
            h_eps = model(torch.zeros(1, d, dtype=torch.float64), t)[0]
            J = torch.stack([model(eye[i:i + 1], t)[0] - h_eps for i in range(d)], dim=1)  # d eps / d x
            G = sch.coef_x[k] * eye + sch.coef_eps[k] * J
            h = sch.coef_eps[k] * h_eps
            mean, cov = G @ mean + h, G @ cov @ G.T + sch.std[k] ** 2 * eye
    return mean, cov


def test_gaussian_prior_linear_reward_reaches_closed_form_optimum():
    """p_ref = the exact-ε* DDIM(η=1) chain for N(m, Σ); r(x) = cᵀx; α = 0.5. The KL-regularised optimum's
    terminal law is N(m_ref + S_ref c/α, S_ref) with (m_ref, S_ref) the reference chain's exact terminal
    moments. SQDF (γ=1, exact reward, kl_reduction=exact, Tweedie Q̂) must match it: mean within 0.03
    (shift norm 0.77), covariance within 0.02 (max abs entry), both from the exact moments of the
    fine-tuned linear chain, and a 20k-sample mean within 0.04."""
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    S = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    c = torch.tensor([1.0, 1.0], dtype=torch.float64)
    alpha, N = 0.5, 20
    info = TaskInfo(name="gauss2d", tier="test", design_shape=(2,),
                    make_backbone=lambda: GaussianPriorDenoiser(m, S, N), features=lambda x: x, feature_dim=2)
    ag = make_agent(reward_fn=lambda z: z @ c, info=info, num_steps=N, alpha=alpha, gamma=1.0,
                    kl_reduction="exact", q_estimator="tweedie", lora_rank=0, lr=0.03, weight_decay=0.0,
                    max_grad_norm=1e9, buffer="none", train_batch=256, updates_per_round=250, fill_every=5)
    m_ref, S_ref = chain_moments(ag.reference, ag.schedule)
    m_star, S_star = m_ref + S_ref @ c / alpha, S_ref
    assert float(torch.linalg.norm(S_ref @ c / alpha)) > 0.7  # a large, checkable shift (0.77)
    ag.improve()
    m_ft, S_ft = chain_moments(ag.policy, ag.schedule)
    assert float((m_ft - m_star).abs().max()) < 0.03, (m_ft, m_star)
    assert float((S_ft - S_star).abs().max()) < 0.02, (S_ft, S_star)
    with torch.no_grad():
        zs = torch.cat([tr.final for tr in ag.sample_batched(20_000, torch.Generator().manual_seed(9))])
    assert float((zs.mean(0) - m_star).abs().max()) < 0.04
    assert float((torch.cov(zs.T) - S_star).abs().max()) < 0.04


def test_cli_run_records_ablation_flags(tmp_path):
    """A tiny end-to-end run through the real runner; the ablation flags land in config.json."""
    import json

    from sqdf_bbo.run import main

    rc = main(["--task", "ackley", "--method", "sqdf", "--budget", "40", "--out", str(tmp_path), "--no-progress",
               "--set", "gamma=1", "--set", "q_estimator=tweedie", "--set", "buffer=none",
               "--set", "updates_per_round=2", "--set", "proxy_epochs=2", "--set", "train_batch=4",
               "--set", "num_steps=10", "--set", "run.n_eval=8", "--set", "run.rounds=2",
               "--set", "run.batch_size=8"])
    assert rc == 0
    run_dir = tmp_path / "ackley__sqdf__b40__s0"
    cfg = json.loads((run_dir / "config.json").read_text())["agent"]
    assert (cfg["gamma"], cfg["q_estimator"], cfg["buffer"]) == (1, "tweedie", "none")
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 3 and rounds[-1]["train"]["q_estimator_used"] == "tweedie"
    assert rounds[-1]["path_kl"] > 0


@pytest.mark.parametrize("task_name", ["levy", "aesthetic"])
def test_the_reused_merged_sampling_copy_equals_a_fresh_merge(task_name):
    """sampling_policy() refreshes one plain merged copy in place; after each change of the LoRA weights its
    weights and outputs equal those of a fresh deep copy merged by peft, bit for bit (MLP and UNet convs)."""
    import copy as copy_module

    task = make_task(task_name)
    agent = resolve_method("sqdf")(task.info, {}, 0)
    g = torch.Generator().manual_seed(0)
    first = agent.sampling_policy()
    for _ in range(2):
        for p in agent.trainable_parameters():  # as an optimizer step would
            p.data.add_(0.05 * torch.randn(p.shape, generator=g))
        fresh = copy_module.deepcopy(agent.policy)
        for m in fresh.modules():
            if hasattr(m, "merge") and hasattr(m, "lora_A"):
                m.merge()
        merged = agent.sampling_policy()
        assert merged is first and not any(p.requires_grad for p in merged.parameters())
        assert not any(hasattr(m, "lora_A") for m in merged.modules())  # plain layers, no LoRA wrappers
        a = merged.state_dict()
        b = {k.replace(".base_layer.", "."): v for k, v in fresh.state_dict().items() if ".lora_" not in k}
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        x = torch.randn(3, *agent.reference.latent_shape, generator=g)
        t = torch.tensor([3, 400, 900])
        with torch.no_grad():
            assert torch.equal(merged(x, t), fresh.eval()(x, t))
    assert "_sampling_copy" not in agent.state_tree()

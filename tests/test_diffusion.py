"""Denoising-MDP math (sqdf_bbo/diffusion/ddim.py) against diffusers, torch.distributions, spec fixtures,
finite differences and Monte Carlo."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from sqdf_bbo.diffusion import DDIMSchedule, gaussian_kl, log_prob, path_kl, sample_trajectory

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
            steps_offset=1, clip_sample=False)
# diffusers' defaults except clip_sample: set_alpha_to_one=True, steps_offset=0 (last step has std 0)
COSINE = dict(beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _sched(cfg):
    return DDIMScheduler(**cfg)


# ---- one step vs diffusers ------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [SD15, COSINE], ids=["sd15", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n_steps", [10, 50])
def test_step_matches_diffusers(cfg, eta, n_steps):
    sch = DDIMSchedule.from_scheduler(_sched(cfg), n_steps, eta=eta)
    ref = _sched(cfg)
    ref.set_timesteps(n_steps)
    assert torch.equal(sch.timesteps, ref.timesteps.long())
    g = torch.Generator().manual_seed(n_steps)
    worst = 0.0
    for k, t in enumerate(ref.timesteps):
        x = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
        eps = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
        xi = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
        expected = ref.step(eps, t, x, eta=eta, variance_noise=xi).prev_sample
        got = sch.mean(x, eps, k) + sch.step_std(k, x) * xi
        x_next, mu, s = sch.step(x, eps, k, xi)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_next, got, rtol=0, atol=0)
        worst = max(worst, float((got - expected).abs().max()))
        if eta == 0:
            assert float(s) == 0.0
    assert worst < 1e-5


def test_per_sample_step_indices_match_diffusers():
    """k as a (B,) tensor: each sample uses its own step (used by SQDF's random-step training)."""
    n = 20
    sch = DDIMSchedule.from_scheduler(_sched(SD15), n, eta=1.0)
    ref = _sched(SD15)
    ref.set_timesteps(n)
    g = torch.Generator().manual_seed(1)
    k = torch.tensor([0, 7, 19, 3])
    x, eps, xi = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    got = sch.mean(x, eps, k) + sch.step_std(k, x) * xi
    for b in range(4):
        t = ref.timesteps[k[b]]
        exp = ref.step(eps[b : b + 1], t, x[b : b + 1], eta=1.0, variance_noise=xi[b : b + 1]).prev_sample
        torch.testing.assert_close(got[b : b + 1], exp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sch.timestep_batch(k, 4), ref.timesteps[k].long())


def test_eta_out_of_range_and_bad_steps_rejected():
    with pytest.raises(ValueError, match="eta must be in \\[0, 1\\], got 1.5"):
        DDIMSchedule.from_scheduler(_sched(SD15), 10, eta=1.5)
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        DDIMSchedule.from_scheduler(_sched(SD15), 0)


# ---- spec fixtures ---------------------------------------------------------------------------------
def test_sd15_fixtures_from_spec():
    """Stable Diffusion 1.5's schedule (scaled-linear betas 0.00085..0.012, 1000 steps) at N=50, eta=1: DDIM
    coefficients computed by hand in float64 (docs/methods/sqdf.md gives the formulas)."""
    sch = DDIMSchedule.from_scheduler(_sched(SD15), 50, eta=1.0)
    assert sch.timesteps[:3].tolist() == [981, 961, 941] and sch.timesteps[-1] == 1
    k = {int(t): i for i, t in enumerate(sch.timesteps)}
    fx = {  # tau: (a, a_prev, s, A, C) with None where no value was computed
        981: (0.005776, 0.007282, 0.454463, 1.122852, -0.232936),
        501: (None, None, 0.294785, None, -0.111188),
        1: (0.998296, 0.999150, 0.020648, None, -0.020714),
    }
    for tau, vals in fx.items():
        got = (sch.alpha, sch.alpha_prev, sch.std, sch.coef_x, sch.coef_eps)
        for name, table, v in zip(("a", "a_prev", "s", "A", "C"), got, vals):
            if v is not None:
                assert float(table[k[tau]]) == pytest.approx(v, abs=1e-5), (tau, name)
    # (C/s)^2, the soft-Q target's weight. The hand values computed alphas_cumprod in float64 from the betas; diffusers
    # stores them in float32, which moves (C/s)^2 by up to 4.5e-5 relative at tau=1 (cancellation in C).
    ratio = {981: 0.262709, 961: 0.254400, 501: 0.142268, 481: 0.141139, 21: 10.724235, 1: 1.006388}
    for tau, v in ratio.items():
        assert float((sch.coef_eps[k[tau]] / sch.std[k[tau]]) ** 2) == pytest.approx(v, rel=1e-4), tau
    # ... and the same formulas on float64 alphas_cumprod reproduce the hand values to 1e-6
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    acp = torch.cumprod(1 - betas, 0)
    for tau, v in ratio.items():
        a, ap = acp[tau], acp[tau - 20] if tau >= 20 else acp[0]
        s = torch.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        c = torch.sqrt(1 - ap - s**2) - torch.sqrt(ap * (1 - a) / a)
        assert float((c / s) ** 2) == pytest.approx(v, abs=1e-6), tau
        assert float(a) == pytest.approx(float(sch.alpha[k[tau]]), rel=1e-6)  # same schedule


def test_eta1_mean_is_ddpm_posterior_mean():
    sch = DDIMSchedule.from_scheduler(_sched(SD15), 25, eta=1.0)
    g = torch.Generator().manual_seed(2)
    for k in (0, 12, 24):
        x, eps = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2))
        a, ap = sch.alpha[k], sch.alpha_prev[k]
        x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
        post = torch.sqrt(ap) * (1 - a / ap) / (1 - a) * x0 + torch.sqrt(a / ap) * (1 - ap) / (1 - a) * x
        torch.testing.assert_close(sch.mean(x, eps, k), post, rtol=1e-10, atol=1e-12)
        assert float(sch.std[k]) == pytest.approx(float(torch.sqrt((1 - ap) / (1 - a) * (1 - a / ap))), rel=1e-12)


# ---- densities -------------------------------------------------------------------------------------
def test_log_prob_equals_torch_normal():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    x = mean + 0.3 * torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    for std in (torch.tensor(0.3, dtype=torch.float64), torch.rand(6, 1, 1, generator=g, dtype=torch.float64) + 0.1):
        ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x)
        torch.testing.assert_close(log_prob(x, mean, std), ref.sum(dim=(1, 2)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_prob(x, mean, std, "mean"), ref.mean(dim=(1, 2)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        log_prob(x, mean, std, "max")
    # gradient flows through the mean only
    m = mean.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    log_prob(xg, m, torch.tensor(0.3, dtype=torch.float64)).sum().backward()
    assert xg.grad is None and m.grad is not None
    torch.testing.assert_close(m.grad, (x - mean) / 0.09)


def test_gaussian_kl_equals_torch_kl_and_monte_carlo():
    g = torch.Generator().manual_seed(4)
    mp = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mq = mp + 0.4 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    s = torch.tensor(0.7, dtype=torch.float64)
    kl = gaussian_kl(mp, mq, s)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mp, s), torch.distributions.Normal(mq, s))
    torch.testing.assert_close(kl, ref.sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gaussian_kl(mp, mq, s, "mean"), ref.mean(1), rtol=1e-12, atol=1e-14)
    # Monte Carlo E_p[log p - log q] with x ~ p, for each of the 3 pairs
    M = 20000
    x = mp[:, None] + s * torch.randn(3, M, 5, generator=g, dtype=torch.float64)
    for b in range(3):
        xb = x[b]
        lr = log_prob(xb, mp[b].expand_as(xb), s) - log_prob(xb, mq[b].expand_as(xb), s)
        est, se = float(lr.mean()), float(lr.std() / M**0.5)
        assert abs(est - float(kl[b])) < 4 * se, (b, est, float(kl[b]), se)
        assert float(kl[b]) > 10 * se  # the check has power: KL is far from 0 on this scale


def test_predict_x0_inverts_add_noise():
    for cfg in (SD15, COSINE):
        sch = DDIMSchedule.from_scheduler(_sched(cfg), 20, eta=1.0)
        ref = _sched(cfg)
        g = torch.Generator().manual_seed(5)
        x0 = torch.randn(20, 3, generator=g, dtype=torch.float64)
        eps = torch.randn(20, 3, generator=g, dtype=torch.float64)
        k = torch.arange(20)
        xt = ref.add_noise(x0, eps, sch.timesteps[k])
        torch.testing.assert_close(sch.predict_x0(xt, eps, k), x0, rtol=1e-9, atol=1e-9)
        for kk in (0, 19):
            torch.testing.assert_close(sch.predict_x0(xt[kk : kk + 1], eps[kk : kk + 1], kk), x0[kk : kk + 1],
                                       rtol=1e-9, atol=1e-9)


# ---- trajectories ---------------------------------------------------------------------------------
class TinyEps(torch.nn.Module):
    """eps(x, t) = tanh(W x + b * t/1000 + c), float64."""

    def __init__(self, d=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(0.5 * torch.randn(d, d, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.c = torch.nn.Parameter(0.1 * torch.randn(d, generator=g, dtype=torch.float64))
        self.calls = []

    def forward(self, x, t, cond=None):
        self.calls.append(t.clone())
        return torch.tanh(x @ self.W.T + self.b * (t.double()[:, None] / 1000) + self.c)


def _traj_setup(n=5, B=3, d=2, seed=6):
    sch = DDIMSchedule.from_scheduler(_sched(SD15), n, eta=1.0)
    g = torch.Generator().manual_seed(seed)
    x_init = torch.randn(B, d, generator=g, dtype=torch.float64)
    noises = torch.randn(B, n, d, generator=g, dtype=torch.float64)
    return sch, x_init, noises


def test_sample_trajectory_records_every_latent():
    sch, x_init, noises = _traj_setup()
    model = TinyEps()
    tr = sample_trajectory(model, sch, x_init, noises=noises, record_means=True)
    assert tr.latents.shape == (3, 6, 2) and tr.means.shape == (3, 5, 2)
    torch.testing.assert_close(tr.latents[:, 0], x_init, rtol=0, atol=0)
    assert [int(t[0]) for t in model.calls] == sch.timesteps.tolist()
    for k in range(5):
        eps = torch.tanh(tr.latents[:, k] @ model.W.T + model.b * sch.timesteps[k] / 1000 + model.c)
        mu = sch.mean(tr.latents[:, k], eps, k)
        torch.testing.assert_close(tr.means[:, k], mu)
        torch.testing.assert_close(tr.latents[:, k + 1], mu + sch.std[k] * noises[:, k])
    torch.testing.assert_close(tr.final, tr.latents[:, -1], rtol=0, atol=0)
    assert not tr.latents.requires_grad
    # drawn noise is reproducible from a generator
    a = sample_trajectory(model, sch, x_init, generator=torch.Generator().manual_seed(9))
    b = sample_trajectory(model, sch, x_init, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)


def _objective(model, sch, x_init, noises, **kw):
    tr = sample_trajectory(model, sch, x_init, noises=noises, grad=True, **kw)
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return (tr.final**2 @ w).sum() + tr.final.sum()


def test_trajectory_gradient_matches_finite_differences_and_checkpoint():
    sch, x_init, noises = _traj_setup()
    model = TinyEps()
    loss = _objective(model, sch, x_init, noises)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    h = 1e-6
    for p, gp in zip(model.parameters(), grads):
        fd = torch.zeros_like(p)
        with torch.no_grad():
            for i in range(p.numel()):
                orig = p.view(-1)[i].item()
                p.view(-1)[i] = orig + h
                up = _objective(model, sch, x_init, noises)
                p.view(-1)[i] = orig - h
                down = _objective(model, sch, x_init, noises)
                p.view(-1)[i] = orig
                fd.view(-1)[i] = (up - down) / (2 * h)
        torch.testing.assert_close(gp, fd, rtol=1e-6, atol=1e-7)
        assert gp.abs().max() > 1e-3  # non-trivial gradient
    loss_ck = _objective(model, sch, x_init, noises, checkpoint=True)
    grads_ck = torch.autograd.grad(loss_ck, list(model.parameters()))
    for a, b in zip(grads, grads_ck):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class LinearEps:
    """eps(x, t) = x W^T + c * t/1000 (no grad needed)."""

    def __init__(self, W, c):
        self.W, self.c = W, c

    def __call__(self, x, t, cond=None):
        return x @ self.W.T + self.c * (t.double()[:, None] / 1000)


def test_path_kl_equals_monte_carlo_log_ratio():
    n, B, d = 8, 4000, 2
    sch = DDIMSchedule.from_scheduler(_sched(SD15), n, eta=1.0)
    g = torch.Generator().manual_seed(7)
    pol = LinearEps(0.3 * torch.randn(d, d, generator=g, dtype=torch.float64), torch.tensor([0.2, -0.1], dtype=torch.float64))
    ref = LinearEps(0.3 * torch.randn(d, d, generator=g, dtype=torch.float64), torch.tensor([0.0, 0.1], dtype=torch.float64))
    tr = sample_trajectory(pol, sch, torch.randn(B, d, generator=g, dtype=torch.float64), generator=g)
    kl = path_kl(pol, ref, sch, tr)
    assert kl.shape == (B,) and kl.dtype == torch.float64
    lr = torch.zeros(B, dtype=torch.float64)
    for k in range(n):
        x, x1 = tr.latents[:, k], tr.latents[:, k + 1]
        t = sch.timestep_batch(k, B)
        s = sch.step_std(k, x)
        lr += log_prob(x1, sch.mean(x, pol(x, t), k), s) - log_prob(x1, sch.mean(x, ref(x, t), k), s)
    diff = lr - kl  # zero-mean martingale noise
    se = float(diff.std() / B**0.5)
    assert abs(float(diff.mean())) < 4 * se, (float(lr.mean()), float(kl.mean()), se)
    assert float(kl.mean()) > 20 * se  # a KL off by a factor (e.g. a missing 1/2) would fail
    assert float(lr.std() / B**0.5) > 0
    # identical policies: zero KL
    assert float(path_kl(pol, pol, sch, tr).abs().max()) == 0.0


def test_path_kl_with_recorded_means_equals_recomputed():
    sch, x_init, noises = _traj_setup(n=6, B=16, d=2, seed=8)
    pol, ref = TinyEps(seed=1), TinyEps(seed=2)
    with torch.no_grad():
        a = sample_trajectory(pol, sch, x_init, noises=noises, record_means=True)
        b = sample_trajectory(pol, sch, x_init, noises=noises)
    assert b.means is None and a.means is not None
    kl_a, kl_b = path_kl(pol, ref, sch, a), path_kl(pol, ref, sch, b)
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-12, atol=1e-14)
    assert float(kl_a.min()) > 0

"""Synthetic tier: BoTorch oracles, exact prior densities, -manifold validity, the pretrained MLP."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from sqdf_bbo.tasks import list_tasks, make_task
from sqdf_bbo.tasks.synthetic import FUNCTIONS, _make_function

BASES = list(FUNCTIONS)


def test_registry_has_six_functions_and_manifold_variants():
    names = list_tasks()
    for base in BASES:
        assert base in names and f"{base}-manifold" in names
    assert len(BASES) >= 6


def test_unknown_task_and_bad_override_list_what_is_allowed():
    with pytest.raises(ValueError, match="unknown task 'nope'.*ackley"):
        make_task("nope")
    with pytest.raises(ValueError, match="unknown override.*'dim'.*allowed: noise_std, num_steps"):
        make_task("ackley", dim=3)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0"):
        make_task("levy", noise_std=-1.0)


@pytest.mark.parametrize("base", BASES)
def test_oracle_is_negated_botorch_function(base):
    task = make_task(base)
    fn = _make_function(base)
    g = torch.Generator().manual_seed(0)
    x = task.lo + torch.rand((50, task.prior.dim), generator=g, dtype=torch.float64) * (task.hi - task.lo)
    np.testing.assert_allclose(task.evaluate_true(x), -fn.evaluate_true(x), rtol=1e-12)
    # maximisation: the known optimiser scores the optimal value and beats random designs
    if fn._optimizers:
        opt = torch.tensor(fn._optimizers[:1], dtype=torch.float64)
        assert task.evaluate_true(opt).item() == pytest.approx(task.optimal_value, abs=1e-4)
        assert (task.evaluate_true(x) <= task.optimal_value + 1e-9).all()


@pytest.mark.parametrize("base", ["ackley", "hartmann6"])
def test_prior_log_density_matches_scipy_mixture(base):
    task = make_task(base)
    g = torch.Generator().manual_seed(1)
    u = task.prior.sample(200, g)
    x = task.lo + (u + 1) / 2 * (task.hi - task.lo)
    d = task.prior.dim
    cov = task.prior.std**2 * np.eye(d)
    dens_u = np.mean([multivariate_normal(m.numpy(), cov).pdf(u.numpy()) for m in task.prior.means], axis=0)
    log_jac = np.log(2 / (task.hi - task.lo).numpy()).sum()
    np.testing.assert_allclose(task.log_density(x).numpy(), np.log(dens_u) + log_jac, rtol=1e-9, atol=1e-9)


def test_prior_is_not_centred_on_the_optimum():
    for base in BASES:
        task = make_task(base)
        fn = _make_function(base)
        if fn._optimizers:
            opt_u = task.to_u(torch.tensor(fn._optimizers[:1], dtype=torch.float64))
            assert torch.cdist(opt_u, task.prior.means.double()).min() >= 0.5


def test_manifold_variant_returns_worst_value_exactly_for_invalid_designs():
    plain, man = make_task("levy"), make_task("levy-manifold")
    g = torch.Generator().manual_seed(2)
    u = torch.cat([plain.prior.sample(500, g), torch.rand((200, 8), generator=g, dtype=torch.float64) * 2 - 1])
    x = plain.lo + (u + 1) / 2 * (plain.hi - plain.lo)
    invalid = plain.prior.log_prob(u) < man.logpdf_threshold
    assert 0 < invalid.sum() < len(u)
    y_plain, y_man = plain.evaluate_true(x), man.evaluate_true(x)
    assert torch.equal(y_man[~invalid], y_plain[~invalid])
    assert (y_man[invalid] == man.worst_value).all()
    # the threshold is the 1st percentile of prior samples: about 1% of fresh prior draws are invalid
    frac = man.invalid(plain.lo + (plain.prior.sample(20_000, g) + 1) / 2 * (plain.hi - plain.lo)).double().mean()
    assert 0.005 < frac < 0.015


def test_noise_std_is_a_tenth_of_the_prior_value_spread_and_overridable():
    task = make_task("rastrigin")
    g = torch.Generator().manual_seed(3)
    x = task.lo + (task.prior.sample(4000, g) + 1) / 2 * (task.hi - task.lo)
    assert task.noise_std == pytest.approx(0.1 * task.evaluate_true(x).std().item(), rel=0.1)
    assert make_task("rastrigin", noise_std=0.0).noise_std == 0.0


def _mmd2_rbf(a: torch.Tensor, b: torch.Tensor, h: float) -> float:
    k = lambda x, y: torch.exp(-torch.cdist(x, y) ** 2 / (2 * h * h))  # noqa: E731
    n, m = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - kaa.diag().sum()) / (n * (n - 1)) + (kbb.sum() - kbb.diag().sum()) / (m * (m - 1))
                 - 2 * k(a, b).mean())


@pytest.mark.parametrize("base", ["ackley", "hartmann6"])
def test_pretrained_mlp_samples_match_the_prior(base):
    """DDIM(eta=1, 50 steps) samples of the committed MLP vs exact prior samples.

    Tolerances: |mean error| < 0.06 and |cov error| < 0.05 per entry (normalised units; prior std
    0.15 per mode, 8 modes), each mode's weight within 0.05 of 1/8, and the RBF-MMD^2 to the prior
    below 5x the MMD^2 between two independent prior samples of the same size.
    """
    from sqdf_bbo.agents.pretrained import PretrainedAgent

    task = make_task(base)
    agent = PretrainedAgent(task.info, {}, 0)
    x = agent.propose(1500, torch.Generator().manual_seed(0)).double()
    u = task.to_u(x)
    ref = task.prior.sample(1500, torch.Generator().manual_seed(1))
    ref2 = task.prior.sample(1500, torch.Generator().manual_seed(2))
    assert (u.mean(0) - ref.mean(0)).abs().max() < 0.06
    assert (torch.cov(u.T) - torch.cov(ref.T)).abs().max() < 0.05
    weights = torch.bincount(torch.cdist(u, task.prior.means.double()).argmin(1), minlength=8) / len(u)
    assert (weights - 1 / 8).abs().max() < 0.05
    h = task.vendi_bandwidth
    assert _mmd2_rbf(u, ref, h) < 5 * abs(_mmd2_rbf(ref2, ref, h)) + 1e-4
    assert task.naturalness(x)["invalid_frac"] < 0.03


def test_schedule_with_a_zero_std_step_is_refused():
    from diffusers import DDIMScheduler

    from sqdf_bbo.diffusion import DDIMSchedule

    bad = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    with pytest.raises(ValueError, match=r"step 49 \(timestep 0\) has zero std with eta=1.0"):
        DDIMSchedule.from_scheduler(bad, 50, eta=1.0)
    assert DDIMSchedule.from_scheduler(bad, 50, eta=0.0).std.abs().max() == 0  # deterministic DDIM is fine

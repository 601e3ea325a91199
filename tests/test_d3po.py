"""D3PO (baselines/d3po.py): the per-step DPO loss against a hand computation from Gaussian densities, its
gradient against finite differences, the step log-probs against the DDIM density written out by hand, the
pair labels (the winner is the higher-reward member of two trajectories that share x_0), the soft-label
fixed point against its closed form (in β_code and on the common scale β_s = τβ_code/D), the mapping of
``beta`` onto the DPO temperature and the frontier rule, learning on the levy-manifold task, and a short
CLI run."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from fake_agents import TinyEps, hand_ddim_mean, ready_agent
from baselines.d3po import (OFFICIAL, D3POAgent, clamped_log_ratio, common_beta, d3po_step_losses,
                           dpo_temperature, preference, step_log_probs)
from sqdf_bbo.diffusion import DDIMSchedule, log_prob, sample_trajectory
from sqdf_bbo.tasks import make_task

N, DIM = 4, 2


class FirstCoordinate(torch.nn.Module):
    """A proxy r(x) = x[0] (raw units; the tests set offset 0 and scale 1)."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, 0]


def _logsig(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _gauss_mean_logpdf(x: list[float], mu: list[float], s: float) -> float:
    """(1/D) Σ_d log N(x_d; μ_d, s²), written out."""
    terms = [-((a - m) ** 2) / (2 * s * s) - math.log(s) - 0.5 * math.log(2 * math.pi) for a, m in zip(x, mu)]
    return sum(terms) / len(x)


def test_preference_labels_by_hand():
    ra = torch.tensor([1.0, -2.0, 0.5, 3.0])
    rb = torch.tensor([0.0, 1.0, 0.5, 2.0])
    assert preference(ra, rb).tolist() == [1.0, -1.0, 0.0, 1.0]  # a tie (third pair) gives 0
    soft = preference(ra, rb, "soft", 0.5)
    expect = [1 / (1 + math.exp(-(a - b) / 0.5)) for a, b in zip(ra.tolist(), rb.tolist())]
    assert soft.tolist() == pytest.approx(expect)
    with pytest.raises(ValueError, match="labels"):
        preference(ra, rb, "ranked")


def test_step_loss_equals_the_dpo_loss_computed_by_hand_from_gaussian_densities():
    """Two pairs, two steps, D = 3: each member's step log-densities under a "policy" and a "reference"
    mean, the clamped ratio and L_k = −log σ(β h [log ρ^a − log ρ^b]) computed with math, one entry
    clamped above, one below, and a tie (h = 0: L = log 2)."""
    s, beta, eps = 0.8, 0.7, 0.1
    x = [[[0.3, -0.2, 0.5], [1.0, 0.1, -0.4]], [[-0.6, 0.2, 0.0], [0.2, 0.2, 0.9]]]  # [pair/member][step][d]
    xb = [[[0.1, 0.4, -0.5], [0.0, -0.3, 0.6]], [[0.5, 0.5, -0.2], [-1.0, 0.3, 0.1]]]
    mu_pol = [[0.2, 0.0, 0.3], [1.0, 0.2, -0.4]]  # per step (the same state for simplicity)
    mu_ref = [[0.0, 0.1, 0.2], [0.5, 0.0, 0.0]]
    mu_pol_b = [[0.1, 0.3, -0.3], [0.1, -0.2, 0.5]]
    mu_ref_b = [[0.4, 0.3, -0.1], [-0.2, -0.4, 0.2]]

    def lp(xs, mus):
        return [[_gauss_mean_logpdf(xs[p][k], mus[k], s) for k in range(2)] for p in range(2)]

    lpa, lpa_ref, lpb, lpb_ref = lp(x, mu_pol), lp(x, mu_ref), lp(xb, mu_pol_b), lp(xb, mu_ref_b)
    h = [1.0, 0.0]
    expect = []
    for p in range(2):
        row = []
        for k in range(2):
            ra = min(max(math.exp(lpa[p][k] - lpa_ref[p][k]), 1 - eps), 1 + eps)
            rb = min(max(math.exp(lpb[p][k] - lpb_ref[p][k]), 1 - eps), 1 + eps)
            row.append(-_logsig(beta * h[p] * (math.log(ra) - math.log(rb))))
        expect.append(row)
    # the library: densities through sqdf_bbo.diffusion.log_prob, then the clamp and the loss
    T = torch.tensor
    std = T(s, dtype=torch.float64)
    lib = {}
    for name, xs, mus in (("a", x, mu_pol), ("a_ref", x, mu_ref), ("b", xb, mu_pol_b), ("b_ref", xb, mu_ref_b)):
        xt, mt = T(xs, dtype=torch.float64), T(mus, dtype=torch.float64)[None].expand(2, 2, 3)
        lib[name] = log_prob(xt.reshape(4, 3), mt.reshape(4, 3), std, reduction="mean").reshape(2, 2)
    ratios = (lib["a"] - lib["a_ref"]).exp()
    assert bool((ratios > 1 + eps).any()) and bool((ratios < 1 - eps).any())  # both clamp sides are exercised
    out = d3po_step_losses(clamped_log_ratio(lib["a"], lib["a_ref"], eps),
                           clamped_log_ratio(lib["b"], lib["b_ref"], eps), T(h), beta)
    torch.testing.assert_close(out, T(expect, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert out[1].tolist() == pytest.approx([math.log(2)] * 2)
    # soft labels: −p log σ(βΔ) − (1 − p) log σ(−βΔ), no clamp
    p = [0.8, 0.3]
    soft = d3po_step_losses(lib["a"] - lib["a_ref"], lib["b"] - lib["b_ref"], T(p, dtype=torch.float64), beta, "soft")
    for i in range(2):
        for k in range(2):
            d = beta * ((lpa[i][k] - lpa_ref[i][k]) - (lpb[i][k] - lpb_ref[i][k]))
            assert float(soft[i, k]) == pytest.approx(-p[i] * _logsig(d) - (1 - p[i]) * _logsig(-d), rel=1e-12)


def test_step_log_probs_equal_the_ddim_density_written_out():
    model = TinyEps(DIM, 3, seed=0)
    sched = DDIMSchedule.from_scheduler(model.scheduler, N, 1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        traj = sample_trajectory(model, sched, torch.randn(3, DIM, generator=g, dtype=torch.float64), generator=g)
        steps = torch.stack([torch.randperm(N, generator=g)[:2] for _ in range(3)])
        lp = step_log_probs(model, sched, traj.latents, steps)
    for b in range(3):
        for j in range(2):
            k = int(steps[b, j])
            x = traj.latents[b:b + 1, k]
            tau = (N - 1 - k) * (1000 // N) + model.scheduler.config.steps_offset
            with torch.no_grad():
                mu, s, _ = hand_ddim_mean(model.scheduler, N, k, x, model(x, torch.tensor([tau])))
            ref = torch.distributions.Normal(mu, s).log_prob(traj.latents[b:b + 1, k + 1]).mean()
            torch.testing.assert_close(lp[b, j], ref, rtol=1e-12, atol=1e-12)


def _pairs_and_models(seed: int = 0):
    policy = TinyEps(DIM, 3, seed=seed).requires_grad_(True)
    ref = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():  # a reference a little away from the policy, so the ratios are not 1
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 9), dtype=p.dtype))
    sched = DDIMSchedule.from_scheduler(policy.scheduler, N, 1.0)
    g = torch.Generator().manual_seed(seed)
    P = 3
    x0 = torch.randn(P, DIM, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lat = sample_trajectory(policy, sched, torch.cat([x0, x0]), generator=g).latents
    steps = torch.stack([torch.randperm(N, generator=g)[:3] for _ in range(P)])
    return policy, ref, sched, lat, steps, P


@pytest.mark.parametrize("ratio_clip", [None, 0.1])
def test_gradient_matches_finite_differences(ratio_clip):
    policy, ref, sched, lat, steps, P = _pairs_and_models()
    pref, beta = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), 0.9
    ks = torch.cat([steps, steps])

    def loss_fn():
        lp = step_log_probs(policy, sched, lat, ks)
        with torch.no_grad():
            lr0 = step_log_probs(ref, sched, lat, ks)
        lr = clamped_log_ratio(lp, lr0, ratio_clip)
        return d3po_step_losses(lr[:P], lr[P:], pref, beta).mean(), (lp - lr0).exp()

    loss, ratios = loss_fn()
    if ratio_clip is not None:  # some entries clamped, some not, none at a kink (finite differences defined there)
        r = ratios.detach()
        assert bool(((r - 1 - ratio_clip).abs() > 1e-3).all() and ((r - 1 + ratio_clip).abs() > 1e-3).all())
        inside = (r - 1).abs() < ratio_clip
        assert bool(inside.any()) and not bool(inside.all())
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    h = 1e-6
    for p, gr in zip(policy.parameters(), grads):
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = float(loss_fn()[0])
                p.view(-1)[i] -= 2 * h
                down = float(loss_fn()[0])
                p.view(-1)[i] += h
            assert float(gr.view(-1)[i]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_clamped_entries_carry_no_gradient():
    policy, ref, sched, lat, steps, P = _pairs_and_models(seed=1)
    ks = torch.cat([steps, steps])
    lp = step_log_probs(policy, sched, lat, ks)
    with torch.no_grad():
        lr0 = step_log_probs(ref, sched, lat, ks)
    shifted = lr0 - 1.0  # every ratio is e > 1 + ε: all clamped
    lr = clamped_log_ratio(lp, shifted, 0.1)
    loss = d3po_step_losses(lr[:P], lr[P:], torch.ones(P, dtype=torch.float64), 0.5).mean()
    assert float(loss.detach()) == pytest.approx(math.log(2))
    grads = torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)


def test_pairs_share_x0_and_the_winner_is_the_higher_reward_member():
    agent = ready_agent(D3POAgent, lambda: TinyEps(DIM, 3, seed=2), FirstCoordinate(),
                        {"train_batch": 16, "lora_rank": 0, "labels": "hard"}, num_steps=N)
    batch = agent.collect_pairs(8)
    lat, r, pref = batch["latents"], batch["reward"], batch["pref"]
    assert lat.shape == (16, N + 1, DIM)
    torch.testing.assert_close(lat[:8, 0], lat[8:, 0], rtol=0, atol=0)  # shared initial noise
    assert not torch.equal(lat[:8, -1], lat[8:, -1])  # different step noise
    torch.testing.assert_close(r, lat[:, -1, 0].double(), rtol=0, atol=0)  # r̂⁺ = x_N[0] here
    winners = torch.where(pref > 0, r[:8], r[8:])
    losers = torch.where(pref > 0, r[8:], r[:8])
    assert bool((winners > losers).all()) and set(pref.tolist()) <= {-1.0, 1.0}
    # the default soft labels: p = σ((r_a − r_b)/τ) on the same kind of pairs
    soft = ready_agent(D3POAgent, lambda: TinyEps(DIM, 3, seed=2), FirstCoordinate(),
                       {"train_batch": 16, "lora_rank": 0, "label_temperature": 0.5}, num_steps=N)
    sb = soft.collect_pairs(8)
    torch.testing.assert_close(sb["pref"], torch.sigmoid((sb["reward"][:8] - sb["reward"][8:]) / 0.5),
                               rtol=1e-12, atol=0)


def _soft_label_optimum(D: int, s: float, tau: float, dpo_beta: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ*, w): the mean shift μ of π_θ = N(μ, s² I_D) minimising the one-step soft-label D3PO loss (no clamp)
    against π_ref = N(0, s² I_D) on 256 pairs labelled by r = w·x (‖w‖ = 1), p = σ((r_a − r_b)/τ)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    w /= w.norm()
    a = s * torch.randn(256, D, generator=g, dtype=torch.float64)
    b = s * torch.randn(256, D, generator=g, dtype=torch.float64)
    p = preference(a @ w, b @ w, "soft", tau)
    mu = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    std = torch.tensor(s, dtype=torch.float64)
    zero = torch.zeros(D, dtype=torch.float64)

    def loss():
        la = log_prob(a, mu.expand_as(a), std, "mean") - log_prob(a, zero.expand_as(a), std, "mean")
        lb = log_prob(b, mu.expand_as(b), std, "mean") - log_prob(b, zero.expand_as(b), std, "mean")
        return d3po_step_losses(la[:, None], lb[:, None], p, dpo_beta, "soft").mean()

    opt = torch.optim.LBFGS([mu], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    return mu.detach(), w


@pytest.mark.parametrize("D", [1, 4])
def test_soft_label_optimum_is_the_exact_tilt_for_one_step(D):
    """One Gaussian step, π_ref = N(0, s² I_D), π_θ = N(μ, s² I_D), r = w·x (‖w‖ = 1), soft labels
    p = σ((r_a − r_b)/τ), no clamp: the loss is minimised where βΔ = (r_a − r_b)/τ for every pair, i.e.
    μ* = D s² w/(τβ), the tilt π_ref·exp(r/β_s) with β_s = τβ/D (s = 0.7, τ = 0.5, β = 2: ‖μ*‖ = 0.49 for
    D = 1, 1.96 for D = 4; KL = ‖μ*‖²/(2 s²) = 0.245 and 3.92 nats)."""
    s, tau, beta = 0.7, 0.5, 2.0
    mu, w = _soft_label_optimum(D, s, tau, beta, seed=D)
    expect = D * s ** 2 * w / (tau * beta)
    torch.testing.assert_close(mu, expect, rtol=1e-6, atol=1e-8)
    beta_s = tau * beta / D  # the tilt π_ref·exp(w·x/β_s) of N(0, s² I) is N(s² w/β_s, s² I)
    assert common_beta(beta, D, tau) == pytest.approx(beta_s, rel=1e-15)
    torch.testing.assert_close(mu, s ** 2 * w / beta_s, rtol=1e-6, atol=1e-8)
    assert float(mu.norm()) == pytest.approx({1: 0.49, 4: 1.96}[D], rel=1e-6)
    kl = float(mu.norm() ** 2 / (2 * s ** 2))
    assert kl == pytest.approx({1: 0.245, 4: 3.92}[D], rel=1e-6)


@pytest.mark.parametrize("D", [1, 4, 16])
def test_soft_label_optimum_on_the_common_scale_does_not_depend_on_D(D):
    """The same one-step problem with the DPO temperature set from the common scale, β_code = β_s·D/τ (the
    agent's mapping of ``beta``): ‖μ*‖ = s²/β_s and KL = ‖μ*‖²/(2 s²) = s²/(2 β_s²) for every D (s = 0.7,
    τ = 0.5, β_s = 0.35: ‖μ*‖ = 1.4, KL = 2 nats), i.e. ``beta`` means reward units per nat whatever the
    latent size, as for the other methods on the scale."""
    s, tau, beta_s = 0.7, 0.5, 0.35
    dpo_beta = dpo_temperature(beta_s, D, tau)
    assert dpo_beta == pytest.approx(beta_s * D / tau, rel=1e-15)
    mu, w = _soft_label_optimum(D, s, tau, dpo_beta, seed=10 + D)
    torch.testing.assert_close(mu, s ** 2 * w / beta_s, rtol=1e-5, atol=1e-6)  # L-BFGS at β_code up to 11.2
    assert float(mu.norm()) == pytest.approx(s ** 2 / beta_s, rel=1e-5) and s ** 2 / beta_s == pytest.approx(1.4)
    assert float(mu.norm() ** 2 / (2 * s ** 2)) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("config", [{"beta": 0.01}, OFFICIAL], ids=["soft-beta0.01", "official"])
def test_the_agent_raises_the_proxy_reward_on_levy_manifold(config):
    """One round on levy-manifold from 64 pretrained samples and their oracle values: under the refitted
    proxy the policy's samples score higher than the pretrained model's (same proxy, 1024 samples each),
    with soft labels on the common scale (the smallest grid beta: the default 0.1 moves the policy by only
    about 2 standard errors in these 15 steps) and in the official hard-label configuration (about 67)."""
    torch.manual_seed(0)
    task = make_task("levy-manifold", num_steps=6)
    agent = D3POAgent(task.info, {"num_steps": 6, "updates_per_round": 15, "lr": 3e-3, "proxy_epochs": 50, **config},
                      seed=0)
    x = agent.propose(64, torch.Generator().manual_seed(1))
    agent.observe(x, task.evaluate_true(x))
    stats = agent.improve()
    assert all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
    with torch.no_grad():
        tr = agent.sample(1024, torch.Generator().manual_seed(2))
        r_pol = agent.reward(tr.final)
        x0 = agent.reference.initial_noise(1024, torch.Generator().manual_seed(3), agent.schedule)
        r_ref = agent.reward(sample_trajectory(agent.reference, agent.schedule, x0,
                                               generator=torch.Generator().manual_seed(4)).final)
    se = math.sqrt(float(r_pol.var()) / 1024 + float(r_ref.var()) / 1024)
    assert float(r_pol.mean() - r_ref.mean()) > 4 * se


def test_settings_refusals_and_the_frontier_rule():
    from benchmarks.run.frontier import BETA_GRID, default_knob, rule_values
    from sqdf_bbo.agents.kl_scale import latent_elements
    from sqdf_bbo.run import settings_help

    info = make_task("levy").info
    D = latent_elements(info)
    with pytest.raises(ValueError, match="eta > 0"):
        D3POAgent.resolve_config(info, {"eta": 0.0})
    with pytest.raises(ValueError, match="even"):
        D3POAgent.resolve_config(info, {"train_batch": 5})
    with pytest.raises(ValueError, match="labels"):
        D3POAgent.resolve_config(info, {"labels": "ranked"})
    # defaults: the suite's configuration (soft labels, no clamp, the common beta 0.1 -> β_code = beta·D/τ)
    cfg = D3POAgent.resolve_config(info, {})
    assert (cfg["labels"], cfg["ratio_clip"], cfg["beta"], cfg["label_temperature"]) == ("soft", None, 0.1, 1.0)
    assert cfg["dpo_beta"] == pytest.approx(0.1 * D)
    assert (cfg["weight_decay"], cfg["max_grad_norm"]) == (1e-4, 1.0)
    cfg = D3POAgent.resolve_config(info, {"beta": 2.0, "label_temperature": 0.5})
    assert cfg["dpo_beta"] == pytest.approx(2.0 * D / 0.5)
    # dpo_beta alone: beta derived; both set and consistent: fine; inconsistent: refused naming both
    cfg = D3POAgent.resolve_config(info, {"dpo_beta": "0.5"})
    assert cfg["dpo_beta"] == 0.5 and cfg["beta"] == pytest.approx(0.5 / D)
    assert D3POAgent.resolve_config(info, {"beta": 0.1, "dpo_beta": 0.1 * D})["beta"] == 0.1
    with pytest.raises(ValueError, match="beta or dpo_beta"):
        D3POAgent.resolve_config(info, {"beta": 0.1, "dpo_beta": 0.1})
    with pytest.raises(ValueError, match="both are none"):
        D3POAgent.resolve_config(info, {"beta": None})
    # the official configuration: hard labels, ε 0.1, β_code 0.1, off the common scale (beta None)
    official = D3POAgent.resolve_config(info, dict(OFFICIAL))
    assert (official["dpo_beta"], official["ratio_clip"], official["labels"], official["beta"]) == \
        (0.1, 0.1, "hard", None)
    short = D3POAgent.resolve_config(info, {"labels": "hard", "ratio_clip": 0.1})  # dpo_beta: the official 0.1
    assert {k: short[k] for k in OFFICIAL} == OFFICIAL and short["beta"] is None
    with pytest.raises(ValueError, match="beta.*labels=soft"):
        D3POAgent.resolve_config(info, {"labels": "hard", "beta": 0.1})
    # a resolved config resolves to itself (runs re-read their recorded config)
    for c in (D3POAgent.resolve_config(info, {}), official):
        assert D3POAgent.resolve_config(info, dict(c)) == c
    # the frontier sweeps the common beta on the common grid (the grid rule: a beta setting)
    assert default_knob("d3po", D3POAgent) == "beta"
    assert rule_values("d3po", D3POAgent, "beta") == list(BETA_GRID) == [0.01, 0.1, 1.0, 10.0]
    assert getattr(D3POAgent, "frontier_knob", None) is None
    help_text = settings_help("d3po")
    assert all(k in help_text for k in ("beta", "dpo_beta", "ratio_clip", "labels"))


def test_cli_run_on_levy_manifold(tmp_path):
    from sqdf_bbo.run import main

    argv = ["--task", "levy-manifold", "--method", "d3po", "--budget", "48", "--no-progress", "--out", str(tmp_path),
            "--set", "run.rounds=2", "--set", "run.n_eval=32", "--set", "task.num_steps=4", "--set", "proxy_epochs=20",
            "--set", "train_batch=8", "--set", "updates_per_round=4"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 48
    assert all(math.isfinite(final[k]) for k in ("eval_reward", "path_kl", "best_so_far"))
    assert final["path_kl"] > 0  # the harness measures the fine-tuned DDIM sampler's path KL
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    train = rounds[-1]["train"]
    assert math.isfinite(train["loss"]) and 0 <= train["clip_frac"] <= 1 and math.isfinite(train["reward"])
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["agent"]["train_batch"] == 8 and cfg["agent"]["beta"] == 0.1 and cfg["agent"]["labels"] == "soft"
    assert cfg["agent"]["dpo_beta"] == pytest.approx(0.1 * 8) and cfg["agent"]["ratio_clip"] is None  # D = 8

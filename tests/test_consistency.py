"""Consistency distillation: the committed CMs beat one-step Tweedie against multi-step DDIM(η=0)."""
import json

import pytest
import torch
from diffusers import DDIMScheduler

from sqdf_bbo.backbones.mlp import load_mlp
from sqdf_bbo.consistency import (ConsistencyModel, cm_weights_path, distill_consistency, find_consistency_model,
                                  load_consistency_mlp)
from sqdf_bbo.tasks import make_task
from sqdf_bbo.tasks.synthetic import make_prior_and_bounds

torch.set_num_threads(1)
BENCH_PRIORS = ["ackley", "levy", "rastrigin"]


@pytest.mark.parametrize("num_steps", [50, 10])
@pytest.mark.parametrize("prior", BENCH_PRIORS)
def test_cm_beats_tweedie_against_multistep_ddim(prior, num_steps):
    """Held-out x0 from the prior (seed never used in distillation), noised to random grid timesteps; the
    reference answer is diffusers' own DDIM(η=0) stepping of the frozen teacher to the end of the grid.
    Both committed grids: 50 steps (task default) and 10 (the CPU frontier's setting)."""
    p, lo, hi = make_prior_and_bounds(prior)
    teacher = load_mlp(prior, lo.float(), hi.float())
    cm = load_consistency_mlp(prior, lo.float(), hi.float(), num_steps)
    assert cm.num_steps == num_steps
    sched = DDIMScheduler.from_config(teacher.scheduler.config)
    sched.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(777)
    n = 96
    x0 = p.sample(n, g).float()
    idx = torch.randint(0, num_steps - 5, (n,), generator=g)  # leave >= 5 DDIM steps to go
    acp = sched.alphas_cumprod
    taus = sched.timesteps[idx]
    a = acp[taus].unsqueeze(1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        eps0 = teacher(xt, taus)
        tweedie = (xt - (1 - a).sqrt() * eps0) / a.sqrt()
        f = cm(xt, taus)
        y = xt.clone()
        for k, tau in enumerate(sched.timesteps):  # row i joins at its own start index idx[i]
            act = idx <= k
            if act.any():
                y[act] = sched.step(teacher(y[act], tau.repeat(int(act.sum()))), int(tau), y[act], eta=0.0).prev_sample
    errs_cm = ((f - y) ** 2).mean(1)
    errs_tw = ((tweedie - y) ** 2).mean(1)
    assert errs_cm.mean() < 0.8 * errs_tw.mean(), (errs_cm.mean(), errs_tw.mean())
    assert (errs_cm < errs_tw).double().mean() > 0.5


@pytest.mark.parametrize("num_steps", [50, 10])
def test_weights_record_command_seed_and_hashes(num_steps):
    for prior in BENCH_PRIORS:
        meta = json.loads(cm_weights_path("mlp", prior, num_steps).with_suffix(".json").read_text())
        assert meta["num_steps"] == num_steps and f"--num-steps {num_steps}" in meta["command"]
        for key in ("command", "seed", "final_loss", "sha256", "teacher_sha256", "num_steps"):
            assert key in meta, key
        assert meta["command"].startswith("python -m sqdf_bbo.pretrain consistency --backbone mlp")
        assert meta["heldout_cm_mse_vs_ddim"] < meta["heldout_tweedie_mse_vs_ddim"]


def test_boundary_coefficients():
    _, lo, hi = make_prior_and_bounds("ackley")
    cm = ConsistencyModel(load_mlp("ackley", lo.float(), hi.float()))
    c_skip, c_out = cm.boundary_coefficients(torch.tensor([0, 1, 19, 999]))
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0  # f(x, 0) = x
    assert float(c_skip[2]) < 7e-6 and float(c_out[2]) > 0.999996  # the consistency model's boundary coefficients at τ' = 19
    x = torch.randn(4, 8)
    torch.testing.assert_close(cm(x, torch.zeros(4, dtype=torch.long)), x)


def test_find_for_task_and_fallback_reasons():
    task = make_task("ackley-manifold")
    ref = task.info.make_backbone()
    cm, reason = find_consistency_model(task.info, ref, 50)
    assert cm is not None and reason == "" and not any(p.requires_grad for p in cm.parameters())
    cm, reason = find_consistency_model(task.info, ref, 10)
    assert cm is not None and cm.num_steps == 10
    cm, reason = find_consistency_model(task.info, ref, 20)
    assert cm is None and "no consistency model for 20 steps" in reason and "--num-steps 20" in reason


def test_distillation_runs_generic_and_seeded():
    """A few steps on a tiny teacher: deterministic given the seed, and the student starts as the teacher."""
    from sqdf_bbo.backbones.mlp import MLPDenoiser

    torch.manual_seed(0)
    teacher = MLPDenoiser(2, -torch.ones(2), torch.ones(2), width=16, depth=1, temb_dim=8)
    sample = lambda n, g: torch.randn(n, 2, generator=g) * 0.3 + 0.2  # noqa: E731
    cm1, rec1 = distill_consistency(teacher, sample, num_steps=10, steps=5, batch=16, seed=3, log_every=0)
    cm2, rec2 = distill_consistency(teacher, sample, num_steps=10, steps=5, batch=16, seed=3, log_every=0)
    assert rec1["final_loss"] == rec2["final_loss"]
    for a, b in zip(cm1.parameters(), cm2.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="ema"):
        distill_consistency(teacher, sample, ema=1.0)

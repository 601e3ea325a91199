"""The image ``-manifold`` tasks (naturalness gate + worst-value rule), the bounded ground truth A and the
committed weights' records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sqdf_bbo.data import build_patches
from sqdf_bbo.data.checksum import sha256_of, verify_checksum
from sqdf_bbo.oracles.rand_aesthetic import load_rand_aesthetic, pixel_ascent
from sqdf_bbo.tasks import list_tasks, make_task
from sqdf_bbo.tasks.image import gate_calibration_patches, naturalness_gate

S = 16


@pytest.fixture(scope="module")
def held():
    return build_patches(1000, S, "heldout", seed=21)  # not the gate's calibration patches (seed 102)


@pytest.fixture(scope="module")
def hacked(held):
    """Pixel ascent on the oracle O from natural patches: the saturated noise a collapsing method ends in."""
    torch.manual_seed(0)
    return pixel_ascent(load_rand_aesthetic(S), held[:32], steps=150)


def test_manifold_tasks_registered():
    names = set(list_tasks())
    assert {"aesthetic-manifold", "compressibility-manifold", "incompressibility-manifold"} <= names
    t = make_task("aesthetic-manifold")
    assert t.info.name == "aesthetic-manifold" and t.manifold and not make_task("aesthetic").manifold
    with pytest.raises(ValueError, match="unknown override.*'manifold'"):
        make_task("aesthetic", manifold=True)  # the variant is chosen by name only


def test_gate_calibration_and_other_heldout_patches(held):
    gate = naturalness_gate(S)
    cal = gate_calibration_patches(S)
    assert abs(float(gate.passes(cal).double().mean()) - 0.99) <= 0.002  # the 1st-percentile rule, by construction
    assert float(gate.passes(held).double().mean()) >= 0.97  # other natural patches pass at about that rate
    g = torch.Generator().manual_seed(1)
    import colorsys

    hues = torch.rand(64, generator=g)  # flat fields of saturated colour, which no photo patch is
    flat = torch.tensor([colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hues]).float()
    flat = flat[:, :, None, None].expand(-1, -1, S, S).contiguous()
    noise = torch.rand(64, 3, S, S, generator=g)
    assert float(gate.passes(noise).double().mean()) == 0.0
    assert float(gate.passes(flat).double().mean()) <= 0.1
    # score is the larger of the two statistics in units of their held-out 99th percentiles
    st = gate.statistics(held[:50])
    torch.testing.assert_close(gate.score(held[:50]), torch.maximum(st[:, 0] / gate.scales[0], st[:, 1] / gate.scales[1]))


@pytest.mark.parametrize("base", ["aesthetic", "compressibility"])
def test_worst_value_rule(base, held, hacked):
    plain, mani = make_task(base), make_task(f"{base}-manifold")
    # worst value = the worst plain-oracle value among the calibration patches (computed independently)
    cal = gate_calibration_patches(S)
    if base == "aesthetic":
        expect = float(load_rand_aesthetic(S)(cal).min())
    else:
        from sqdf_bbo.tasks.image import jpeg_kb

        expect = float(-jpeg_kb(cal).max())
    assert mani.worst_value == pytest.approx(expect, rel=1e-5)
    x = torch.cat([held[:40], hacked[:8]])
    ok = mani.valid_mask(x)
    assert ok[:40].float().mean() >= 0.9 and not ok[40:].any()  # hacked images fail the gate
    y, y0 = mani.evaluate_true(x), plain.evaluate_true(x)
    torch.testing.assert_close(y[ok], y0[ok])
    assert torch.all(y[~ok] == mani.worst_value)
    if base == "aesthetic":  # the hack wins the plain task by far and loses the manifold one
        assert y0[40:].min() > y0[:40].max() and y[40:].max() < y[:40][ok[:40]].median()


def test_ground_truth_is_bounded_near_the_best_natural_patch(held, hacked):
    o = load_rand_aesthetic(S)
    a_nat = o.ground_truth(held)
    bound = o.ground_truth_bound
    assert a_nat.max() < bound <= 1.4 * float(a_nat.max())  # the cap: the best of 16k train patches
    torch.manual_seed(0)
    pushed = o.ground_truth(pixel_ascent(o.ground_truth, held[:16], steps=200))
    assert float(pushed.max()) < bound  # direct pixel ascent on A cannot pass it
    assert float(o.ground_truth(hacked).max()) < bound
    # without the saturation the same statistics are unbounded: the raw weighted z-sum of the ascent result
    from sqdf_bbo.oracles.rand_aesthetic import gt_statistics

    raw = ((gt_statistics(hacked) - o.gt_mean) / o.gt_std) @ o.gt_weights
    assert float(raw.max()) > 1.5 * bound


def test_committed_weights_have_records_and_matching_sha256():
    from sqdf_bbo.backbones.unet import WEIGHTS_DIR

    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert any(f.stem == "unet16" for f in files) and any(f.stem == "cm_unet16" for f in files)
    for f in files:
        rec = json.loads(f.with_suffix(".json").read_text())
        assert rec["sha256"] == sha256_of(f), f.name
        assert rec.get("command", "").startswith("python -m sqdf_bbo."), f.name
        if f.with_suffix(".safetensors.sha256").exists():
            assert verify_checksum(f) == rec["sha256"]
    unet = json.loads((WEIGHTS_DIR / "unet16.json").read_text())
    assert unet["complete"] and unet["steps"] >= 1000 and np.isfinite(unet["final_loss"])


def test_initial_noise_matches_the_forward_marginal_and_every_sampler_uses_it(monkeypatch):
    """PixelUNet's x_0 ~ N(sqrt(a0) m, a0 C + (1 - a0) I) (Monte Carlo moments vs the closed form); the
    default backbone's is the plain N(0, I) draw (so the other tiers are unchanged); the agents, the harness
    and the peers all draw x_0 through Backbone.initial_noise."""
    from sqdf_bbo.backbones.unet import load_pretrained_unet, training_moments
    from sqdf_bbo.diffusion import DDIMSchedule

    m = load_pretrained_unet("unet16")
    sched = DDIMSchedule.from_scheduler(m.scheduler, 20, 1.0)
    a0 = float(sched.alpha[0])
    mean, chol = training_moments(S)
    x = m.initial_noise(40_000, torch.Generator().manual_seed(0), sched).flatten(1).double()
    torch.testing.assert_close(x.mean(0), a0 ** 0.5 * mean, atol=0.03, rtol=0)
    idx = torch.tensor([0, 5, 300, 767])
    cov = torch.cov(x[:, idx].T)
    expect = a0 * (chol @ chol.T)[idx][:, idx] + (1 - a0) * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(cov, expect, atol=0.03, rtol=0)
    # the vector tier's backbone: exactly the former torch.randn draw
    from sqdf_bbo.backbones.base import Backbone

    lev = make_task("levy").info.make_backbone()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(lev.initial_noise(5, g1, sched), torch.randn((5, *lev.latent_shape), generator=g2))
    # every sampler goes through it
    calls = []
    orig = Backbone.initial_noise

    def spy(self, n, generator, schedule):
        calls.append(n)
        return orig(self, n, generator, schedule)

    monkeypatch.setattr(Backbone, "initial_noise", spy)
    monkeypatch.setattr(type(m), "initial_noise", spy)
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.run import evaluate_policy

    task = make_task("levy")
    for method, cfg in (("pretrained", {}), ("svdd", {"candidates": 2}), ("fk-steering", {"particles": 2})):
        agent = resolve_method(method)(task.info, dict(cfg, num_steps=3), 0)
        before = len(calls)
        agent.propose(4, torch.Generator().manual_seed(0))
        if method != "pretrained":
            x = agent.propose(4, torch.Generator().manual_seed(0))
            agent.observe(x, -(x.double() ** 2).sum(1))
            agent.improve()
            agent.propose(4, torch.Generator().manual_seed(0))
        assert len(calls) > before, method
    before = len(calls)
    evaluate_policy(resolve_method("pretrained")(task.info, {"num_steps": 3}, 0), task, 8,
                    torch.Generator().manual_seed(0), task.harness_reference())
    assert len(calls) > before

"""Diversity that garbage cannot win: task validity masks and ``vendi_valid`` / ``n_valid``.

Synthetic tier: validity = prior log-density at or above its 1st percentile, checked against scipy.
Image tier: the natural-patch gate (tasks/image.py) passes held-out photos and fails noise and flat
saturated colours. In both tiers the plain Vendi score is won by garbage (documented here), vendi_valid is not.
"""
from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from sqdf_bbo import metrics as M
from sqdf_bbo.tasks import make_task

torch.set_num_threads(1)


# ---- the metric -----------------------------------------------------------------------------------
def test_valid_vendi_score_is_vendi_of_the_valid_rows():
    x = np.random.default_rng(0).normal(size=(40, 3))
    valid = np.arange(40) % 3 != 0
    assert M.valid_vendi_score(x, valid, "rbf", 0.8) == pytest.approx(M.vendi_score(x[valid], "rbf", 0.8), rel=1e-12)
    assert M.valid_vendi_score(x, torch.tensor(valid), "cosine") == pytest.approx(M.vendi_score(x[valid], "cosine"))
    assert M.valid_vendi_score(x, np.zeros(40, bool), "rbf", 0.8) == 0.0  # no valid design: 0, not NaN
    assert M.valid_vendi_score(x, np.arange(40) == 5, "rbf", 0.8) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="valid mask has 39 entries for 40"):
        M.valid_vendi_score(x, valid[:39], "rbf", 0.8)


# ---- synthetic tier -------------------------------------------------------------------------------
def _scipy_logpdf_x(task, x: np.ndarray) -> np.ndarray:
    """Exact prior log-density in design space, independently: mixture of diagonal Gaussians in x."""
    lo, hi = task.lo.numpy(), task.hi.numpy()
    half = (hi - lo) / 2
    comps = [multivariate_normal(lo + (m + 1) * half, np.diag((task.prior.std * half) ** 2)).logpdf(x)
             for m in task.prior.means.numpy()]
    return logsumexp(np.stack(comps), axis=0) - np.log(len(comps))


def test_synthetic_valid_mask_against_scipy_quantile():
    task = make_task("levy-manifold")
    lo, hi = task.lo, task.hi
    to_x = lambda u: lo + (u + 1) / 2 * (hi - lo)  # noqa: E731
    ref = to_x(task.prior.sample(10_000, torch.Generator().manual_seed(12345))).numpy()  # the task's 10k samples
    thr = np.quantile(_scipy_logpdf_x(task, ref), 0.01)
    g = torch.Generator().manual_seed(3)
    u = task.prior.sample(600, g)
    u[200:400] *= 1.6  # around the threshold
    u[400:] = torch.rand((200, u.shape[1]), generator=g, dtype=torch.float64) * 2 - 1
    x = to_x(u)
    want = _scipy_logpdf_x(task, x.numpy()) >= thr
    got = task.valid_mask(x).numpy()
    assert 0.2 < want.mean() < 0.9 and (got == want).all()
    assert task.naturalness(x)["invalid_frac"] == pytest.approx(1 - got.mean())  # one rule, two reports


@pytest.mark.parametrize("name", ["ackley", "levy"])
def test_exploded_designs_do_not_win_vendi_valid(name):
    task = make_task(name)
    to_x = lambda u: task.lo + (u + 1) / 2 * (task.hi - task.lo)  # noqa: E731
    u = task.prior.sample(128, torch.Generator().manual_seed(0))
    pretrained, exploded = to_x(u), to_x(20 * u)
    d_pre, d_exp = M.diversity(task, pretrained), M.diversity(task, exploded)
    assert d_exp["vendi"] > 100 > 10 > d_pre["vendi"]  # the failure mode of the plain score
    assert d_exp["n_valid"] == 0 and d_exp["vendi_valid"] == 0.0
    assert d_pre["n_valid"] >= 120 and d_pre["vendi_valid"] > 1
    half = torch.cat([pretrained[:64], exploded[64:]])
    d_half = M.diversity(task, half)
    assert d_half["n_valid"] == int(task.valid_mask(pretrained[:64]).sum())
    assert d_half["vendi_valid"] <= d_pre["vendi_valid"] < d_half["vendi"]


def test_run_writes_vendi_valid_every_round(tmp_path):
    from sqdf_bbo.run import main

    assert main(["--task", "levy", "--method", "pretrained", "--budget", "64", "--seed", "0",
                 "--out", str(tmp_path), "--set", "run.n_eval=32", "--no-progress"]) == 0
    run = tmp_path / "levy__pretrained__b64__s0"
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    final = json.loads((run / "final.json").read_text())
    for r in [*rounds, final]:
        assert isinstance(r["n_valid"], int) and r["n_valid"] == round((1 - r["invalid_frac"]) * 32)
        assert 0 <= r["vendi_valid"] <= r["n_valid"] and r["vendi"] > 1
    assert final["vendi_valid"] == rounds[-1]["vendi_valid"]


# ---- image tier -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image():
    from sqdf_bbo.data import build_patches

    task = make_task("aesthetic")
    g = torch.Generator().manual_seed(0)
    hues = torch.rand(256, generator=g)
    flat = torch.tensor([colorsys.hsv_to_rgb(float(h), 1.0, 1.0) for h in hues]).float()
    return {
        "task": task,
        "natural": build_patches(512, 16, "heldout", seed=11),  # not the calibration patches (seed 102)
        "noise": torch.rand(256, 3, 16, 16, generator=g),
        "flat_saturated": flat[:, :, None, None].expand(-1, -1, 16, 16).contiguous(),
        "noisy_natural": (build_patches(256, 16, "heldout", seed=12)
                          + 0.1 * torch.randn(256, 3, 16, 16, generator=g)).clamp(0, 1),
    }


def test_image_gate_passes_photos_and_fails_garbage(image):
    task = image["task"]
    rate = {k: float(task.valid_mask(v).double().mean()) for k, v in image.items() if k != "task"}
    assert rate["natural"] >= 0.95
    assert rate["noise"] <= 0.05 and rate["flat_saturated"] <= 0.05 and rate["noisy_natural"] <= 0.05
    # which statistic does the work: texture (pixel Mahalanobis) for noise, colour kNN for flat fields
    from sqdf_bbo.tasks.image import naturalness_gate

    gate = naturalness_gate(16)
    assert gate is naturalness_gate(16)  # calibrated once
    over = lambda x: (gate.statistics(x) > gate.scales).double().mean(0)  # noqa: E731
    assert over(image["noise"])[0] == 1.0 and over(image["flat_saturated"])[1] >= 0.95


def test_image_gate_shrinkage_matches_sklearn():
    from sklearn.covariance import ledoit_wolf

    from sqdf_bbo.tasks.image import _ledoit_wolf

    x = torch.randn(300, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    np.testing.assert_allclose(_ledoit_wolf(x - x.mean(0)).numpy(), ledoit_wolf(x.numpy())[0], atol=1e-10)


def test_image_cosine_vendi_is_won_by_noise_but_vendi_valid_is_not(image):
    task = image["task"]
    nat, noise = M.diversity(task, image["natural"][:128]), M.diversity(task, image["noise"][:128])
    assert noise["vendi"] > nat["vendi"]  # the failure mode of the plain score (cosine kernel on phi)
    assert noise["vendi_valid"] <= nat["vendi_valid"] and noise["n_valid"] <= 6 <= 120 <= nat["n_valid"]


def test_image_evaluation_reports_vendi_valid(image):
    from sqdf_bbo.run import evaluate_policy

    class NoiseAgent:  # not a diffusion agent: the harness just asks it for designs
        def propose(self, n, generator):
            return torch.rand(n, 3, 16, 16, generator=generator)

    ev, designs = evaluate_policy(NoiseAgent(), image["task"], 32, torch.Generator().manual_seed(1))
    assert designs.shape == (32, 3, 16, 16)
    assert ev["n_valid"] == 0 and ev["vendi_valid"] == 0.0 < 5 < ev["vendi"]

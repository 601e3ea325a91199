"""sqdf_bbo.diffusion.scheduler.NoiseScheduler against diffusers' DDIMScheduler, bit for bit, and the MLP
backbone's timestep embedding against diffusers' (the vector tier imports neither)."""
from __future__ import annotations

import pytest
import torch

from sqdf_bbo.diffusion import DDIMSchedule
from sqdf_bbo.diffusion.scheduler import NoiseScheduler

CONFIGS = [
    dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=False,
         steps_offset=1, prediction_type="epsilon"),  # the embedded backbones' (default_scheduler)
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, set_alpha_to_one=False),
    dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", num_train_timesteps=500),
    dict(beta_schedule="linear", timestep_spacing="linspace", set_alpha_to_one=False),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_the_numbers_are_diffusers_ddim_scheduler_bit_for_bit(cfg):
    from diffusers import DDIMScheduler

    ours, theirs = NoiseScheduler(**cfg), DDIMScheduler(**cfg)
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "timesteps"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for n in (1, 2, 3, 7, 10, 20, 50, 333):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.dtype == theirs.timesteps.dtype and torch.equal(ours.timesteps, theirs.timesteps), n
    # the DDIM coefficients built from either scheduler are identical (eta = 1 needs a last step with std > 0)
    eta = 1.0 if cfg.get("set_alpha_to_one") is False and cfg.get("steps_offset") == 1 else 0.0
    for n in (2, 10, 50):
        s1 = DDIMSchedule.from_scheduler(NoiseScheduler(**cfg), n, eta)
        s2 = DDIMSchedule.from_scheduler(DDIMScheduler(**cfg), n, eta)
        for name in ("timesteps", "alpha", "alpha_prev", "std", "coef_x", "coef_eps"):
            assert torch.equal(getattr(s1, name), getattr(s2, name)), (n, name)
    # the config reads as attributes and round-trips, also through diffusers
    assert ours.config.num_train_timesteps == theirs.config.num_train_timesteps
    assert torch.equal(NoiseScheduler.from_config(ours.config).alphas_cumprod, ours.alphas_cumprod)
    assert torch.equal(DDIMScheduler.from_config(ours.config).alphas_cumprod, ours.alphas_cumprod)


def test_settings_it_does_not_implement_are_refused():
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        NoiseScheduler(rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="does not know"):
        NoiseScheduler(variance_type="fixed_small")
    with pytest.raises(ValueError, match="cannot be larger"):
        NoiseScheduler(num_train_timesteps=10).set_timesteps(11)


@pytest.mark.parametrize("channels", [64, 7])
def test_the_mlp_timestep_embedding_is_diffusers(channels):
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    from sqdf_bbo.backbones.mlp import SinusoidalTimesteps, TimestepMLP

    t = torch.tensor([0, 1, 17, 500, 999])
    ours, theirs = SinusoidalTimesteps(channels)(t), Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
    assert torch.equal(ours, theirs)
    torch.manual_seed(0)
    a = TimestepMLP(channels, 32)
    b = TimestepEmbedding(channels, 32)
    assert set(a.state_dict()) == set(b.state_dict())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(ours), b(ours))


def test_a_synthetic_run_does_not_import_diffusers(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom sqdf_bbo.run import main\n"
            f"rc = main(['--task', 'levy', '--method', 'sqdf', '--budget', '16', '--set', 'run.rounds=1', "
            f"'--set', 'run.n_eval=8', '--no-progress', '--out', {str(tmp_path)!r}])\n"
            "print(rc, 'diffusers' in sys.modules, 'peft' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "0 False False False", out.stderr[-2000:]

"""The training noise schedule of the embedded backbones: the part of diffusers' ``DDIMScheduler`` they use.

    sched = NoiseScheduler(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=False, steps_offset=1)
    sched.alphas_cumprod        # (T,) float32, ᾱ_t
    sched.set_timesteps(10)     # sched.timesteps: (10,) int64, descending
    sched.final_alpha_cumprod   # ᾱ used after the last step

Why by hand: the vector tier needs nothing else from diffusers, and importing diffusers (it pulls in
huggingface_hub, sympy through torch's compiler stack, ...) was the largest part of a synthetic run's
start-up, more than torch itself. This class computes the same numbers with the same operations, in the same
order and dtypes, as ``diffusers.DDIMScheduler`` (its ``__init__`` and ``set_timesteps`` for the
``linear``, ``scaled_linear`` and ``squaredcos_cap_v2`` schedules and the ``leading``, ``trailing`` and
``linspace`` spacings), so every run gives the numbers it gave with diffusers' class; a test compares
them bit for bit. A setting it does not implement (e.g. ``rescale_betas_zero_snr=True``) is refused.
The Stable Diffusion tier keeps diffusers' own schedulers.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: diffusers' DDIMScheduler defaults for the keys this class reads
DEFAULTS: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                                prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                                clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                                rescale_betas_zero_snr=False)
#: values of keys that change the numbers and that this class does not implement
UNSUPPORTED = {"trained_betas": None, "rescale_betas_zero_snr": False, "thresholding": False,
               "prediction_type": "epsilon"}


class SchedulerConfig(dict):
    """The scheduler's settings: a dict (so ``diffusers.DDIMScheduler.from_config`` accepts it) whose keys
    also read as attributes (``config.num_train_timesteps``), as diffusers' configs do."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """The Glide cosine schedule ("squaredcos_cap_v2"): β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), max_beta) with
    ᾱ(t) = cos((t + 0.008)/1.008 · π/2)², computed in Python floats, returned as float32 (T,)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


class NoiseScheduler:
    """β_t, α_t = 1 − β_t, ᾱ_t = ∏ α (float32, (T,) each), the DDIM inference timesteps and the final ᾱ.
    Keyword arguments are diffusers' ``DDIMScheduler`` settings; unknown keys are refused."""

    def __init__(self, **settings: Any):
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"NoiseScheduler does not know the setting(s) {unknown}; known: {sorted(DEFAULTS)}")
        cfg = SchedulerConfig({**DEFAULTS, **settings})
        for key, plain in UNSUPPORTED.items():
            if cfg[key] != plain:
                raise ValueError(f"NoiseScheduler implements {key}={plain!r} only, got {cfg[key]!r} "
                                 "(use diffusers' DDIMScheduler)")
        self.config = cfg
        T = int(cfg.num_train_timesteps)
        if cfg.beta_schedule == "linear":
            self.betas = torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float32)
        elif cfg.beta_schedule == "scaled_linear":
            self.betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float32) ** 2
        elif cfg.beta_schedule == "squaredcos_cap_v2":
            self.betas = cosine_betas(T)
        else:
            raise ValueError(f"beta_schedule must be linear, scaled_linear or squaredcos_cap_v2, got "
                             f"{cfg.beta_schedule!r}")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, T)[::-1].copy().astype(np.int64))

    @classmethod
    def from_config(cls, config: dict) -> "NoiseScheduler":
        """A new scheduler with the settings of ``config`` (another one's ``config``)."""
        return cls(**dict(config))

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        """``timesteps``: the ``num_inference_steps`` DDIM timesteps (int64, descending) by the configured
        spacing (``leading``: multiples of T // n plus ``steps_offset``)."""
        T = int(self.config.num_train_timesteps)
        if num_inference_steps > T:
            raise ValueError(f"num_inference_steps {num_inference_steps} cannot be larger than the {T} training "
                             "timesteps")
        self.num_inference_steps = num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            timesteps = np.linspace(0, T - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            step_ratio = T // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
            timesteps += self.config.steps_offset
        elif spacing == "trailing":
            step_ratio = T / num_inference_steps
            timesteps = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        else:
            raise ValueError(f"timestep_spacing must be linspace, leading or trailing, got {spacing!r}")
        self.timesteps = torch.from_numpy(timesteps).to(device)

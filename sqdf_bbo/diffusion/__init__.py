"""Denoising-MDP math on top of diffusers' DDIMScheduler (see ddim.py)."""
from sqdf_bbo.diffusion.ddim import (
    DDIMSchedule,
    Trajectory,
    gaussian_kl,
    log_prob,
    path_kl,
    sample_trajectory,
)

__all__ = ["DDIMSchedule", "Trajectory", "gaussian_kl", "log_prob", "path_kl", "sample_trajectory"]

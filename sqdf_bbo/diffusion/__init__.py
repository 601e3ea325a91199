"""Denoising-MDP math on a DDIM noise schedule (ddim.py) and the embedded backbones' schedule (scheduler.py)."""
from sqdf_bbo.diffusion.ddim import (
    DDIMSchedule,
    Trajectory,
    gaussian_kl,
    log_prob,
    path_kl,
    sample_trajectory,
)

__all__ = ["DDIMSchedule", "Trajectory", "gaussian_kl", "log_prob", "path_kl", "sample_trajectory"]

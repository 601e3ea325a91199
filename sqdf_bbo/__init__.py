"""sqdf-bbo: online black-box optimisation with diffusion models (SQDF and baselines)."""
__version__ = "0.1.0"

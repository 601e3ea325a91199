"""sqdf-bbo: online black-box optimisation with diffusion models (SQDF and baselines).

    from sqdf_bbo import run_experiment
    final = run_experiment("levy", "sqdf", budget=1000, seed=0, out="runs", beta=0.1)
"""
__version__ = "0.1.0"


def __getattr__(name):  # the library entry point, imported on first use (keeps `import sqdf_bbo` light)
    if name == "run_experiment":
        from sqdf_bbo.run import run_experiment

        return run_experiment
    raise AttributeError(f"module 'sqdf_bbo' has no attribute {name!r}")

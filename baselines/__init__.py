"""Baseline fine-tuning agents on the shared online harness (spec: shared/spec/baselines.md).

One module per method; every agent subclasses :class:`sqdf_bbo.agents.online.OnlineFinetuneAgent`
and differs from the others only in ``update_step`` (and its hyperparameters).
"""

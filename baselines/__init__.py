"""Baseline fine-tuning agents on the shared online harness.

One module per method; every agent subclasses :class:`sqdf_bbo.agents.online.OnlineFinetuneAgent`
and writes its own ``improve()`` (one round, top to bottom, with the base class's round helpers).
"""

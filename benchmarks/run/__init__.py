"""Commands that start runs: the sweep engine, the reward–KL frontier, a new method's comparison against
the committed records, re-running committed records, and the reproduce_*.sh scripts (see benchmarks/__init__.py)."""

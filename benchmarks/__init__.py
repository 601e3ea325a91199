"""Benchmarks: the experiments behind ``results/`` and the measurements of the code, by job.

- ``run/``: what starts runs (``python -m sqdf_bbo.run`` many times): the sweep engine, the reward–KL
  frontier, a new method's comparison, the re-run of committed records, the ``reproduce_*.sh`` scripts;
- ``report/``: what reads finished runs or per-run records and writes tables, figures and the docs'
  generated pages, starting no run: statistics, run folders and records, leaderboards, plots;
- ``perf/``: what measures the code itself rather than the methods' results: time, memory, FLOPs,
  precision, start-up cost, isolation overhead, fault injection, the image tier's gate calibration;
- ``common/``: what all three share: the Markdown table writer and the provenance record.

Imports go one way: ``run`` may import ``report`` and ``common``, ``report`` and ``perf`` import
``common``, ``common`` imports nothing from here; ``sqdf_bbo`` and ``baselines`` never import benchmarks
(tests/test_layering.py). The old flat paths (``python -m benchmarks.frontier``, ``bash
benchmarks/reproduce_frontier.sh``) still run the moved modules and scripts.
"""

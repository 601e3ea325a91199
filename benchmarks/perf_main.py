"""Moved to :mod:`benchmarks.perf.perf_main`; ``python -m benchmarks.perf_main`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_main", __name__)

"""Moved to :mod:`benchmarks.perf.perf_core`; ``python -m benchmarks.perf_core`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_core", __name__)

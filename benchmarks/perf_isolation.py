"""Moved to :mod:`benchmarks.perf.perf_isolation`; ``python -m benchmarks.perf_isolation`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_isolation", __name__)

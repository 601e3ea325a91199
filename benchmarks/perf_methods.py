"""Moved to :mod:`benchmarks.perf.perf_methods`; ``python -m benchmarks.perf_methods`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_methods", __name__)

"""Moved to :mod:`benchmarks.perf.perf_startup`; ``python -m benchmarks.perf_startup`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_startup", __name__)

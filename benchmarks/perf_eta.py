"""Moved to :mod:`benchmarks.perf.perf_eta`; ``python -m benchmarks.perf_eta`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_eta", __name__)

"""Moved to :mod:`benchmarks.perf.precision_check`; ``python -m benchmarks.precision_check`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.precision_check", __name__)

"""Moved to :mod:`benchmarks.perf.fault_injection`; ``python -m benchmarks.fault_injection`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.fault_injection", __name__)

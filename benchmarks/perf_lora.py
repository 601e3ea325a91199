"""Moved to :mod:`benchmarks.perf.perf_lora`; ``python -m benchmarks.perf_lora`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_lora", __name__)

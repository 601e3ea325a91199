"""Moved to :mod:`benchmarks.perf.perf_unet`; ``python -m benchmarks.perf_unet`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.perf_unet", __name__)

"""Moved to :mod:`benchmarks.run.frontier`; ``python -m benchmarks.frontier`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.run.frontier", __name__)

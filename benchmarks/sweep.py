"""Moved to :mod:`benchmarks.run.sweep`; ``python -m benchmarks.sweep`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.run.sweep", __name__)

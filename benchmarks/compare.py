"""Moved to :mod:`benchmarks.run.compare`; ``python -m benchmarks.compare`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.run.compare", __name__)

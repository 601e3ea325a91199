"""Moved to :mod:`benchmarks.report.stats`; ``python -m benchmarks.stats`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.stats", __name__)

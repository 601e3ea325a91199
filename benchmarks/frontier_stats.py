"""Moved to :mod:`benchmarks.report.frontier_stats`; ``python -m benchmarks.frontier_stats`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.frontier_stats", __name__)

"""Moved to :mod:`benchmarks.report.frontier_readme`; ``python -m benchmarks.frontier_readme`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.frontier_readme", __name__)

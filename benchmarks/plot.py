"""Moved to :mod:`benchmarks.report.plot`; ``python -m benchmarks.plot`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.plot", __name__)

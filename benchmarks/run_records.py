"""Moved to :mod:`benchmarks.report.run_records`; ``python -m benchmarks.run_records`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.run_records", __name__)

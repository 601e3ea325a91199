"""Moved to :mod:`benchmarks.run.rerun_record`; ``python -m benchmarks.rerun_record`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.run.rerun_record", __name__)

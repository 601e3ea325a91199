"""Moved to :mod:`benchmarks.perf.image_calibration`; ``python -m benchmarks.image_calibration`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.perf.image_calibration", __name__)

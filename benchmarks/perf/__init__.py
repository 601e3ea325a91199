"""Measurements of the code itself: time, memory, FLOPs, precision, start-up, isolation, fault injection and the
image gate's calibration (see benchmarks/__init__.py)."""

"""Moved to :mod:`benchmarks.report.leaderboard`; ``python -m benchmarks.leaderboard`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.leaderboard", __name__)

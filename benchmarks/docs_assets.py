"""Moved to :mod:`benchmarks.report.docs_assets`; ``python -m benchmarks.docs_assets`` still runs it."""
from benchmarks._moved import moved

main = moved("benchmarks.report.docs_assets", __name__)

"""Moved to ``benchmarks/perf/perf_sd.py``; ``python benchmarks/perf_sd.py ...`` still runs it."""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parent / "perf" / "perf_sd.py"), run_name="__main__")

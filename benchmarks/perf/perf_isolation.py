"""The cost of running the agent in its own process (``run.isolate=true``, sqdf_bbo/agent_process.py).

    python -m benchmarks.perf.perf_isolation                       # levy x sqdf, budget 1000, frontier settings
    python -m benchmarks.perf.perf_isolation --repeats 2 --append  # also add the row to results/perf_isolation.csv

Runs the same command with ``run.isolate=false`` and ``run.isolate=true`` (alternating, ``--repeats`` times
each, each in a fresh interpreter with one thread) and reports the median wall time of each (measured
outside: interpreter start, the agent process's start and every message included), the overhead in
percent, whether the two runs' final.json numbers agree, the CPU model and the 1-minute load average
before and after. On a shared machine (load above the number of cores) the times are noisy and the
overhead may be over- or understated: compare rows taken at similar loads. Goal: overhead <= 10 %.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.provenance import load_average, provenance
from benchmarks.perf.results_csv import emit_row

#: levy x SQDF with the committed frontier's settings (benchmarks/run/reproduce_frontier.sh)
FRONTIER = ["--task", "levy", "--method", "sqdf", "--budget", "1000", "--seed", "0", "--no-progress",
            "--set", "run.n_eval=128", "--set", "num_steps=10", "--set", "updates_per_round=20",
            "--set", "proxy_epochs=30"]
COLUMNS = ["command", "repeats", "in_process_s", "isolated_s", "overhead_pct", "target_pct", "meets_target",
           "same_results", "machine", "load_before", "load_after", "git_commit"]
TARGET_PCT = 10.0


#: the main job (README quick start), on both cores
MAIN = ["--task", "aesthetic", "--budget", "5000", "--seed", "0", "--no-progress"]


def timed_run(argv: list[str], isolate: bool, out: Path, threads: int = 1) -> tuple[float, dict]:
    """(wall seconds, final.json without timings) of one run in a fresh interpreter with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *argv, "--out", str(out),
                        "--set", f"run.isolate={str(isolate).lower()}"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    final = json.loads(next(out.iterdir()).joinpath("final.json").read_text())
    return wall, {k: v for k, v in final.items() if k not in ("wall_time_s", "peak_mem_mb", "run_dir")}


def measure(argv: list[str], repeats: int, threads: int = 1) -> dict:
    load_before = load_average(all_three=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    finals: dict[bool, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for isolate in (False, True) if r % 2 == 0 else (True, False):  # alternate against load drift
                wall, finals[isolate] = timed_run(argv, isolate, Path(tmp) / f"{int(isolate)}_{r}", threads)
                times[isolate].append(wall)
                print(f"repeat {r + 1}: isolate={isolate}: {wall:.1f} s", file=sys.stderr, flush=True)
    a, b = statistics.median(times[False]), statistics.median(times[True])
    over = 100.0 * (b - a) / a
    return {"repeats": repeats, "in_process_s": round(a, 2), "isolated_s": round(b, 2), "overhead_pct": round(over, 1),
            "target_pct": TARGET_PCT, "meets_target": over <= TARGET_PCT, "same_results": finals[False] == finals[True],
            **provenance(load_before, "python -m sqdf_bbo.run " + " ".join(argv))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_isolation", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--append", action="store_true", help="append the row to --csv")
    p.add_argument("--csv", default="results/perf_isolation.csv")
    p.add_argument("--main", action="store_true", help="the main job (aesthetic, budget 5000) on 2 threads instead")
    a = p.parse_args(argv)
    cmd = list(MAIN if a.main else FRONTIER)
    if not a.main:
        cmd[cmd.index("--budget") + 1] = str(a.budget)
    emit_row(measure(cmd, a.repeats, threads=2 if a.main else 1), COLUMNS, Path(a.csv) if a.append else None,
             indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

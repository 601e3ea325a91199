"""Fault injection (a benchmark, not a test): SIGKILL the main command at random moments, resume it each
time, and report what the kills cost.

    python -m benchmarks.fault_injection [--task aesthetic] [--method sqdf] [--budget 5000] [--kills 20]
        [--expected-s 600] [--seed 0] [--out runs/fault_injection] [--csv results/fault_injection.csv]
        [--set key=value ...]

Kill moments are drawn (seeded) uniformly over ``--expected-s`` seconds of *run* time, the summed time
the process was alive, and applied one after another: start (or ``--resume``), wait until the next kill
moment, SIGKILL, repeat; after the last kill the run finishes. Reported per kill: the run time at the
kill, the age of the newest checkpoint at that moment (``work_lost_s``: what the resume has to redo,
up to the process start-up), and at the end:
- ``queries_rebought``: oracle answers paid beyond the budget, counted at the oracle itself through the
  ``SQDF_BBO_ORACLE_LOG`` hook of ``sqdf_bbo/envs.py`` (must be 0: the query journal replays answers);
- ``final_equal``: whether queries.csv and the final metrics equal an uninterrupted run's (``--reference``
  runs one first; off by default because it doubles the cost);
- the median and maximum work lost per kill, and the total wall time.
Give the benchmark the machine alone and record ``uptime``'s load average beside its numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.perf_main import git_commit_short


def _run_folder(out: Path) -> Path | None:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return dirs[0] if dirs else None


def newest_checkpoint_age(run_dir: Path | None, now: float) -> float:
    """Seconds since the newest checkpoint file was written (NaN before the first one)."""
    if run_dir is None or not (run_dir / "checkpoint" / "state.json").exists():
        return float("nan")
    return now - (run_dir / "checkpoint" / "state.json").stat().st_mtime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fault_injection", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="aesthetic")
    p.add_argument("--method", default="sqdf")
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--expected-s", type=float, default=600.0, help="run time over which kills are spread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fault_injection")
    p.add_argument("--csv", default="results/fault_injection.csv")
    p.add_argument("--reference", action="store_true", help="also run uninterrupted and compare the results")
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args(argv)
    out = Path(a.out)
    base = ["--task", a.task, "--method", a.method, "--budget", str(a.budget), "--seed", str(a.seed),
            "--no-progress"] + [x for s in a.sets for x in ("--set", s)]
    rng = random.Random(a.seed)
    moments = sorted(rng.uniform(3.0, a.expected_s) for _ in range(a.kills))
    oracle_log = (out / "oracle_calls.log").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if oracle_log.exists():
        oracle_log.unlink()
    env = dict(os.environ, SQDF_BBO_ORACLE_LOG=str(oracle_log))
    killed_dir = out / "killed"
    alive, rows, t_start = 0.0, [], time.time()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    commit_at_start = git_commit_short()  # the code the kills run (resumes re-import it)
    first = True
    for i, moment in enumerate(moments + [None]):
        cmd = [sys.executable, "-m", "sqdf_bbo.run", *base, "--out", str(killed_dir)] + ([] if first else ["--resume"])
        first = False
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if moment is None:
            _, err = proc.communicate()
            alive += time.time() - t0
            if proc.returncode != 0:
                print(err, file=sys.stderr)
                return 1
            break
        try:
            proc.wait(timeout=max(0.0, moment - alive))
        except subprocess.TimeoutExpired:
            now = time.time()
            age = newest_checkpoint_age(_run_folder(killed_dir), now)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            alive += now - t0
            rows.append({"kill": i + 1, "run_time_s": round(alive, 2), "work_lost_s": round(age, 2)})
            print(f"kill {i + 1}: at run time {alive:.1f}s, newest checkpoint {age:.1f}s old", flush=True)
            continue
        alive += time.time() - t0  # finished before this kill moment: the remaining kills do not happen
        if proc.returncode != 0:
            print(proc.stderr.read() if proc.stderr else "", file=sys.stderr)
            return 1
        break
    paid = sum(int(x) for x in oracle_log.read_text().split()) if oracle_log.exists() else 0
    run_dir = _run_folder(killed_dir)
    summary = {"task": a.task, "method": a.method, "budget": a.budget, "kills_done": len(rows),
               "queries_paid": paid, "queries_rebought": paid - a.budget, "total_wall_s": round(time.time() - t_start, 1),
               "run_time_s": round(alive, 1)}
    lost = sorted(r["work_lost_s"] for r in rows if r["work_lost_s"] == r["work_lost_s"])
    if lost:
        summary.update(work_lost_median_s=lost[len(lost) // 2], work_lost_max_s=lost[-1])
    if a.reference:
        ref_dir = out / "reference"
        rc = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *base, "--out", str(ref_dir)], env=dict(os.environ)).returncode
        ref = _run_folder(ref_dir)
        if rc == 0 and ref is not None and run_dir is not None:
            fa, fb = (json.loads((d / "final.json").read_text()) for d in (ref, run_dir))
            for d in (fa, fb):
                for k in ("wall_time_s", "peak_mem_mb", "run_dir"):
                    d.pop(k, None)
            summary["final_equal"] = fa == fb and (ref / "queries.csv").read_bytes() == (run_dir / "queries.csv").read_bytes()
    summary["git_commit"] = commit_at_start
    try:
        summary["load_average_before"] = load_before
        summary["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    print(json.dumps(summary, indent=2))
    if a.csv:
        import pandas as pd

        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([dict(summary, **r) for r in rows] or [summary]).to_csv(a.csv, index=False)
    return 0 if summary["queries_rebought"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

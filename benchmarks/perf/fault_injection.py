"""Fault injection (a benchmark, not a test): SIGKILL the main command at random moments, resume it each
time, and report what the kills cost.

    python -m benchmarks.perf.fault_injection [--task aesthetic] [--method sqdf] [--budget 5000] [--kills 20]
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

``--agent-faults`` instead runs a plug-in agent in its own process (:class:`FaultAgent`, isolated as every
``module:Class`` plug-in is) that fails in its first ``improve``: ``exit`` (os._exit(3)), ``segv`` (a
segfault), ``hang`` (sleeps past ``run.agent_timeout_s``) and ``raise`` (an exception); each must end with a
non-zero status and one line, then ``--resume`` must finish with no oracle answer bought twice and the
uninterrupted run's results. ``concurrent`` starts ``--concurrent`` copies of one command on one run folder
at once: one must finish, every other must refuse, and the oracle must be paid exactly the budget. One row
per scenario (``--csv``, default results/fault_injection_agents.csv).
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

from benchmarks.common.provenance import git_commit_short, load_average, provenance


def _run_folder(out: Path) -> Path | None:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    return dirs[0] if dirs else None


def newest_checkpoint_age(run_dir: Path | None, now: float) -> float:
    """Seconds since the newest checkpoint file was written (NaN before the first one)."""
    if run_dir is None or not (run_dir / "checkpoint" / "state.json").exists():
        return float("nan")
    return now - (run_dir / "checkpoint" / "state.json").stat().st_mtime


def _fault_agent():
    """FaultAgent, built on first use (importing the agent classes costs a second)."""
    import torch

    from sqdf_bbo.agents.base import Agent

    class FaultAgent(Agent):
        """Uniform designs in the box; fails in its first improve() as SQDF_BBO_AGENT_FAULT says (exit,
        segv, hang, raise; unset: never)."""

        def propose(self, n, generator):
            lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.task.bounds)
            return lo + (hi - lo) * torch.rand((n, *self.task.design_shape), generator=generator)

        def improve(self):
            fault = os.environ.get("SQDF_BBO_AGENT_FAULT")
            if fault == "exit":
                os._exit(3)
            if fault == "segv":
                import ctypes

                ctypes.string_at(0)
            if fault == "hang":
                time.sleep(10**6)
            if fault == "raise":
                raise RuntimeError("injected agent fault")
            return {}

    return FaultAgent


def __getattr__(name: str):
    if name == "FaultAgent":  # --method benchmarks.perf.fault_injection:FaultAgent
        return _fault_agent()
    raise AttributeError(name)


AGENT_FAULTS = ("exit", "segv", "hang", "raise")


def agent_faults(a, out: Path) -> list[dict]:
    """One row per agent fault and one for concurrent starts (see the module docstring)."""
    method = "benchmarks.perf.fault_injection:FaultAgent"
    cmd = [sys.executable, "-m", "sqdf_bbo.run", "--task", a.task, "--method", method, "--budget", str(a.budget),
           "--seed", str(a.seed), "--no-progress", "--set", "run.agent_timeout_s=5",
           *[x for s in a.sets for x in ("--set", s)]]
    ref_dir = out / "reference"
    ref = subprocess.run(cmd + ["--out", str(ref_dir)], capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"the reference run failed: {ref.stderr.strip()[-500:]}")
    ref_run = _run_folder(ref_dir)
    rows = []

    def same_as_reference(d: Path | None) -> bool:
        if d is None or not (d / "final.json").exists():
            return False
        fa, fb = (json.loads((x / "final.json").read_text()) for x in (ref_run, d))
        for f in (fa, fb):
            for k in ("wall_time_s", "peak_mem_mb", "run_dir"):
                f.pop(k, None)
        return fa == fb and (ref_run / "queries.csv").read_bytes() == (d / "queries.csv").read_bytes()

    for fault in AGENT_FAULTS:
        folder, log = out / fault, (out / f"{fault}_oracle.log").resolve()
        log.unlink(missing_ok=True)
        env = dict(os.environ, SQDF_BBO_ORACLE_LOG=str(log))
        t0 = time.time()
        first = subprocess.run(cmd + ["--out", str(folder)], env=dict(env, SQDF_BBO_AGENT_FAULT=fault),
                               capture_output=True, text=True, timeout=900)
        t_fail = time.time() - t0
        resumed = subprocess.run(cmd + ["--out", str(folder), "--resume"], env=env, capture_output=True, text=True,
                                 timeout=900)
        lines = first.stderr.strip().splitlines()
        paid = sum(int(x) for x in log.read_text().split()) if log.exists() else 0
        rows.append({"scenario": f"agent_{fault}", "status": first.returncode, "one_line": len(lines) == 1,
                     "message": lines[-1][:160] if lines else "", "fail_wall_s": round(t_fail, 1),
                     "resume_status": resumed.returncode, "queries_paid": paid,
                     "queries_rebought": paid - a.budget, "final_equal": same_as_reference(_run_folder(folder))})
        print(json.dumps(rows[-1]), flush=True)
    # concurrent starts of one command on one run folder
    folder, log = out / "concurrent", (out / "concurrent_oracle.log").resolve()
    log.unlink(missing_ok=True)
    env = dict(os.environ, SQDF_BBO_ORACLE_LOG=str(log))
    t0 = time.time()
    procs = [subprocess.Popen(cmd + ["--out", str(folder)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(a.concurrent)]
    codes = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    paid = sum(int(x) for x in log.read_text().split()) if log.exists() else 0
    refused = sum(rc == 2 and ("in use by another process" in err or "already holds" in err) for rc, err in codes)
    rows.append({"scenario": "concurrent", "status": sorted(rc for rc, _ in codes), "one_line": True,
                 "message": f"{sum(rc == 0 for rc, _ in codes)} finished, {refused} refused",
                 "fail_wall_s": round(time.time() - t0, 1), "resume_status": None, "queries_paid": paid,
                 "queries_rebought": paid - a.budget, "final_equal": same_as_reference(_run_folder(folder))})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.fault_injection", description=__doc__.split("\n")[0])
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
    p.add_argument("--agent-faults", action="store_true",
                   help="agent crashes, hangs and concurrent starts instead of kills (see the module docstring)")
    p.add_argument("--concurrent", type=int, default=4, help="copies started at once (--agent-faults)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.agent_faults:
        return _agent_fault_report(a, out)
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
    load_before = load_average(all_three=True)
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
    prov = provenance(load_before)  # the machine and the load average now; the commit is the kills' own
    summary.update(git_commit=commit_at_start, load_average_before=prov["load_before"],
                   load_average=prov["load_after"], machine=prov["machine"])
    print(json.dumps(summary, indent=2))
    if a.csv:
        import pandas as pd

        Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([dict(summary, **r) for r in rows] or [summary]).to_csv(a.csv, index=False)
    return 0 if summary["queries_rebought"] == 0 else 1


def _agent_fault_report(a, out: Path) -> int:
    """Run :func:`agent_faults`, print and write its rows (with the load average, the commit and the machine)."""
    out.mkdir(parents=True, exist_ok=True)
    load_before = load_average(all_three=True)
    rows = agent_faults(a, out)
    prov = provenance(load_before)
    extra = {"task": a.task, "budget": a.budget, "git_commit": prov["git_commit"],
             "load_average_before": prov["load_before"], "load_average": prov["load_after"], "machine": prov["machine"]}
    csv = a.csv if a.csv != "results/fault_injection.csv" else "results/fault_injection_agents.csv"
    if csv:
        import pandas as pd

        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([dict(extra, **r) for r in rows]).to_csv(csv, index=False)
    ok = all(r["queries_rebought"] == 0 and r["final_equal"] for r in rows)
    ok = ok and all(r["status"] != 0 and r["one_line"] and r["resume_status"] == 0 for r in rows[:-1])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the user's main command and record its peak memory (target: <= 10 min, <= 4 GB on 2 CPU cores).

    python -m benchmarks.perf.perf_main                       # python -m sqdf_bbo.run --task aesthetic --budget 5000
    python -m benchmarks.perf.perf_main --budget 1000 --profile --seeds 0 1 2

Each seed runs the real CLI in a child process (fresh interpreter, so start-up and weight loading count),
into a temporary run folder; wall time, the child's CPU time (user + sys) and peak resident memory
(``ru_maxrss`` of the child) are measured from outside. The 1-minute load average before and after is
written too: on a shared machine (load > number of cores) wall time overstates the cost and CPU time is the
better guide. ``--profile`` runs the child under cProfile and writes the top functions by cumulative time
to ``results/perf_main_profile_s<seed>.txt``.

Appends one row per seed to ``results/perf_main.csv``: task, method, budget, seed, threads, wall_s, cpu_s,
peak_rss_mb, load_before, load_after, eval_reward_pretrained (round 0), eval_reward_final,
eval_ground_truth_A_final, fd_phi_final, path_kl_final, target_wall_s, meets_target, machine, git_commit,
and where the time went (``PHASE_COLUMNS``, from the run's rounds.jsonl).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# git_commit_short and code_tree stay importable from here: precision_check reads them as perf_main's
from benchmarks.common.provenance import code_tree, git_commit_short, load_average, provenance  # noqa: F401
from benchmarks.perf.results_csv import emit_row

#: where the wall time went: start-up and weight loading (wall time outside the rounds), the round-0
#: evaluation of the pretrained model, then per phase summed over rounds 1.. (rounds.jsonl's phase_wall_s)
PHASE_COLUMNS = ["startup_s", "eval_pretrained_s", "propose_s", "query_s", "improve_s", "evaluate_s",
                 "checkpoint_s"]
COLUMNS = ["task", "method", "budget", "seed", "threads", "wall_s", "cpu_s", "peak_rss_mb", "load_before",
           "load_after", "eval_reward_pretrained", "eval_reward_final", "eval_ground_truth_A_final",
           "fd_phi_final", "path_kl_final", "target_wall_s", "meets_target", "machine", "git_commit",
           *PHASE_COLUMNS]


def run_once(task: str, method: str, budget: int, seed: int, threads: int, out: Path, profile: bool,
             extra: list[str]) -> dict:
    """Run the CLI once in a child process; returns the CSV row."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="perf_main_") as tmp:
        cli = ["-m", "sqdf_bbo.run", "--task", task, "--method", method, "--budget", str(budget),
               "--seed", str(seed), "--out", tmp, "--no-progress", *extra]
        prof = Path(tmp) / "profile.out"
        cmd = [sys.executable] + (["-m", "cProfile", "-o", str(prof)] if profile else []) + cli
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"main command failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        run_dir = next(d for d in Path(tmp).iterdir() if d.is_dir())  # (profile.out lies beside it)
        final = json.loads((run_dir / "final.json").read_text())
        rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines() if x.strip()]
        if profile:
            import pstats

            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out.parent / f"perf_main_profile_s{seed}.txt", "w") as f:
                pstats.Stats(str(prof), stream=f).sort_stats("cumulative").print_stats(40)
    phases = {f"{k}_s": round(sum(r.get("phase_wall_s", {}).get(k, 0.0) for r in rounds[1:]), 1)
              for k in ("propose", "query", "improve", "evaluate", "checkpoint")}
    phases["eval_pretrained_s"] = round(rounds[0].get("round_wall_s", 0.0), 1) if rounds else 0.0
    phases["startup_s"] = round(wall - sum(r.get("round_wall_s", 0.0) for r in rounds), 1)
    return {
        **phases,
        "task": task, "method": method, "budget": budget, "seed": seed, "threads": threads,
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),  # Linux: kB; max over children so far
        "eval_reward_pretrained": rounds[0].get("eval_reward") if rounds else None,
        "eval_reward_final": final.get("eval_reward"),
        "eval_ground_truth_A_final": final.get("eval_ground_truth_A"),
        "fd_phi_final": final.get("fd_phi"), "path_kl_final": final.get("path_kl"),
        "target_wall_s": 600, "meets_target": bool(wall <= 600 and after.ru_maxrss / 1024 <= 4096),
        **provenance(load_before=load0),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_main", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="aesthetic")
    p.add_argument("--method", default="sqdf")
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the child")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", default="results/perf_main.csv")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed through to sqdf_bbo.run")
    a = p.parse_args(argv)
    if a.budget < 1 or a.threads < 1:
        raise SystemExit(f"error: --budget and --threads must be >= 1, got {a.budget}, {a.threads}")
    out = Path(a.out)
    extra = [x for s in a.sets for x in ("--set", s)]
    for seed in a.seeds:
        emit_row(run_once(a.task, a.method, a.budget, seed, a.threads, out, a.profile, extra), COLUMNS, out)


if __name__ == "__main__":
    main()

"""Does bf16 autocast change the main command's results beyond seed noise? fp32 vs bf16 over seeds.

    python -m benchmarks.perf.precision_check --seeds 0 1 2      # 6 runs of the main command; the machine alone
    python -m benchmarks.perf.precision_check --report           # the table from results/precision_main.csv

Runs ``python -m sqdf_bbo.run --task aesthetic --budget 5000`` once per seed and precision
(``--set run.precision=fp32`` / ``bf16``) in a child process (``benchmarks.perf.perf_main.run_once``: wall
time, CPU time, peak memory, load average, final metrics) and appends one row per run to
``results/precision_main.csv``. A (precision, seed) already there for the checkout's commit, or for one
with the same library code (``perf_main.code_tree``), on the same CPU model (the ``machine`` column), is
skipped, so the check resumes across sessions; rows of another CPU model never pair with this one's (the
same seed gives other trajectories on another CPU's kernels, in fp32 as well).

Report, per metric (final eval reward, ground truth A, path KL, Fréchet distance in φ): each precision's
mean and standard deviation over seeds, and the paired difference bf16 - fp32 (same seed: same initial
noises and eval draws, trajectories then part by rounding) with a 95 % Student-t interval over seeds.
"within seed noise" when that interval contains 0. With 3 seeds the interval is wide (t = 4.30): it can
only rule out differences of the order of the seed-to-seed spread, which is what the check asks.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from benchmarks.common import provenance
from benchmarks.common.markdown import markdown_table
from benchmarks.perf import perf_main
from benchmarks.perf.results_csv import append_row

PRECISIONS = ("fp32", "bf16")
COLUMNS = ["precision", *perf_main.COLUMNS]
METRICS = {"eval_reward_final": "final eval reward", "eval_ground_truth_A_final": "ground truth A",
           "path_kl_final": "path KL (nats)", "fd_phi_final": "Fréchet distance (φ)", "wall_s": "wall time (s)"}


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same_code(rows: Sequence[dict], commit: str) -> set[str]:
    """The commits in ``rows`` that run the same code as ``commit`` (itself, and any with equal
    ``perf_main.code_tree``): their rows pair with its rows, so the check resumes across doc-only commits."""
    tree = perf_main.code_tree(commit)
    return {commit} | {c for c in {r["git_commit"] for r in rows} if tree and perf_main.code_tree(c) == tree}


def comparable(rows: Sequence[dict], commit: str, machine: str) -> list[dict]:
    """The rows that pair with ``commit``'s runs on ``machine``: the same library code (``same_code``) and
    the same CPU model."""
    commits = same_code(rows, commit)
    return [r for r in rows if r["git_commit"] in commits and r["machine"] == machine]


def todo(rows: Sequence[dict], seeds: Sequence[int], commit: str, task: str, method: str, budget: int,
         threads: int, machine: str) -> list[tuple[str, int]]:
    """The (precision, seed) runs not yet in ``rows`` for this commit's code, setting and CPU model
    (``machine``, as ``provenance.machine`` names it), fp32 first per seed."""
    done = {(r["precision"], int(r["seed"])) for r in comparable(rows, commit, machine)
            if r["task"] == task and r["method"] == method and int(r["budget"]) == budget
            and int(r["threads"]) == threads}
    return [(p, s) for s in seeds for p in PRECISIONS if (p, s) not in done]


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of paired differences: Student-t with n - 1 degrees of freedom."""
    from scipy import stats as st

    d = np.asarray(diffs, float)
    if len(d) < 2:
        return float(d.mean()) if len(d) else math.nan, math.nan, math.nan
    half = st.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def report(rows: Sequence[dict], commit: Optional[str] = None, machine: Optional[str] = None) -> str:
    """Markdown table comparing fp32 and bf16 on the seeds both precisions ran on one CPU model (the rows
    of the latest row's commit code, see ``same_code``, and CPU model, unless ``commit`` / ``machine`` are
    given)."""
    if not rows:
        raise SystemExit("error: no rows to report; run the check first")
    commit = commit or rows[-1]["git_commit"]
    machine = machine or rows[-1]["machine"]
    by = {(r["precision"], int(r["seed"])): r for r in comparable(rows, commit, machine)}
    seeds = sorted(s for (p, s) in by if p == "fp32" and ("bf16", s) in by)
    if not seeds:
        raise SystemExit(f"error: no seed has both an fp32 and a bf16 row at commit {commit} on {machine}")
    used = sorted({by[p, s]["git_commit"] for s in seeds for p in PRECISIONS})
    commit_text = (f"commit {used[0]}" if len(used) == 1 else
                   f"commits {', '.join(used)} (the same sqdf_bbo/ and baselines/ trees)")
    lines = [f"fp32 vs bf16 autocast, `python -m sqdf_bbo.run --task {by['fp32', seeds[0]]['task']} --budget "
             f"{by['fp32', seeds[0]]['budget']}`, seeds {' '.join(map(str, seeds))}, {commit_text}, {machine} "
             f"(load average before each run: {', '.join(by[p, s]['load_before'] for s in seeds for p in PRECISIONS)})",
             ""]
    cells = []
    for key, name in METRICS.items():
        a = np.array([float(by["fp32", s][key]) for s in seeds])
        b = np.array([float(by["bf16", s][key]) for s in seeds])
        m, lo, hi = paired_t_interval(b - a)
        verdict = ("–" if not np.isfinite(lo) else "within seed noise" if lo <= 0 <= hi
                   else "bf16 higher" if lo > 0 else "bf16 lower")
        sd = (lambda x: f" ± {x.std(ddof=1):.4g}" if len(x) > 1 else "")
        cells.append([name, f"{a.mean():.4g}{sd(a)}", f"{b.mean():.4g}{sd(b)}",
                      f"{m:+.4g} [{lo:+.4g}, {hi:+.4g}]", verdict])
    lines.append(markdown_table(["metric", "fp32 mean ± sd", "bf16 mean ± sd", "bf16 − fp32 [95 % t-interval]",
                                 "verdict"], cells))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.precision_check", description=__doc__.splitlines()[0])
    p.add_argument("--task", default="aesthetic")
    p.add_argument("--method", default="sqdf")
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of each run")
    p.add_argument("--out", default="results/precision_main.csv")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed through to sqdf_bbo.run (not run.precision)")
    p.add_argument("--report", action="store_true", help="run nothing; print the comparison of the CSV's rows")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.report:
        print(report(read_rows(out)), end="")
        return 0
    if a.budget < 1 or a.threads < 1:
        print(f"error: --budget and --threads must be >= 1, got {a.budget}, {a.threads}", file=sys.stderr)
        return 2
    if any(x.split("=", 1)[0].strip() == "run.precision" for x in a.sets):
        print("error: --set run.precision is what this check varies; leave it out", file=sys.stderr)
        return 2
    extra = [x for s in a.sets for x in ("--set", s)]
    commit = perf_main.git_commit_short()  # the commit perf_main's rows record (benchmarks.common.provenance)
    plan = todo(read_rows(out), a.seeds, commit, a.task, a.method, a.budget, a.threads, provenance.machine())
    print(f"precision check: {len(plan)} run(s) to do at commit {commit}: "
          + ", ".join(f"{prec}/s{s}" for prec, s in plan), file=sys.stderr)
    for prec, seed in plan:
        row = perf_main.run_once(a.task, a.method, a.budget, seed, a.threads, out, False,
                                 [*extra, "--set", f"run.precision={prec}"])
        append_row(out, {"precision": prec, **row}, COLUMNS)
        print(f"{prec} seed {seed}: {row['wall_s']} s, eval reward {row['eval_reward_final']:.4g}, "
              f"path KL {row['path_kl_final']:.4g}", file=sys.stderr, flush=True)
    rows = read_rows(out)
    if rows:
        print(report(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

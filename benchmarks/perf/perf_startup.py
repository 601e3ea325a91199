"""Fixed cost of a synthetic run: the seconds a run spends outside its own timed rounds (target: <= 2 s).

    python -m benchmarks.perf.perf_startup                    # levy / sqdf / budget 64 / one round, 3 repeats
    python -m benchmarks.perf.perf_startup --method random --repeats 5 --append

Each repeat runs the main command in a fresh interpreter,

    python -m sqdf_bbo.run --task levy --method sqdf --budget 64 --set run.rounds=1 --no-progress --out TMP

through a small wrapper that calls ``sqdf_bbo.run.main`` with the same arguments and also times three parts
of the start-up from inside: ``import sqdf_bbo.run``, the package versions recorded in config.json
(``sqdf_bbo.harness.persist._versions``) and the PNG renders (the runner's ``render`` phase, through
``RunCallbacks``). ``fixed_s`` is the child's wall time (measured
outside, interpreter start included) minus the run's own ``wall_time_s`` (final.json: the timed rounds).
Two floors, each the wall time of a fresh interpreter doing only what a synthetic run cannot start without:
``floor_torch_s`` imports torch and makes one ``torch.optim`` optimizer (the first one imports torch's
compiler stack, ``torch._dynamo``: every fine-tuner and the proxy make one) (``FLOOR_TORCH_CODE``);
``floor_s`` also imports BoTorch's test functions (``FLOOR_CODE``; they import gpytorch and scipy). So
``fixed_s - floor_s`` is the part of the fixed cost that a change to the harness can remove.
The printed row is the median over repeats of each timing, with the command, the CPU model and the
1-minute load average before and after: on a shared machine (load above the number of cores) every
number overstates the cost. ``--append`` adds the row to ``results/perf_startup.csv``.
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

COLUMNS = ["task", "method", "budget", "rounds", "threads", "repeats", "wall_s", "run_wall_s", "fixed_s",
           "import_run_s", "versions_s", "render_s", "floor_torch_s", "floor_s", "target_fixed_s", "meets_target", "load_before",
           "load_after", "command", "machine", "git_commit"]
TARGET_FIXED_S = 2.0
#: what a synthetic run cannot do without: torch and its first optimizer (which imports torch._dynamo) ...
FLOOR_TORCH_CODE = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
#: ... and the tasks' test functions (BoTorch, with gpytorch and scipy)
FLOOR_CODE = FLOOR_TORCH_CODE + "; import botorch.test_functions.synthetic"

#: the child: sqdf_bbo.run.main(argv) (what ``python -m sqdf_bbo.run`` calls), with three parts timed
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import sqdf_bbo.run as R
parts = {"import_run_s": time.perf_counter() - t0, "versions_s": 0.0, "render_s": 0.0}

import sqdf_bbo.harness.persist as P

def timed(fn, key):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            parts[key] += time.perf_counter() - t
    return wrapper

class Render(R.RunCallbacks):  # the runner's render phase (sample grids)
    def on_phase_end(self, name, seconds):
        if name == "render":
            parts["render_s"] += seconds

P._versions = timed(P._versions, "versions_s")  # no phase of its own: the runner reads it as persist._versions
sys.argv = ["sqdf_bbo.run", *sys.argv[2:]]
rc = R.main(sys.argv[1:], callbacks=Render())
with open(PARTS_PATH, "w") as f:
    json.dump(parts, f)
sys.exit(rc)
"""


def cli_args(task: str, method: str, budget: int, rounds: int, out: str, extra: list[str]) -> list[str]:
    return ["--task", task, "--method", method, "--budget", str(budget), "--set", f"run.rounds={rounds}",
            "--no-progress", "--out", out, *extra]


def run_once(task: str, method: str, budget: int, rounds: int, threads: int, extra: list[str]) -> dict:
    """One child run; returns its timings in seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="perf_startup_") as tmp:
        parts_path = Path(tmp) / "parts.json"
        code = _CHILD.replace("PARTS_PATH", repr(str(parts_path)))
        cmd = [sys.executable, "-c", code, "--", *cli_args(task, method, budget, rounds, tmp, extra)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        final = json.loads(next(Path(tmp).glob("*/final.json")).read_text())
        parts = json.loads(parts_path.read_text())
    floors = {}
    for key, floor_code in (("floor_torch_s", FLOOR_TORCH_CODE), ("floor_s", FLOOR_CODE)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", floor_code], env=env, check=True)
        floors[key] = time.perf_counter() - t0
    return {"wall_s": wall, "run_wall_s": float(final["wall_time_s"]),
            "fixed_s": wall - float(final["wall_time_s"]), **parts, **floors}


def measure(task: str = "levy", method: str = "sqdf", budget: int = 64, rounds: int = 1, threads: int = 1,
            repeats: int = 3, extra: list[str] | None = None) -> dict:
    """The CSV row: medians over ``repeats`` child runs, plus the conditions they ran under."""
    extra = list(extra or [])
    load_before = load_average()
    runs = [run_once(task, method, budget, rounds, threads, extra) for _ in range(repeats)]
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    command = "python -m sqdf_bbo.run " + " ".join(cli_args(task, method, budget, rounds, "TMP", extra))
    return {"task": task, "method": method, "budget": budget, "rounds": rounds, "threads": threads,
            "repeats": repeats, **med, "target_fixed_s": TARGET_FIXED_S,
            "meets_target": med["fixed_s"] <= TARGET_FIXED_S, **provenance(load_before, command)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="levy")
    p.add_argument("--method", default="sqdf")
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the child")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set passed to the run (repeatable)")
    p.add_argument("--append", action="store_true", help="append the row to --out")
    p.add_argument("--out", type=Path, default=Path("results/perf_startup.csv"))
    a = p.parse_args(argv)
    extra = [x for s in a.sets for x in ("--set", s)]
    row = measure(a.task, a.method, a.budget, a.rounds, a.threads, a.repeats, extra)
    emit_row(row, COLUMNS, a.out if a.append else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to a verdict: the wall time of ``benchmarks.run.compare`` for a new method, canary included.

    python -m benchmarks.perf.perf_compare                       # the README's 12-line plug-in, synthetic suite
    python -m benchmarks.perf.perf_compare --tasks levy --append  # one task; add the row to results/perf_compare.csv

The method is the 12-line plug-in fine-tuner of docs/extending.md (``# myfinetuner.py``: reward backprop
through the whole chain, about as costly per run as AlignProp), written to a temporary folder on the
``PYTHONPATH`` exactly as a user would save it; ``--method`` names another one. The command timed is

    python -m benchmarks.compare --method myfinetuner:RewardBackprop --out TMP --workers W [--tasks ...]

on the committed per-run records, so it runs the canary (one committed cell, the records' seeds) and the
method's grid (the grid rule: its learning rate x 0.01, 0.1, 1, 10) on every task and seed, then writes the
verdicts and the report. The row records the wall time, the number of runs, the canary's verdict, the
targets (synthetic suite <= 15 min, image suite <= 90 min on 2 cores), the CPU model and the load average
before and after: on a shared machine (load above the number of cores) the time overstates.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.provenance import load_average, provenance
from benchmarks.perf.results_csv import emit_row

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["suite", "tasks", "method", "workers", "runs", "wall_s", "wall_min", "target_min", "meets_target",
           "canary", "verdict_rows", "load_before", "load_after", "command", "machine", "git_commit"]
TARGET_MIN = {"synthetic": 15.0, "image": 90.0}


def plugin_source() -> str:
    """The ``# myfinetuner.py`` example of docs/extending.md, verbatim."""
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    m = re.search(r"```python\n(# myfinetuner\.py.*?)```", text, re.S)
    if not m:
        raise SystemExit("error: docs/extending.md has no '# myfinetuner.py' example")
    return m.group(1)


def canary_verdict(output: str) -> str:
    """The canary's verdict line of a compare's output ("canary <cell>: identical to ..." or "... inside the
    committed 95% t-intervals"), not the line that announces it; "" when the compare ran no canary."""
    lines = [ln.strip().removeprefix("compare: ") for ln in output.splitlines() if ln.strip().startswith("compare: canary")]
    verdicts = [ln for ln in lines if ":" in ln.removeprefix("canary ")]
    return verdicts[-1] if verdicts else ""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="myfinetuner:RewardBackprop",
                   help="the method compared (default: the docs' 12-line plug-in, written to a temp folder)")
    p.add_argument("--suite", choices=sorted(TARGET_MIN), default="synthetic")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task of the records)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--append", action="store_true", help="add the row to --out")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "perf_compare.csv")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "myfinetuner.py").write_text(plugin_source())
        out = tmp / "compare"
        cmd = [sys.executable, "-m", "benchmarks.compare", "--method", a.method, "--suite", a.suite,
               "--out", str(out), "--workers", str(a.workers), "--no-progress"]
        if a.tasks:
            cmd += ["--tasks", a.tasks]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        load_before = load_average()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"error: the comparison failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        runs = len({f.parent for f in out.glob("**/final.json")})
        verdicts = (out / "verdicts.csv").read_text().count("\n") - 1 if (out / "verdicts.csv").exists() else 0
        canary = canary_verdict(proc.stdout + proc.stderr)
    target = TARGET_MIN[a.suite]
    shown = "python -m benchmarks.compare --method " + a.method + (f" --tasks {a.tasks}" if a.tasks else "") + \
        f" --workers {a.workers}"
    row = {"suite": a.suite, "tasks": a.tasks or "all", "method": a.method, "workers": a.workers, "runs": runs,
           "wall_s": round(wall, 1), "wall_min": round(wall / 60, 2), "target_min": target,
           "meets_target": wall / 60 <= target, "canary": canary[:200], "verdict_rows": verdicts,
           **provenance(load_before, shown)}
    emit_row(row, COLUMNS, a.out if a.append else None)


if __name__ == "__main__":
    main()

"""Re-run committed run records with the current code and say whether they reproduce bit for bit.

    python -m benchmarks.run.rerun_record RUN_DIR [RUN_DIR ...] [--threads 1]

Each RUN_DIR holds a run's ``config.json``, ``rounds.jsonl`` and ``final.json`` (e.g. one folder under
``results/run_records/``). The run is made again from its config (task, method, budget, seed and every
resolved run and method setting) in a temporary folder, then every number of ``final.json`` and of each
round's line in ``rounds.jsonl`` is compared exactly, except the wall-clock, memory and path fields. On the
CPU model that wrote the record (``cpu_model`` in its config) a refactoring that keeps the arithmetic must
print ``identical``; on another CPU model the kernels round differently and a difference says nothing.
Exit status 0 when every record reproduces, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run.sweep import THREAD_VARS

#: keys whose values are measurements of the machine, not results
VOLATILE = ("wall_time_s", "peak_mem_mb", "run_dir", "round_wall_s", "time_s", "_s")


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith("_s") or key.endswith("_wall_s")


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Paths where two JSON values differ (floats compared exactly, NaN equal to NaN)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if _volatile(k):
                continue
            if k not in old or k not in new:
                out.append(f"{where}.{k}: only in {'new' if k in new else 'old'}")
                continue
            out += differences(old[k], new[k], f"{where}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: length {len(old)} vs {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return []
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def rerun_command(config: dict, out: Path) -> list[str]:
    """The ``python -m sqdf_bbo.run`` command that remakes the run of ``config`` into ``out``."""
    cmd = [sys.executable, "-m", "sqdf_bbo.run", "--task", config["task"], "--method", config["method"],
           "--budget", str(config["budget"]), "--seed", str(config["seed"]), "--out", str(out), "--no-progress"]
    for key, value in config["agent"].items():
        cmd += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={json.dumps(value)}"]
    for key, value in config.get("task_overrides", {}).items():
        cmd += ["--set", f"task.{key}={json.dumps(value)}"]
    for key, value in config["run"].items():
        if value is not None and key not in ("round_sizes",):
            cmd += ["--set", f"run.{key}={value!r}" if isinstance(value, str) else f"run.{key}={json.dumps(value)}"]
    return cmd


def rerun_env(config: dict, threads: int = 1) -> dict[str, str]:
    """The re-run's environment: ``threads`` for torch's OpenMP and MKL, as a sweep's worker sets them, and
    numpy's BLAS at the record's ``blas_threads``. A record without it (made before it was recorded) ran
    with the BLAS library's default, one thread per core: a sweep's worker imported numpy before it set
    the variables (OpenBLAS would otherwise also read ``OMP_NUM_THREADS``, so the count is set explicitly).
    The BLAS count only changes the rounding of large matrix products (the image tier's Fréchet distance),
    never what is computed."""
    env = dict(os.environ, **{var: str(threads) for var in THREAD_VARS})
    blas = config.get("blas_threads")
    env["OPENBLAS_NUM_THREADS"] = str(int(blas) if blas is not None else os.cpu_count() or 1)
    return env


def check(record: Path, threads: int = 1) -> list[str]:
    """Differences between ``record`` and a fresh run of its config (empty: identical)."""
    config = json.loads((record / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        env = rerun_env(config, threads)
        proc = subprocess.run(rerun_command(config, Path(tmp)), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return [f"the re-run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"]
        (run,) = [d for d in Path(tmp).iterdir() if d.is_dir()]
        diffs = differences(json.loads((record / "final.json").read_text()),
                            json.loads((run / "final.json").read_text()), "final")
        old = [json.loads(x) for x in (record / "rounds.jsonl").read_text().splitlines() if x.strip()]
        new = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x.strip()]
        return diffs + differences(old, new, "rounds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run.rerun_record", description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the re-run (the records: 1)")
    args = p.parse_args(argv)
    bad = 0
    for record in args.records:
        diffs = check(record, args.threads)
        bad += bool(diffs)
        print(f"{record}: " + ("identical" if not diffs else f"{len(diffs)} differences: " + "; ".join(diffs[:5])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

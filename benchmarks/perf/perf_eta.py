"""How right the progress bar's ETA is: the bar's ETA at every update against the true remaining time.

    python -m benchmarks.perf.perf_eta                                  # the main command: aesthetic, budget 5000
    python -m benchmarks.perf.perf_eta --budget 1000 --append           # a smaller run; add the row to the CSV

Runs ``python -m sqdf_bbo.run --task TASK --method METHOD --budget BUDGET --out TMP [--set ...]`` with the bar
on and ``SQDF_BBO_ETA_LOG`` set, so every bar update logs (wall time, round, phase, predicted remaining, the
bar's ETA) as one JSON line (sqdf_bbo/progress.py); no stderr parsing. The true remaining time of a line is
the time of the bar's last line (the end of the last round) minus its time. The row reports, for the lines
from round 2 on (the costs measured in round 1 predict) whose true remaining time is at least
``--min-remaining-s`` (a relative error of seconds left is meaningless), the largest and the median
|ETA - true| / true, the largest |ETA - true| in seconds, the ETA against the truth at the start of each
round and, for reference, the largest error within round 1 (partly prior costs). With the command, the CPU model and the
1-minute load average before and after: on a shared machine (load above the number of cores) phases
slow down unevenly and every error grows. ``--append`` adds the row to ``results/perf_eta.csv``.
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

COLUMNS = ["task", "method", "budget", "wall_s", "samples_r2", "max_rel_err_r2", "median_rel_err_r2",
           "max_abs_err_s_r2", "eta_at_round_starts", "max_rel_err_r1", "min_remaining_s",
           "load_before", "load_after", "command", "machine", "git_commit"]


def analyse(lines: list[dict], min_remaining_s: float = 10.0) -> dict:
    """The error summary of one run's ETA log lines (see the module's doc)."""
    t_end = lines[-1]["t"]

    def rel(x: dict) -> float:
        true = t_end - x["t"]
        return abs(x["eta_s"] - true) / true if x["eta_s"] is not None else float("inf")

    late = [x for x in lines if x["round"] >= 2 and t_end - x["t"] >= min_remaining_s]
    early = [x for x in lines if x["round"] == 1 and t_end - x["t"] >= min_remaining_s and x["eta_s"] is not None]
    starts = []
    for r in sorted({x["round"] for x in lines if x["round"] >= 2}):
        first = next(x for x in lines if x["round"] == r)
        if first["eta_s"] is not None and first["phase"] not in ("done", "end"):  # not past the last round
            starts.append(f"r{r}: {first['eta_s']:.0f}s vs {t_end - first['t']:.0f}s")
    errs = [rel(x) for x in late]
    return {
        "samples_r2": len(late),
        "max_rel_err_r2": round(max(errs), 3) if errs else None,
        "median_rel_err_r2": round(statistics.median(errs), 3) if errs else None,
        "max_abs_err_s_r2": round(max((abs(x["eta_s"] - (t_end - x["t"])) for x in late if x["eta_s"] is not None),
                                      default=float("inf")), 1) if late else None,
        "eta_at_round_starts": "; ".join(starts),
        "max_rel_err_r1": round(max(rel(x) for x in early), 3) if early else None,
        "min_remaining_s": min_remaining_s,
    }


def cli_args(task: str, method: str, budget: int, out: str, extra: list[str]) -> list[str]:
    return ["--task", task, "--method", method, "--budget", str(budget), "--out", out, *extra]


def measure(task: str = "aesthetic", method: str = "sqdf", budget: int = 5000, extra: list[str] | None = None,
            min_remaining_s: float = 10.0, keep_log: Path | None = None) -> dict:
    """Run the command once with the ETA log on; the CSV row."""
    extra = list(extra or [])
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="perf_eta_") as tmp:
        log = Path(tmp) / "eta.jsonl"
        env = dict(os.environ, HF_HUB_OFFLINE="1", SQDF_BBO_ETA_LOG=str(log))
        cmd = [sys.executable, "-m", "sqdf_bbo.run", *cli_args(task, method, budget, str(Path(tmp) / "run"), extra)]
        t0 = time.perf_counter()
        with open(Path(tmp) / "stderr.txt", "w") as err:  # the bar goes there
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"run failed (exit {proc.returncode}):\n{(Path(tmp) / 'stderr.txt').read_text()[-3000:]}")
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        if keep_log is not None:
            keep_log.write_text(log.read_text())
    return {"task": task, "method": method, "budget": budget, "wall_s": round(wall, 1),
            **analyse(lines, min_remaining_s),
            **provenance(load_before, "python -m sqdf_bbo.run " + " ".join(cli_args(task, method, budget, "TMP",
                                                                                      extra)))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="aesthetic")
    p.add_argument("--method", default="sqdf")
    p.add_argument("--budget", type=int, default=5000)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set passed to the run (repeatable)")
    p.add_argument("--min-remaining-s", type=float, default=10.0,
                   help="lines with less true remaining time are not scored")
    p.add_argument("--keep-log", type=Path, help="copy the run's ETA log (JSON lines) here")
    p.add_argument("--append", action="store_true", help="append the row to --out")
    p.add_argument("--out", type=Path, default=Path("results/perf_eta.csv"))
    a = p.parse_args(argv)
    row = measure(a.task, a.method, a.budget, [x for s in a.sets for x in ("--set", s)], a.min_remaining_s,
                  a.keep_log)
    emit_row(row, COLUMNS, a.out if a.append else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

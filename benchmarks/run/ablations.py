"""SQDF's ablations as frontiers: one row per run of every variant beside the full method's frontier runs.

    python -m benchmarks.run.ablations --out results/run_records/sqdf_ablations_b1000 \
        --reference results/frontier_runs.csv --method sqdf --runs-csv results/sqdf_ablations_runs.csv

Each variant changes one setting of the method and sweeps the same knob grid as the frontier
(``benchmarks/run/reproduce_sqdf_ablations.sh``); its runs live in ``<out>/<key>=<value>/`` as a frontier's grid
folders. The full method is not re-run: its runs are the committed frontier's (``--reference``, a
``benchmarks.run.frontier --runs-csv`` file), taken with the pretrained model's runs of the same tasks.

The output has the frontier's runs-CSV columns, with each variant's runs named ``<method> <key>=<value>``
(e.g. ``sqdf gamma=1``) so that every frontier tool reads a variant as a method: ``benchmarks.run.frontier
--from-runs`` draws the tables and plots, ``benchmarks.report.frontier_readme --run-verdicts sqdf`` tests the
full method against each variant on common seeds. Scores are normalised with the reference's bounds per task
(the pretrained model's round 0 and the task's optimum), so a variant's score is on the frontier's scale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from benchmarks.report import run_folders as rf
from benchmarks.run import frontier as fr

#: the columns of the reference's normalisation, copied onto every variant's runs of the same task and budget
BOUNDS = ["norm_low", "norm_high", "norm_high_source"]


def variant_label(method: str, folder: str) -> str:
    """``sqdf`` and ``gamma=1`` -> ``sqdf gamma=1``: a variant's name in the tables."""
    return f"{method} {folder}"


def variant_folders(out: Path) -> list[Path]:
    """The variant folders under ``out`` (``<key>=<value>``), sorted; LeaderboardError when a name is not one."""
    found = sorted(p for p in Path(out).iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    bad = [p.name for p in found if "=" not in p.name]
    if bad:
        raise rf.LeaderboardError(f"{out}: {', '.join(bad)} is not a variant folder (<key>=<value>)")
    if not found:
        raise rf.LeaderboardError(f"{out}: no variant folder (<key>=<value>)")
    return found


def combine(reference: pd.DataFrame, variants: dict[str, pd.DataFrame], method: str) -> pd.DataFrame:
    """The reference's runs of ``method`` and of the pretrained model on the variants' tasks, then each
    variant's runs (``{folder: runs}``, method column ``method``) renamed :func:`variant_label` and
    re-normalised with the reference's bounds of their task and budget."""
    parts = []
    for folder, runs in variants.items():
        others = sorted(set(runs["method"]) - {method})
        if others:
            raise rf.LeaderboardError(f"variant {folder}: runs of {', '.join(others)}; expected only {method}")
        parts.append(runs.assign(method=variant_label(method, folder)))
    var = pd.concat(parts, ignore_index=True)
    keys = var[["task", "budget"]].drop_duplicates()
    ref = reference[reference["method"].isin([method, "pretrained"])].merge(keys, on=["task", "budget"])
    have = set(zip(ref.loc[ref["method"] == method, "task"], ref.loc[ref["method"] == method, "budget"]))
    missing = [f"{t} (budget {b})" for t, b in zip(keys["task"], keys["budget"]) if (t, b) not in have]
    if missing:
        raise rf.LeaderboardError(f"the reference has no runs of {method} on {', '.join(missing)}")
    bounds = ref.groupby(["task", "budget"])[BOUNDS].first().reset_index()
    var = rf.add_normalised(var.drop(columns=[c for c in BOUNDS + ["normalised_score"] if c in var]), bounds)
    return pd.concat([ref, var], ignore_index=True)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the folder of the variant folders (<key>=<value>/)")
    p.add_argument("--reference", default="results/frontier_runs.csv",
                   help="the full method's runs: a frontier runs CSV (default results/frontier_runs.csv)")
    p.add_argument("--method", default="sqdf", help="the ablated method (default sqdf)")
    p.add_argument("--runs-csv", required=True, help="where to write one row per run of the reference and the variants")
    args = p.parse_args(argv)
    try:
        out = Path(args.out)
        if not out.is_dir():
            raise rf.LeaderboardError(f"--out {args.out!r} does not exist or is not a folder")
        variants = {}
        for d in variant_folders(out):
            runs, _ = fr.load_frontier_runs(d)
            runs = runs.assign(run_dir=[f"{d.name}/{fr._relative(r, d)}" for r in runs["run_dir"]])
            variants[d.name] = runs
        runs = combine(fr.load_runs_csv(args.reference), variants, args.method)
        rf.require_one_protocol(runs, args.runs_csv)
        fr.write_runs_csv(fr.canonical_runs(runs), Path(args.runs_csv))
    except rf.LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ablations: {len(runs)} runs ({', '.join(sorted(set(runs['method'])))}) -> {args.runs_csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

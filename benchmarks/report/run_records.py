"""Per-run records: one row per finished run, the rows every committed table is made from.

    python -m benchmarks.report.run_records --runs results/run_records/aesthetic_b1000 [--runs more/] \
        --csv results/leaderboard_runs.csv

Every ``final.json`` under a ``--runs`` root (at any depth; folders starting with ``_`` or ``.`` and
checkpoints left out) is one run folder, read as ``benchmarks/report/leaderboard.py`` reads it (final.json,
config.json, rounds.jsonl). Two layouts are recognised:
- leaderboard / sweep: ``<root>/<task>__<method>__b<budget>__s<seed>/``;
- frontier grid points (``benchmarks/run/frontier.py``): ``<root>/<method>__<knob>=<value>/<run folder>/``
  (``<method>__default`` for a single point), which fill ``knob``, ``value`` and ``point``.

Columns: task, method, knob, value, seed, budget, eval_reward, normalised_score, path_kl, n_valid, vendi,
vendi_valid, fd_phi, protocol, commit, cpu_model, wall_time_s first (empty where a run has no such number),
then every other scalar of final.json and what the leaderboard needs to rebuild its rows from these records
alone (round 0's eval reward and path KL, the task's optimum and tier, config_hash, the best eval reward of
any round, ``best_round_eval_reward``), sorted. ``normalised_score`` (with norm_low / norm_high) is computed as
the leaderboard does, over the runs under the same ``--runs`` root. ``protocol`` is config.json's protocol id
(``sqdf_bbo/protocol.py``), ``legacy`` for runs made before ids existed (their ``commit`` then says which
code made them). :func:`require_one_protocol` refuses a table that would pool several protocols.

``python -m benchmarks.run.frontier --runs-csv`` writes the frontier's runs in the same column order and
number format (:func:`order_records`, :func:`write_records`; the columns no run has are left out), and
``--from-runs`` rebuilds the frontier's tables and plots from that file.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from benchmarks.report import leaderboard as lb
from sqdf_bbo.protocol import LEGACY

FIRST = ["task", "method", "knob", "value", "seed", "budget", "eval_reward", "normalised_score", "path_kl",
         "n_valid", "vendi", "vendi_valid", "fd_phi", "protocol", "commit", "cpu_model", "wall_time_s"]
#: record columns the leaderboard's own run rows (``leaderboard.load_runs``) do not have
RECORD_ONLY = ("knob", "value", "point", "commit", "torch_threads", "normalised_score", "norm_low", "norm_high",
               "norm_high_source", "best_round_eval_reward")
#: columns read back as text (a commit or hash of digits only must not become a number)
TEXT_COLUMNS = ("task", "method", "knob", "point", "protocol", "task_protocol", "commit", "git_commit",
                "config_hash", "cpu_model", "run_dir", "tier", "norm_high_source", "grid_source")
#: columns every run's record has (never dropped as padding)
ALWAYS = ("task", "method", "seed", "budget", "eval_reward", "protocol", "cpu_model")
#: the runs one table row pools: its key columns
POOL_KEYS = ("task", "method", "budget", "knob", "value")


class RunRecordError(lb.LeaderboardError):
    """Bad input or a table that would pool protocols; printed as one line."""


def require_one_protocol(df: pd.DataFrame, table_name: str, by: Optional[Sequence[str]] = None) -> None:
    """Raise RunRecordError when ``table_name`` would pool runs of several protocols: the runs of one row
    (grouped ``by``, default the :data:`POOL_KEYS` present) must share their ``protocol``, and the runs of
    one task (every method and budget) their ``task_protocol`` (harness version, oracle, assets) where
    that column is present. Runs without the columns count as ``legacy``."""
    if df is None or not len(df):
        return
    df = df.copy()
    for col in ("protocol", "task_protocol"):
        if col in df.columns:
            df[col] = df[col].fillna(LEGACY).astype(str).replace("", LEGACY)
    checks = [(list(by) if by is not None else [c for c in POOL_KEYS if c in df.columns], "protocol", "runs of")]
    if "task_protocol" in df.columns and "task" in df.columns:
        checks.append((["task"], "task_protocol", "methods compared on"))
    for keys, col, what in checks:
        if col not in df.columns:
            continue
        for key, g in df.groupby(keys, sort=True, dropna=False):
            found = sorted(set(g[col]))
            if len(found) > 1:
                key = key if isinstance(key, tuple) else (key,)
                where = " ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, key))
                raise RunRecordError(f"{table_name}: the {what} {where} come from {len(found)} protocols "
                                     f"({', '.join(found)}); re-make them under one protocol or build the "
                                     "table from one protocol's runs")


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:g}" if isinstance(v, float) else str(v))


# ---- collecting --------------------------------------------------------------------------------
def _run_parents(root: Path) -> list[Path]:
    """The folders directly holding run folders (a folder with final.json) under ``root``, sorted."""
    parents = set()
    for fin in root.rglob("final.json"):
        rel = fin.parent.relative_to(root).parts
        if any(p.startswith(("_", ".")) or p == "checkpoint" for p in rel):
            continue
        parents.add(fin.parent.parent)
    return sorted(parents)


def _point(parent: Path, methods: Iterable[str]) -> tuple[str, float | str, str]:
    """(knob, value, point) of a frontier grid folder holding runs of ``methods``; ("", nan, "") otherwise."""
    from benchmarks.run.frontier import _POINT_DIR, _folder_value

    m = _POINT_DIR.match(parent.name)
    safe = {s.replace(":", ".").replace("/", "_") for s in methods}
    if not m or safe != {m.group("method")}:
        return "", math.nan, ""
    knob = m.group("knob") or ""
    return knob, (_folder_value(m.group("value")) if knob else math.nan), parent.name


def collect_root(root: str | Path) -> pd.DataFrame:
    """One record per finished run under ``root`` (see the module docstring), normalised over them."""
    root = Path(root)
    if not root.is_dir():
        raise RunRecordError(f"runs folder {str(root)!r} does not exist or is not a folder")
    frames, rounds = [], []
    for parent in _run_parents(root):
        f, r = lb.load_runs([parent])
        knob, value, point = _point(parent, f["method"].unique())
        best = r.groupby(["task", "method", "budget", "seed"])["eval_reward"].max().rename("best_round_eval_reward")
        f = f.merge(best.reset_index(), on=["task", "method", "budget", "seed"], how="left")
        cfgs = [lb._read_json(Path(d) / "config.json") if (Path(d) / "config.json").exists() else {}
                for d in f["run_dir"]]
        f = f.assign(knob=knob, value=value, point=point, commit=[str(c.get("git_commit") or "") for c in cfgs],
                     torch_threads=[c.get("torch_threads", math.nan) for c in cfgs],
                     run_dir=[str(Path(d).relative_to(root)) for d in f["run_dir"]])
        frames.append(f)
        rounds.append(r)
    if not frames:
        raise RunRecordError(f"no finished run (a folder with final.json) under {str(root)!r}")
    df = pd.concat(frames, ignore_index=True)
    key = ["task", "method", "budget", "seed", "knob", "value"]
    dup = df[df.astype({"value": str}).duplicated(key, keep=False)]
    if len(dup):
        raise RunRecordError(f"two run folders for one run under {root}: {' and '.join(dup['run_dir'][:2])}")
    df = lb.add_normalised(df, lb.normalisation_bounds(df, pd.concat(rounds, ignore_index=True)))
    return df


def collect(roots: Iterable[str | Path]) -> pd.DataFrame:
    """The records of every root, columns in the module docstring's order, rows sorted."""
    return order_records(pd.concat([collect_root(r) for r in roots], ignore_index=True))


def order_records(df: pd.DataFrame, pad: bool = True) -> pd.DataFrame:
    """Records in the module docstring's order: the :data:`FIRST` columns (added empty where missing, unless
    ``pad`` is False), then the others sorted; rows by task, method, knob, value (numbers ascending, then
    categorical values such as ``buffer=none`` by name), budget, seed."""
    df = df.copy()
    for col in FIRST:
        if pad and col not in df.columns:
            df[col] = math.nan
    first = [c for c in FIRST if c in df.columns]
    df = df[first + sorted(c for c in df.columns if c not in FIRST)]
    keys = [c for c in ("task", "method", "knob") if c in df.columns]
    helpers = {}
    if "value" in df.columns:  # a value column may mix numbers and words
        helpers = {"_value_num": pd.to_numeric(df["value"], errors="coerce"),
                   "_value_word": df["value"].map(lambda v: v if isinstance(v, str) else "")}
    order = df.assign(**helpers).sort_values(keys + list(helpers) + [c for c in ("budget", "seed") if c in df.columns],
                                             kind="stable", na_position="first").index
    return df.loc[order].reset_index(drop=True)


def read_records(path: str | Path) -> pd.DataFrame:
    """A records CSV as written by :func:`write_records` (text columns kept as text)."""
    head = pd.read_csv(path, nrows=0).columns
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in head}, keep_default_na=False,
                     na_values=[""])
    for c in TEXT_COLUMNS:
        if c in df.columns:
            df[c] = df[c].fillna("")
    return df


def write_records(df: pd.DataFrame, path: str | Path) -> None:
    """CSV with full float precision (a table rebuilt from it matches one built from the folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)  # floats as repr: the shortest text that reads back exactly
    tmp.replace(path)


def leaderboard_frames(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finals, rounds) for ``leaderboard.build_leaderboard`` from records alone: the leaderboard's run rows,
    and per run the one round that matters for normalisation (its best eval reward)."""
    finals = records.drop(columns=[c for c in RECORD_ONLY if c in records.columns])
    padded = [c for c in FIRST if c in finals.columns and c not in ALWAYS and finals[c].isna().all()]
    finals = finals.drop(columns=padded)  # columns no run of these records has
    rounds = records[["task", "method", "budget", "seed"]].assign(eval_reward=records["best_round_eval_reward"])
    return finals, rounds


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.run_records", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", action="append", required=True, help="a folder of run folders or frontier grid "
                   "folders (repeatable)")
    p.add_argument("--csv", required=True, help="the per-run CSV to write")
    args = p.parse_args(argv)
    try:
        df = collect(args.runs)
    except lb.LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_records(df, Path(args.csv))
    protocols = ", ".join(f"{k} ({v})" for k, v in df["protocol"].value_counts().sort_index().items())
    print(f"wrote {args.csv}: {len(df)} runs; protocols: {protocols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

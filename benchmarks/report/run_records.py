"""Per-run records: one row per finished run, the rows every committed table is made from.

    python -m benchmarks.report.run_records --runs results/run_records/aesthetic_b1000 [--runs more/] \
        --csv results/leaderboard_runs.csv

Every ``final.json`` under a ``--runs`` root (at any depth; folders starting with ``_`` or ``.`` and
checkpoints left out) is one run folder, read as the leaderboard reads it (``benchmarks/report/run_folders.py``:
final.json, config.json, rounds.jsonl). Two layouts are recognised:
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
``--from-runs`` rebuilds the frontier's tables and plots from that file. The names of the frontier's grid
folders (:data:`POINT_DIR`, :func:`fmt_value`) live here, beside the records that read them.

Committed records meet new runs here too: :func:`read_committed`, :func:`check_task_protocols` (this
checkout's protocol ids against the records') and :func:`merge_records` serve ``benchmarks.run.compare``,
and :func:`add_to_records` merges a comparison folder into the records
(``python -m benchmarks.report.leaderboard --add DIR``).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from benchmarks.report import run_folders as rf
# the protocol rule lives with the run-folder reader every table shares; its callers find it here too
from benchmarks.report.run_folders import POOL_KEYS, RunRecordError, require_one_protocol  # noqa: F401

FIRST = ["task", "method", "knob", "value", "seed", "budget", "eval_reward", "normalised_score", "path_kl",
         "n_valid", "vendi", "vendi_valid", "fd_phi", "protocol", "commit", "cpu_model", "wall_time_s"]
#: record columns the leaderboard's own run rows (``run_folders.load_runs``) do not have
RECORD_ONLY = ("knob", "value", "point", "commit", "torch_threads", "normalised_score", "norm_low", "norm_high",
               "norm_high_source", "best_round_eval_reward")
#: columns read back as text (a commit or hash of digits only must not become a number)
TEXT_COLUMNS = ("task", "method", "knob", "point", "protocol", "task_protocol", "commit", "git_commit",
                "config_hash", "cpu_model", "run_dir", "tier", "norm_high_source", "grid_source")
#: columns every run's record has (never dropped as padding)
ALWAYS = ("task", "method", "seed", "budget", "eval_reward", "protocol", "cpu_model")
#: the file a comparison folder (``python -m benchmarks.run.compare --out DIR``) records its settings in
COMPARE_META = "_compare.json"


# ---- the frontier's grid folders ---------------------------------------------------------------------
#: a frontier grid folder: ``<method>__<knob>=<value>`` (``<method>__default`` for a single point)
POINT_DIR = re.compile(r"^(?P<method>.+?)__(?:(?P<knob>[A-Za-z_]\w*)=(?P<value>[^=]+)|default)$")


def fmt_value(v) -> str:
    """Knob value as written in folder names and tables: 6 significant digits (0.01, 1, 1e-05); a categorical
    value (e.g. ``buffer=none`` for an ablation) as itself."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def folder_value(text: str):
    """A grid folder's knob value: a float, or the word itself for a categorical knob."""
    try:
        return float(text)
    except ValueError:
        return text


def to_float(v) -> float:
    """``float(v)``, NaN for an empty cell or a word (a categorical knob value)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


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
    m = POINT_DIR.match(parent.name)
    safe = {s.replace(":", ".").replace("/", "_") for s in methods}
    if not m or safe != {m.group("method")}:
        return "", math.nan, ""
    knob = m.group("knob") or ""
    return knob, (folder_value(m.group("value")) if knob else math.nan), parent.name


def collect_root(root: str | Path) -> pd.DataFrame:
    """One record per finished run under ``root`` (see the module docstring), normalised over them."""
    root = Path(root)
    if not root.is_dir():
        raise RunRecordError(f"runs folder {str(root)!r} does not exist or is not a folder")
    frames, rounds = [], []
    for parent in _run_parents(root):
        f, r = rf.load_runs([parent])
        knob, value, point = _point(parent, f["method"].unique())
        best = r.groupby(["task", "method", "budget", "seed"])["eval_reward"].max().rename("best_round_eval_reward")
        f = f.merge(best.reset_index(), on=["task", "method", "budget", "seed"], how="left")
        cfgs = [rf._read_json(Path(d) / "config.json") if (Path(d) / "config.json").exists() else {}
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
    df = rf.add_normalised(df, rf.normalisation_bounds(df, pd.concat(rounds, ignore_index=True)))
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


# ---- the committed records: checked against this checkout and merged (compare, leaderboard --add) ----
def read_committed(path: str | Path, script: str = "", runs_root: str = "") -> pd.DataFrame:
    """The committed per-run records at ``path``, checked to have what a comparison needs; ``script`` and
    ``runs_root`` (the suite's reproduce script and its run folders) name how they are made when missing."""
    path = Path(path)
    if not path.exists():
        made_by = f"`bash {script}`" if script else "the suite's benchmarks/run/reproduce_*.sh script"
        raise RunRecordError(
            f"{path} does not exist yet: the committed per-run records are made by {made_by} and then "
            f"`python -m benchmarks.report.run_records --runs {runs_root or 'OUT'} --csv {path}`; nothing to compare "
            "against")
    df = read_records(path)
    need = {"task", "method", "knob", "value", "seed", "budget", "eval_reward", "path_kl", "protocol",
            "task_protocol", "cpu_model", "round0_eval_reward", "best_round_eval_reward"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise RunRecordError(f"{path} lacks the column(s) {', '.join(missing)}; is it a per-run records CSV "
                             "(python -m benchmarks.report.run_records)?")
    if not len(df):
        raise RunRecordError(f"{path} has no runs")
    return df


def checkout_protocol(task: str, method: str, budget: int, sets: list[str]) -> tuple[str, str]:
    """(protocol, task_protocol) a run of ``method`` on ``task`` with ``sets`` would record here: the config
    record of ``sqdf_bbo.run.Run.config_record`` built without running anything."""
    from sqdf_bbo import protocol
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.run import CLIError, parse_sets, resolve_run_settings, round_sizes
    from sqdf_bbo.tasks import make_task

    try:
        agent_over, task_over, run_over = parse_sets(sets)
        t = make_task(task, **task_over)
        cls = resolve_method(method)
        run_cfg = resolve_run_settings(run_over, t.info.run_defaults, budget)
        record = {"task": task, "method": method, "budget": budget, "run": run_cfg,
                  "round_sizes": round_sizes(budget, run_cfg["rounds"], run_cfg["round_sizes"]),
                  "agent": cls.resolve_config(t.info, agent_over), "task_overrides": task_over}
    except (CLIError, ValueError, TypeError) as e:
        raise RunRecordError(f"task {task!r} / method {method!r}: {e}") from None
    cfg = protocol.run_protocol(record, t, cls)
    return cfg["protocol"], protocol.task_protocol_of(cfg)


def check_task_protocols(records: pd.DataFrame, tasks: list[str], csv: str) -> dict[str, str]:
    """{task: task_protocol} of this checkout; RunRecordError naming the first task whose committed records
    carry another task_protocol (or several, or legacy ones)."""
    out = {}
    for task in tasks:
        rows = records[records["task"] == task]
        committed = sorted(set(rows["task_protocol"].replace("", "legacy")))
        budget = int(rows["budget"].iloc[0])
        mine = checkout_protocol(task, "pretrained", budget, [])[1]
        if committed != [mine]:
            commits = sorted({str(c)[:7] for c in rows.get("commit", pd.Series(dtype=str)) if str(c)})
            raise RunRecordError(
                f"protocol mismatch on task {task}: this checkout computes task_protocol {mine}, {csv} has "
                f"{', '.join(committed)} (harness version, oracle or embedded weights differ; records made at commit "
                f"{', '.join(commits) or 'unknown'}): check out that commit or re-make the records")
        out[task] = mine
    return out


def renormalise(records: pd.DataFrame) -> pd.DataFrame:
    """The records with norm_low / norm_high / normalised_score recomputed over all of them (as
    :func:`collect` does over one root), columns and rows in the records' order."""
    df = records.drop(columns=[c for c in ("norm_low", "norm_high", "norm_high_source", "normalised_score")
                               if c in records.columns])
    finals, rounds = leaderboard_frames(records)
    df = rf.add_normalised(df, rf.normalisation_bounds(finals, rounds))
    for col in FIRST:
        if col not in df.columns:
            df[col] = math.nan
    df = df[FIRST + sorted(c for c in df.columns if c not in FIRST)]
    return df.sort_values(["task", "method", "knob", "value", "budget", "seed"], kind="stable",
                          na_position="first").reset_index(drop=True)


def merge_records(committed: pd.DataFrame, new: pd.DataFrame, where: str) -> pd.DataFrame:
    """committed + the rows of ``new`` that are not already there (key task, method, knob, value, budget,
    seed), renormalised; RunRecordError when a row of ``new`` contradicts a committed row or the merged
    table would pool protocols."""
    key = ["task", "method", "knob", "value", "budget", "seed"]
    def keys(df):
        return [tuple([r.task, r.method, r.knob or "", fmt_value(to_float(r.value)), int(r.budget), int(r.seed)])
                for r in df[key].itertuples()]
    have = dict(zip(keys(committed), committed["eval_reward"]))
    fresh = []
    for k, reward in zip(keys(new), new["eval_reward"]):
        if k in have:
            if not math.isclose(float(have[k]), float(reward), rel_tol=1e-9):
                raise RunRecordError(f"{where}: the run {'/'.join(map(str, k))} is in the committed records with "
                                     f"eval reward {have[k]!r}, here {reward!r}")
            fresh.append(False)
        else:
            fresh.append(True)
    merged = pd.concat([committed, new[fresh]], ignore_index=True)
    require_one_protocol(merged, where)
    return renormalise(merged)


def add_to_records(folder: str | Path, records_csv: Optional[str] = None) -> int:
    """Merge ``folder/runs.csv`` (a compare folder) into the committed per-run records after the protocol
    check of ``benchmarks.run.compare`` (this checkout's task_protocol of every task = the records' = the
    folder's); rows already in the records must agree; the merged records are renormalised and written in place.
    ``records_csv`` defaults to the records the comparison used (its ``_compare.json``). Exit status 0, or 2
    with one line on stderr."""
    folder = Path(folder)
    try:
        meta_path, runs_path = folder / COMPARE_META, folder / "runs.csv"
        if not runs_path.exists() or not meta_path.exists():
            raise RunRecordError(f"{folder} is not a compare folder (no runs.csv and {COMPARE_META}; "
                                 "python -m benchmarks.run.compare --out DIR writes them)")
        meta = json.loads(meta_path.read_text())
        target = records_csv or meta.get("runs_csv")
        if not target:
            raise RunRecordError(f"{meta_path} names no committed records (runs_csv); pass --records CSV")
        committed = read_committed(target, meta.get("script", ""), meta.get("runs_root", ""))
        incoming = read_records(runs_path)
        tasks = sorted(incoming["task"].unique())
        both = pd.concat([committed[committed["task"].isin(tasks)], incoming], ignore_index=True)
        check_task_protocols(both, tasks, f"{target} and {runs_path}")
        merged = merge_records(committed, incoming, target)
    except (rf.LeaderboardError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    added = len(merged) - len(committed)
    write_records(merged, Path(target))
    print(f"added {added} run(s) of {', '.join(sorted(set(incoming['method']) - set(committed['method']))) or 'no new method'}"
          f" from {runs_path} to {target} ({len(merged)} runs); rebuild the tables from it")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.run_records", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", action="append", required=True, help="a folder of run folders or frontier grid "
                   "folders (repeatable)")
    p.add_argument("--csv", required=True, help="the per-run CSV to write")
    args = p.parse_args(argv)
    try:
        df = collect(args.runs)
    except rf.LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_records(df, Path(args.csv))
    protocols = ", ".join(f"{k} ({v})" for k, v in df["protocol"].value_counts().sort_index().items())
    print(f"wrote {args.csv}: {len(df)} runs; protocols: {protocols}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leaderboard from run folders: one row per (task, method, budget), rliable-style statistics over seeds.

    python -m benchmarks.report.leaderboard runs/ [more_runs/ ...] --out results/leaderboard.csv \
        [--md results/leaderboard.md] [--aggregate results/aggregate.csv] [--compare results/leaderboard.csv]
    python -m benchmarks.report.leaderboard --add runs/compare_MyAgent [--records results/frontier_runs.csv]

Reads every ``<root>/*/final.json`` (finished runs of ``sqdf_bbo/run.py``) with its ``config.json`` and
``rounds.jsonl``. Per row: number of seeds; final eval reward IQM (25% trimmed mean) and mean, each with a
95% percentile CI from the stratified bootstrap over seeds (``benchmarks/report/stats.py``); the same for the
normalised score; best-so-far and top-10 AUC (mean and CI); path KL to the pretrained model; diversity
(Vendi score, mean pairwise distance); the task's naturalness keys (e.g. prior_logpdf, invalid_frac, or
Fréchet distances) and eval extras; wall-clock and peak memory.

Normalised score = (eval reward - low) / (high - low) per (task, budget), with
low = the pretrained model's eval reward: the mean over seeds of round 0 (the pretrained model, evaluated
before any query with the same eval draws as the later rounds) of the ``pretrained`` runs of that task
and budget, or of all its runs whose round 0 is the pretrained model where no ``pretrained`` run is there;
high = the task optimum (``config.json`` task_info.optimal_value) when known, else the best eval reward
seen on that task in any round of any run (``norm_high_source`` says which).

The aggregate table (``--aggregate``, and a second table in the Markdown) gives per (method, budget)
rliable's ``aggregate_iqm``/``aggregate_mean``/``aggregate_optimality_gap`` of the normalised score over
all tasks that method ran, with stratified-bootstrap CIs (runs resampled within tasks).

``--add DIR`` builds no table: it merges a comparison folder's ``runs.csv`` (``python -m benchmarks.run.compare
--out DIR``) into the committed per-run records it was compared against (or ``--records CSV``), after the
same protocol check (this checkout's task protocols = the records' = the folder's; refused otherwise), so
the tables can be rebuilt from the records with the new method in them.

``--update`` re-makes part of an existing table: the rows of every (task, budget) these runs cover are
replaced (rows of methods not re-run there are dropped, since normalisation is per task and budget), the
others kept as they were (each row's ``git_commits`` says which code made it); aggregate rows likewise.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from benchmarks.common.markdown import markdown_table
from benchmarks.report import stats
from benchmarks.report.run_folders import (KEY, LeaderboardError, add_normalised, check_uniform_settings,
                                           extra_metric_keys, find_run_dirs, load_runs, normalisation_bounds,
                                           require_one_protocol)

#: columns that measure the machine, not the method; excluded when checking reproducibility
TIMING_COLUMNS = ("wall_time_s_mean", "peak_mem_mb_max")
CI_METRICS = ("eval_reward", "normalised_score", "best_so_far", "auc_top10")


# ---- the table ---------------------------------------------------------------------------------
def _ci(values: np.ndarray, func, reps: int, seed: int) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (math.nan,) * 3
    return stats.stratified_bootstrap_ci([values], func, reps=reps, seed=seed)


def _mean(values: pd.Series) -> float:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


def build_leaderboard(finals: pd.DataFrame, rounds: pd.DataFrame, reps: int = stats.DEFAULT_REPS,
                      seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """One row per (task, method, budget); see the module docstring for the columns."""
    bounds = normalisation_bounds(finals, rounds)
    df = add_normalised(finals, bounds)
    extras = [k for k in extra_metric_keys(finals) if k != "config_hash"]
    rows = []
    for (task, method, budget), g in df.groupby(KEY, sort=True):
        g = g.sort_values("seed")
        row = {"task": task, "method": method, "budget": int(budget), "n_seeds": len(g),
               "seeds": " ".join(str(s) for s in g["seed"])}
        for m in CI_METRICS:
            vals = pd.to_numeric(g[m], errors="coerce").to_numpy(float) if m in g else np.array([])
            if m in ("eval_reward", "normalised_score"):
                row[f"{m}_iqm"], row[f"{m}_iqm_ci_low"], row[f"{m}_iqm_ci_high"] = _ci(vals, stats.aggregate_iqm, reps, seed)
            row[f"{m}_mean"], row[f"{m}_mean_ci_low"], row[f"{m}_mean_ci_high"] = _ci(vals, stats.aggregate_mean, reps, seed)
        row["eval_reward_std_over_seeds"] = float(g["eval_reward"].std(ddof=1)) if len(g) > 1 else math.nan
        for m in ("top10", "path_kl", "vendi", "mean_pairwise_distance", *extras):
            row[f"{m}_mean"] = _mean(g[m]) if m in g else math.nan
        row["config_hash"] = " ".join(sorted(g["config_hash"].unique()))
        row["git_commits"] = " ".join(sorted(c for c in g["git_commit"].unique() if c))
        row["queries_used"] = _mean(g["queries_used"]) if "queries_used" in g else math.nan
        row["wall_time_s_mean"] = _mean(g["wall_time_s"]) if "wall_time_s" in g else math.nan
        row["peak_mem_mb_max"] = float(pd.to_numeric(g["peak_mem_mb"]).max()) if "peak_mem_mb" in g else math.nan
        b = g.iloc[0]
        row.update({"norm_low": b["norm_low"], "norm_high": b["norm_high"], "norm_high_source": b["norm_high_source"]})
        rows.append(row)
    return pd.DataFrame(rows)


def build_aggregate(finals: pd.DataFrame, rounds: pd.DataFrame, reps: int = stats.DEFAULT_REPS,
                    seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """Per (method, budget): rliable aggregates of the normalised score over tasks, stratified-bootstrap CIs."""
    df = add_normalised(finals, normalisation_bounds(finals, rounds))
    rows = []
    for (method, budget), g in df.groupby(["method", "budget"], sort=True):
        per_task = {t: gg["normalised_score"].dropna().to_numpy(float) for t, gg in g.groupby("task", sort=True)}
        per_task = {t: v for t, v in per_task.items() if len(v)}
        if not per_task:
            continue
        scores = list(per_task.values())
        row = {"method": method, "budget": int(budget), "n_tasks": len(scores), "tasks": " ".join(per_task),
               "n_runs": int(sum(len(v) for v in scores))}
        for name in ("aggregate_iqm", "aggregate_mean", "aggregate_optimality_gap"):
            p, lo, hi = stats.stratified_bootstrap_ci(scores, stats.AGGREGATES[name], reps=reps, seed=seed)
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = p, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


# ---- rendering ---------------------------------------------------------------------------------
def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}g}"


def _fmt_ci(p, lo, hi) -> str:
    return f"{_fmt(p)} [{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(p) else "–"


NATURALNESS_PREFERENCE = ("invalid_frac", "prior_logpdf")


def _naturalness_cell(row: pd.Series) -> str:
    parts = []
    for k in NATURALNESS_PREFERENCE:
        v = row.get(f"{k}_mean", math.nan)
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k}={_fmt(v, 3)}")
    for c in row.index:
        name = c[:-5] if c.endswith("_mean") else None
        if name and any(s in name.lower() for s in ("fd", "frechet", "fid", "elbo")):
            v = row[c]
            if isinstance(v, float) and math.isfinite(v):
                parts.append(f"{name}={_fmt(v, 3)}")
    return ", ".join(parts) or "–"


def to_markdown(board: pd.DataFrame, aggregate: Optional[pd.DataFrame] = None, notes: Sequence[str] = ()) -> str:
    """Markdown rendering of the leaderboard (and the aggregate table when given), ``notes`` on top."""
    header = ["task", "method", "budget", "seeds", "eval reward IQM [95% CI]", "eval reward mean [95% CI]",
              "normalised IQM [95% CI]", "best-so-far", "top-10 AUC", "path KL (nats)", "Vendi", "pairwise dist.",
              "naturalness", "wall (s)", "peak mem (MB)"]
    rows = []
    for _, r in board.iterrows():
        rows.append([r["task"], r["method"], _fmt(r["budget"]), _fmt(r["n_seeds"]),
                     _fmt_ci(r["eval_reward_iqm"], r["eval_reward_iqm_ci_low"], r["eval_reward_iqm_ci_high"]),
                     _fmt_ci(r["eval_reward_mean"], r["eval_reward_mean_ci_low"], r["eval_reward_mean_ci_high"]),
                     _fmt_ci(r["normalised_score_iqm"], r["normalised_score_iqm_ci_low"],
                             r["normalised_score_iqm_ci_high"]),
                     _fmt(r["best_so_far_mean"]), _fmt(r["auc_top10_mean"]), _fmt(r["path_kl_mean"], 3),
                     _fmt(r["vendi_mean"], 3), _fmt(r["mean_pairwise_distance_mean"], 3), _naturalness_cell(r),
                     _fmt(r["wall_time_s_mean"], 3), _fmt(r["peak_mem_mb_max"], 4)])
    text = [*(f"{n}\n" for n in notes), "Final eval reward over seeds: IQM = 25% trimmed mean, CIs = 95% percentile stratified bootstrap "
            "(rliable). Normalised score: 0 = pretrained model, 1 = task optimum (or best eval reward seen when "
            "the optimum is unknown). best-so-far, top-10 AUC, KL, Vendi, naturalness, wall: means over seeds; "
            "peak mem: max over seeds.", "", markdown_table(header, rows)]
    if aggregate is not None and len(aggregate):
        arows = [[r["method"], _fmt(r["budget"]), _fmt(r["n_tasks"]), _fmt(r["n_runs"]),
                  _fmt_ci(r["aggregate_iqm"], r["aggregate_iqm_ci_low"], r["aggregate_iqm_ci_high"]),
                  _fmt_ci(r["aggregate_mean"], r["aggregate_mean_ci_low"], r["aggregate_mean_ci_high"]),
                  _fmt_ci(r["aggregate_optimality_gap"], r["aggregate_optimality_gap_ci_low"],
                          r["aggregate_optimality_gap_ci_high"]), r["tasks"]]
                 for _, r in aggregate.iterrows()]
        text += ["", "Aggregate normalised score over tasks (rliable: aggregate IQM / mean / optimality gap, "
                 "95% stratified-bootstrap CIs over runs within tasks):", "",
                 markdown_table(["method", "budget", "tasks", "runs", "aggregate IQM", "aggregate mean",
                            "optimality gap", "task set"], arows)]
    return "\n".join(text) + "\n"


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """CSV with 6 significant digits (stable across reruns), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)


# ---- checking a rerun against a committed table ------------------------------------------------
def compare(reference: pd.DataFrame, new: pd.DataFrame, metric: str = "eval_reward_mean") -> pd.DataFrame:
    """Rows of both tables with whether the new ``metric`` lies in the reference's CI (and vice versa)."""
    ref_lo, ref_hi = f"{metric}_ci_low", f"{metric}_ci_high"
    for col in (metric, ref_lo, ref_hi):
        if col not in reference.columns:
            raise LeaderboardError(f"reference table lacks column {col!r}")
    m = reference[KEY + [metric, ref_lo, ref_hi]].merge(new[KEY + [metric, ref_lo, ref_hi]], on=KEY,
                                                      suffixes=("_ref", "_new"))
    if m.empty:
        raise LeaderboardError("the two tables share no (task, method, budget) row")
    m["new_in_ref_ci"] = (m[f"{metric}_new"] >= m[f"{ref_lo}_ref"]) & (m[f"{metric}_new"] <= m[f"{ref_hi}_ref"])
    m["ref_in_new_ci"] = (m[f"{metric}_ref"] >= m[f"{ref_lo}_new"]) & (m[f"{metric}_ref"] <= m[f"{ref_hi}_new"])
    m["ok"] = m["new_in_ref_ci"] | m["ref_in_new_ci"]
    return m


def merge_update(old: pd.DataFrame, new: pd.DataFrame, key: Sequence[str],
                 remade: Optional[set] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(merged, dropped): ``new``'s rows plus the rows of ``old`` that the new runs do not re-make, sorted by
    ``key``; ``dropped`` = old rows left out without a replacement.

    Leaderboard rows (key task, method, budget): every old row of a (task, budget) the new runs cover goes,
    also for methods not re-run, because a row's normalised score depends on all runs of its task and
    budget. Aggregate rows (key method, budget; ``remade`` = the (task, budget) pairs re-made): an old row
    goes when a new row replaces it or when one of its tasks was re-made at its budget; a new row must
    cover every task of the row it replaces (an aggregate over fewer tasks is another quantity, so a
    partial re-run is refused with LeaderboardError).
    """
    key = list(key)
    if not len(old):
        return new.sort_values(key, kind="stable").reset_index(drop=True), old
    aggregate = "tasks" in old.columns
    if aggregate and len(new):
        both = old.merge(new, on=key, suffixes=("_old", "_new"))
        for _, r in both.iterrows():
            missing = set(str(r["tasks_old"]).split()) - set(str(r["tasks_new"]).split())
            if missing:
                raise LeaderboardError(
                    f"--update: the aggregate of {'/'.join(str(r[k]) for k in key)} covered tasks "
                    f"{r['tasks_old']!r}, these runs only {r['tasks_new']!r}; re-run {' '.join(sorted(missing))} "
                    "too, or leave out --aggregate")
    have = {tuple(map(str, k)) for k in new[key].to_numpy()} if len(new) else set()
    remade = {(str(t), str(b)) for t, b in (remade or set())}
    if aggregate:
        touched = [any((t, str(b)) in remade for t in str(ts).split()) for ts, b in zip(old["tasks"], old["budget"])]
    else:
        remade |= {(str(t), str(b)) for t, b in zip(new["task"], new["budget"])} if len(new) else set()
        touched = [(str(t), str(b)) in remade for t, b in zip(old["task"], old["budget"])]
    replaced = [tuple(map(str, k)) in have for k in old[key].to_numpy()]
    keep = [not (r or t) for r, t in zip(replaced, touched)]
    dropped = old[[t and not r for r, t in zip(replaced, touched)]]
    kept = old[keep]
    merged = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    return merged.sort_values(key, kind="stable").reset_index(drop=True), dropped


def _read_for_update(path: Optional[str], key: Sequence[str]) -> Optional[pd.DataFrame]:
    """The table to update (None if there is none yet); LeaderboardError if it is not one of ours."""
    if not path or not Path(path).exists():
        return None
    try:
        old = pd.read_csv(path)
    except (ValueError, OSError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise LeaderboardError(f"--update: cannot read {path}: {e}") from None
    missing = [k for k in key if k not in old.columns]
    if missing:
        raise LeaderboardError(f"--update: {path} lacks the column(s) {', '.join(missing)}; is it a leaderboard table?")
    return old


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="folders holding run folders (<task>__<method>__b<budget>__s<seed>)")
    p.add_argument("--add", metavar="DIR", default=None,
                   help="merge a compare folder's runs.csv (python -m benchmarks.run.compare --out DIR) into the committed "
                        "per-run records after the protocol check, instead of building a table")
    p.add_argument("--records", metavar="CSV", default=None,
                   help="with --add: the per-run records to merge into (default: the ones the comparison used)")
    p.add_argument("--out", default="results/leaderboard.csv", help="CSV to write")
    p.add_argument("--md", default=None, help="also write the Markdown rendering here")
    p.add_argument("--note", action="append", default=[], help="a paragraph above the Markdown table (repeatable)")
    p.add_argument("--aggregate", default=None, help="also write the per-method aggregate table (CSV) here")
    p.add_argument("--compare", default=None, metavar="CSV",
                   help="check each row's eval_reward_mean against this reference table's 95%% CI; exit 1 if any "
                        "row disagrees")
    p.add_argument("--min-seeds", type=int, default=1,
                   help="leave out rows with fewer finished seeds than this (default 1: keep all)")
    p.add_argument("--on-duplicate", choices=("error", "first"), default="error",
                   help="two folders for one (task, method, budget, seed): error, or keep the first root's")
    p.add_argument("--allow-mixed", action="store_true",
                   help="allow seeds of one (task, method, budget) run with different settings")
    p.add_argument("--update", action="store_true",
                   help="keep the rows of the existing --out (and --aggregate) tables that these runs do not "
                        "cover (re-make part of a committed leaderboard, e.g. one tier)")
    p.add_argument("--reps", type=int, default=stats.DEFAULT_REPS, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (default 0)")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.add is not None:
        if args.runs:
            p.error("--add DIR takes no run folders")
        from benchmarks.report.run_records import add_to_records

        return add_to_records(args.add, args.records)
    if not args.runs:
        p.error("give the folders holding run folders (or --add DIR)")
    try:
        _, unfinished = find_run_dirs(args.runs)
        finals, rounds = load_runs(args.runs, args.on_duplicate)
        if not args.allow_mixed:
            check_uniform_settings(finals)
        require_one_protocol(finals, args.out)  # a row pools one protocol; a task's methods share its oracle
        board = build_leaderboard(finals, rounds, args.reps, args.seed)
        agg = build_aggregate(finals, rounds, args.reps, args.seed)
        if args.min_seeds > 1:
            few = board[board["n_seeds"] < args.min_seeds]
            for _, r in few.iterrows():
                print(f"note: left out {r['task']} / {r['method']} / b{r['budget']}: {r['n_seeds']} seed(s) "
                      f"< --min-seeds {args.min_seeds}", file=sys.stderr)
            board = board[board["n_seeds"] >= args.min_seeds].reset_index(drop=True)
            keep = set(zip(board["task"], board["method"], board["budget"]))
            sub = finals[[k in keep for k in zip(finals["task"], finals["method"], finals["budget"])]]
            agg = build_aggregate(sub, rounds, args.reps, args.seed) if len(sub) else agg.iloc[0:0]
        if args.update:
            remade = set(zip(board["task"], board["budget"]))
            old_board = _read_for_update(args.out, KEY)
            old_agg = _read_for_update(args.aggregate, ["method", "budget", "tasks"])
            gone = []
            if old_board is not None:
                board, dropped = merge_update(old_board, board, KEY)
                gone += [f"{r.task} / {r.method} / b{r.budget}" for r in dropped.itertuples()]
            if old_agg is not None:
                agg, dropped = merge_update(old_agg, agg, ["method", "budget"], remade)
                gone += [f"aggregate {r.method} / b{r.budget}" for r in dropped.itertuples()]
            for g in gone:
                print(f"note: --update dropped {g}: its task and budget were re-made without it", file=sys.stderr)
        reference = None
        if args.compare:
            if not Path(args.compare).exists():
                raise LeaderboardError(f"--compare table {args.compare!r} does not exist")
            reference = pd.read_csv(args.compare)
    except LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if unfinished:
        print(f"note: {len(unfinished)} unfinished run folder(s) left out, e.g. {unfinished[0]}", file=sys.stderr)
    write_csv(board, Path(args.out))
    print(f"wrote {args.out}: {len(board)} rows from {len(finals)} runs"
          + (" (and the rows of the previous table these runs do not cover)" if args.update else ""))
    if args.aggregate:
        write_csv(agg, Path(args.aggregate))
        print(f"wrote {args.aggregate}: {len(agg)} rows")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(to_markdown(board, agg, args.note))
        print(f"wrote {args.md}")
    if reference is not None:
        try:
            cmp = compare(reference, board)
        except LeaderboardError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        bad = cmp[~cmp["ok"]]
        print(f"compare with {args.compare}: {int(cmp['ok'].sum())}/{len(cmp)} rows agree within 95% CIs")
        for _, r in bad.iterrows():
            print(f"  DISAGREE {r['task']} {r['method']} b{r['budget']}: new {r['eval_reward_mean_new']:.4g} vs "
                  f"reference {r['eval_reward_mean_ref']:.4g} [{r['eval_reward_mean_ci_low_ref']:.4g}, "
                  f"{r['eval_reward_mean_ci_high_ref']:.4g}]")
        return 1 if len(bad) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Place a new method against the committed baselines without re-running them.

    python -m benchmarks.run.compare --method mypkg.mymodule:MyAgent [--knob KEY --grid v1,v2,...] \
        [--suite synthetic|image] [--tasks levy,...] [--seeds 0-2] [--runs-csv results/frontier_runs.csv] \
        [--out runs/compare_MyAgent] [--workers 2] [--threads 1] [--backend local|submitit] [--no-canary] \
        [--canary METHOD[=VALUE]] [--max-runs N]

What it does, in order (each refusal is one line, exit status 2):

1. Reads the committed per-run records (``--runs-csv``; default ``results/frontier_runs.csv``, or
   ``results/frontier_image_runs.csv`` with ``--suite image``: one row per run, ``benchmarks/report/run_records.py``).
   The tasks (``--tasks``), budget and seeds (``--seeds``) default to those of the records.
2. **Protocol check**: for each task, the ``task_protocol`` this checkout computes (harness version, task,
   oracle and embedded assets; ``sqdf_bbo/protocol.py``) must equal the records' ``task_protocol`` column;
   and the full ``protocol`` this checkout computes for the canary cell with the suite's settings must equal
   the records' ``protocol`` of that cell (so the settings table below is what made the records).
3. **Canary**: re-runs one committed cell (default: the pretrained model on the first task that has it,
   on the records' seeds; ``--canary sqdf=1`` picks sqdf at beta 1) into ``DIR/_canary/`` and compares it
   with the records, per seed: on the same ``cpu_model`` eval_reward and path_kl must be identical to a
   relative 1e-6; on another CPU the new seed mean must lie inside the committed 95 % Student-t interval
   over seeds, or the two intervals must overlap. ``--no-canary`` skips it (the report says so).
4. Runs only the new method's grid, through the sweep engine (``benchmarks/run/sweep.py``) in the frontier
   layout ``DIR/<method>__<knob>=<value>/<task>__<method>__b<budget>__s<seed>/``: the grid rule of
   ``benchmarks/run/frontier.py`` (beta / lr / count knob / declared ``frontier_knob``; a method with none is
   one point) unless ``--knob`` / ``--grid`` say otherwise. Resumable: finished run folders are skipped,
   interrupted ones continued; ``--max-runs N`` stops after N runs (continue by running the same command).
5. Writes ``DIR/runs.csv`` (the committed records plus the new method's rows, in the committed per-run
   format, normalised over all of them as ``run_records`` does), ``DIR/verdicts.csv``, ``DIR/report.md``
   and a self-contained ``DIR/report.html`` (plots inline).

**Settings** (the suite's table :data:`SUITES`, the same for every committed method, copied from
``benchmarks/run/reproduce_frontier.sh`` / ``reproduce_image_frontier.sh``): the records hold no settings, so
the settings come from the reproduce scripts, and the protocol check of step 2 verifies them against the
records (a protocol id hashes every resolved setting). Every run gets the suite's ``run.*`` settings; an
agent setting of the table is given to a method whose class has that key (synthetic: ``num_steps=10``,
``updates_per_round=20``, ``proxy_epochs=30``; image: ``updates_per_round=10``, ``proxy_epochs=30``), which
reproduces the scripts' per-method lists for every built-in method. A new method's other settings stay at
its class's defaults.

**Verdicts** (``verdicts.csv``: task, budget, metric, method, reference, verdict, effect, low, high,
p_value, p_holm, n_seeds, seeds): the new method against each committed method with a value, per task and
budget, on the per-seed area under the achievable frontier (``auf``) and score @ KL 1 and 10 nats
(``benchmarks.report.frontier_stats.per_seed_frontier``), paired on common seeds (paired t-test,
``benchmarks.report.stats.verdict_table``), Holm-adjusted per task, budget and metric. effect = new - reference
in score units; ``above`` = the new method's value is higher at alpha 0.05 after Holm, ``below`` lower,
``undecided`` otherwise. Methods with no path KL (random search, BO) have no frontier and are left out.
``python -m benchmarks.report.leaderboard --add DIR`` merges ``DIR/runs.csv`` into the committed records.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from benchmarks.common.markdown import markdown_table
from benchmarks.report import frontier_stats as fs
from benchmarks.report import leaderboard as lb, run_folders as rf, run_records as rr, stats
from benchmarks.report.run_records import (check_task_protocols, checkout_protocol, merge_records,  # noqa: F401
                                           read_committed)
from benchmarks.run import frontier, sweep
from benchmarks.run.sweep import RunSpec, SweepError

#: the matched KLs of the verdicts (score @ KL k), nats; the AUF is the third metric
VERDICT_TARGETS = (1.0, 10.0)
VERDICT_METRICS = ("auf", "score_at_kl1", "score_at_kl10")
#: the matched KL of the naturalness table
NATURALNESS_KL = 10.0
#: canary tolerances: identical on the same CPU model up to this relative difference
SAME_CPU_RTOL = 1e-6
CANARY_KEYS = ("eval_reward", "path_kl")
META_FILE = rr.COMPARE_META
CANARY_DIR = "_canary"


class CompareError(rf.LeaderboardError):
    """A refusal; printed as one line."""


@dataclass(frozen=True)
class Suite:
    """The settings every committed method of a suite had (its reproduce script) and where its records are."""

    name: str
    runs_csv: str
    script: str
    run_sets: tuple = ()
    #: agent settings given to every method whose class has the key
    where_present: dict = field(default_factory=dict)
    #: extra settings of single committed methods (compute budgets, not tuning)
    per_method: dict = field(default_factory=dict)
    #: the candidate counts swept by count-knob methods (the image script caps them)
    count_grid: tuple = frontier.COUNT_GRID
    #: where the reproduce script writes the run folders (for sample grids, when they exist)
    runs_root: str = ""
    #: whether the report shows the eval samples at matched KL (image suite)
    samples: bool = False

    def sets_for(self, method: str, cls) -> list[str]:
        cfg = getattr(cls, "default_config", {})
        own = [f"{k}={v!r}" for k, v in self.where_present.items() if k in cfg]
        return list(self.run_sets) + own + list(self.per_method.get(method, ()))


SUITES: dict[str, Suite] = {
    "synthetic": Suite(
        "synthetic", "results/frontier_runs.csv", "benchmarks/run/reproduce_frontier.sh", ("run.n_eval=128",),
        {"num_steps": 10, "updates_per_round": 20, "proxy_epochs": 30},
        {"qlognei": ("q_chunk=32", "num_restarts=4", "raw_samples=256", "maxiter=50", "mc_samples=128")},
        runs_root="results/run_records/frontier_b1000"),
    "image": Suite(
        "image", "results/frontier_image_runs.csv", "benchmarks/run/reproduce_image_frontier.sh", ("run.n_eval=128",),
        {"updates_per_round": 10, "proxy_epochs": 30}, count_grid=(2, 4, 16), runs_root="results/run_records/frontier_image_b1000",
        samples=True),
}


# ---- the committed records (read, checked and merged by benchmarks.report.run_records) ---------------
def _same_value(a, b) -> bool:
    a, b = rr.to_float(a), rr.to_float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-5)


def cell_rows(records: pd.DataFrame, task: str, method: str, value, budget: int) -> pd.DataFrame:
    m = (records["task"] == task) & (records["method"] == method) & (records["budget"] == budget)
    return records[m & records["value"].map(lambda v: _same_value(v, value))]


# ---- the canary -------------------------------------------------------------------------------------
@dataclass
class Canary:
    task: str
    method: str
    knob: str
    value: float
    budget: int
    seeds: list
    rows: pd.DataFrame

    @property
    def label(self) -> str:
        point = f"{self.knob}={frontier.fmt_value(self.value)}" if self.knob else "default"
        return f"{self.task} × {self.method} ({point}), budget {self.budget}, seeds {' '.join(map(str, self.seeds))}"

    def plan(self) -> frontier.GridPlan:
        return frontier.GridPlan(self.method, self.knob or None, [self.value])


def choose_canary(records: pd.DataFrame, tasks: list[str], seeds: list[int], spec: Optional[str]) -> Canary:
    """The committed cell to re-run: ``spec`` METHOD or METHOD=VALUE, default the pretrained model (cheap:
    no training; it checks the task, oracle, prior, sampler and evaluation), else sqdf at beta 1; on the
    first of ``tasks`` that has it, on the records' seeds of that cell among ``seeds``."""
    wanted = [(spec.partition("=")[0], rr.to_float(spec.partition("=")[2]) if "=" in spec else None)] if spec else \
        [("pretrained", None), ("sqdf", 1.0)]
    for method, value in wanted:
        for task in tasks:
            rows = records[(records["task"] == task) & (records["method"] == method)]
            if value is not None:
                rows = rows[rows["value"].map(lambda v: _same_value(v, value))]
            rows = rows[rows["seed"].isin(seeds)]
            if not len(rows):
                continue
            first = rows.sort_values(["budget", "value"]).iloc[0]
            rows = cell_rows(rows, task, method, first["value"], int(first["budget"])).sort_values("seed")
            return Canary(task, method, str(first["knob"] or ""), rr.to_float(first["value"]), int(first["budget"]),
                          [int(s) for s in rows["seed"]], rows)
    what = spec or "pretrained or sqdf at beta=1"
    raise CompareError(f"no committed cell for the canary ({what}) on tasks {', '.join(tasks)}; pick one with "
                       "--canary METHOD[=VALUE] or pass --no-canary")


def _knob_item(cls, knob: str, value) -> list[str]:
    """``KEY=value`` for a grid point, an integer for an integer setting (records store 2.0 for 2)."""
    if not knob:
        return []
    default = getattr(cls, "default_config", {}).get(knob)
    if isinstance(default, int) and not isinstance(default, bool) and float(value) == int(value):
        value = int(value)
    return [f"{knob}={value!r}"]


def judge_canary(canary: Canary, new: pd.DataFrame, cpu: str) -> tuple[bool, str]:
    """(passed, one line) comparing the canary's re-runs ``new`` (seed, eval_reward, path_kl) with the records."""
    old = canary.rows.set_index("seed")
    new = new.set_index("seed")
    missing = sorted(set(old.index) - set(new.index))
    if missing:
        return False, f"canary {canary.label}: seed(s) {missing} did not finish (see {CANARY_DIR}/*/_logs)"
    same_cpu = bool(cpu) and set(old["cpu_model"]) == {cpu}
    for key in CANARY_KEYS:
        a, b = new.loc[old.index, key].to_numpy(float), old[key].to_numpy(float)
        if same_cpu:
            bad = [(s, x, y) for s, x, y in zip(old.index, a, b)
                   if not (np.isnan(x) and np.isnan(y)) and not math.isclose(x, y, rel_tol=SAME_CPU_RTOL, abs_tol=1e-12)]
            if bad:
                s, x, y = bad[0]
                return False, (f"canary failed: {canary.label}: {key} of seed {s} is {x:.10g} here, {y:.10g} in the "
                               f"committed records (same CPU model {cpu!r}: must agree to {SAME_CPU_RTOL:g}); this "
                               "checkout does not reproduce the committed runs")
            continue
        if np.isnan(b).all() and np.isnan(a).all():
            continue
        m_new, lo_new, hi_new = stats.t_interval(a)
        m_old, lo_old, hi_old = stats.t_interval(b)
        if math.isnan(lo_old) or math.isnan(lo_new):  # one seed: no interval
            inside = math.isclose(m_new, m_old, rel_tol=1e-3, abs_tol=1e-9)
        else:
            inside = lo_old <= m_new <= hi_old or (lo_new <= hi_old and lo_old <= hi_new)
        if not inside:
            return False, (f"canary failed: {canary.label}: mean {key} {m_new:.6g} [{lo_new:.4g}, {hi_new:.4g}] here "
                           f"(CPU {cpu!r}) vs committed {m_old:.6g} [{lo_old:.4g}, {hi_old:.4g}] (CPU "
                           f"{', '.join(sorted(set(old['cpu_model']))) or 'unknown'}): outside the committed 95% "
                           "t-interval and no overlap; this checkout does not reproduce the committed runs")
    how = "identical to the committed runs (same CPU model)" if same_cpu else "inside the committed 95% t-intervals"
    return True, f"canary {canary.label}: {how}"


# ---- verdicts, tables, plots --------------------------------------------------------------------------
def per_seed(method_runs: pd.DataFrame) -> pd.DataFrame:
    return fs.per_seed_frontier(method_runs, targets=VERDICT_TARGETS)


def verdict_rows(runs: pd.DataFrame, method: str, tasks: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """(verdicts.csv rows, notes): ``method`` against every other method per task, budget and metric."""
    rows, notes = [], []
    for (task, budget), g in runs[runs["task"].isin(tasks)].groupby(["task", "budget"], sort=True):
        mine = g[g["method"] == method]
        if not len(mine):
            continue
        new = per_seed(mine)
        others = {m: per_seed(g[g["method"] == m]) for m in sorted(set(g["method"]) - {method})}
        no_kl = [m for m, v in others.items() if not len(v)]
        if no_kl:
            notes.append(f"{task} (budget {budget}): no path KL, no frontier (left out): {', '.join(no_kl)}")
        for metric in VERDICT_METRICS:
            ref = new[metric].dropna() if metric in new else pd.Series(dtype=float)
            if not len(ref):
                notes.append(f"{task} (budget {budget}): {method} has no {metric} (its frontier does not reach that KL"
                             " or it has no path KL)")
                continue
            vals = {m: v[metric].dropna() for m, v in others.items() if len(v) and metric in v and v[metric].notna().any()}
            if not vals:
                notes.append(f"{task} (budget {budget}): no committed method has a {metric} (no committed frontier "
                             "reaches that KL): no verdict")
            for v in stats.verdict_table(ref, vals):
                rows.append({"task": task, "budget": int(budget), "metric": metric, "method": method,
                             "reference": v.other, "verdict": v.verdict, "effect": v.effect, "low": v.low,
                             "high": v.high, "p_value": v.p_value, "p_holm": v.p_holm, "n_seeds": v.n_seeds,
                             "seeds": " ".join(map(str, v.seeds))})
    cols = ["task", "budget", "metric", "method", "reference", "verdict", "effect", "low", "high", "p_value",
            "p_holm", "n_seeds", "seeds"]
    return pd.DataFrame(rows, columns=cols), notes


def points_of(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    for col, default in (("grid_source", ""), ("norm_high_source", "")):
        if col not in runs:
            runs[col] = default
    runs["knob"] = runs["knob"].fillna("")
    return frontier.point_table(runs)


def matched_kl_table(points: pd.DataFrame, kl: float = NATURALNESS_KL, within: float = 3.0) -> pd.DataFrame:
    """Per task and method, the grid point whose mean path KL is nearest ``kl`` (log scale, within a factor
    ``within``): knob value, path KL, reward, score and the task's naturalness metric (means over seeds)."""
    rows = []
    for (task, budget), p in points.groupby(["task", "budget"], sort=True):
        nat = frontier.naturalness_key(p)
        for method, g in p.groupby("method", sort=True):
            g = g[g["path_kl_mean"] > 0] if method != "pretrained" else g
            if not len(g) or not g["path_kl_mean"].notna().any():
                continue
            if method == "pretrained":
                r = g.iloc[0]
            else:
                dist = (np.log(g["path_kl_mean"]) - math.log(kl)).abs()
                if dist.min() > math.log(within):
                    continue
                r = g.loc[dist.idxmin()]
            rows.append({"task": task, "budget": int(budget), "method": method,
                         "point": f"{r['knob']}={frontier.fmt_value(r['value'])}" if r["knob"] else "default",
                         "seeds": int(r["n_seeds"]), "path_kl": r["path_kl_mean"], "eval_reward": r["eval_reward_mean"],
                         "normalised_score": r["normalised_score_mean"], "naturalness": nat or "",
                         "naturalness_value": r[f"{nat}_mean"] if nat else math.nan})
    return pd.DataFrame(rows)


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    if not len(df):
        return "(none)\n"
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "–" if not math.isfinite(v) else f"{v:.{digits}g}"
        return str(v)
    return markdown_table(df.columns, ([cell(v) for v in row] for row in df.itertuples(index=False))) + "\n"


def write_report(out: Path, runs: pd.DataFrame, verdicts: pd.DataFrame, notes: list[str], meta: dict,
                 tasks: list[str], suite: Suite) -> list[Path]:
    """report.md and report.html (plots inline as base64 PNG); the PNGs also under ``out/plots``."""
    method = meta["method"]
    sel = runs[runs["task"].isin(tasks)]
    points = points_of(sel)
    plots = []
    for (task, budget), _ in points.groupby(["task", "budget"], sort=True):
        png = frontier.plot_task(points, task, int(budget), out / "plots" / f"frontier_{task}_b{int(budget)}.png")
        plots.append((f"{task}, budget {int(budget)}: the committed frontiers with {method}", png))
        if not suite.samples:
            continue
        withdirs = sel[sel["task"] == task].copy()  # committed run folders where the reproduce script left them
        root = Path(suite.runs_root or out / "_no_committed_folders")
        withdirs["run_dir"] = [str((out if m == method else root) / d)
                               for m, d in zip(withdirs["method"], withdirs["run_dir"].fillna(""))]
        grid = frontier.plot_samples_at_kl(points, withdirs, task, int(budget),
                                           out / "plots" / f"frontier_{task}_b{int(budget)}_samples.png")
        if grid is not None:
            plots.append((f"{task}: eval samples at the grid point nearest {frontier.SAMPLES_KL:g} nats", grid))
    natural = matched_kl_table(points)
    board = fs.frontier_leaderboard(sel)
    board_cols = [c for c in ("task", "budget", "method", "knob", "grid", "seeds_per_point", "auf", "auf_ci_low",
                              "auf_ci_high", "score_at_kl1", "score_at_kl10", "kl_max", "failed_runs", "n_runs")
                  if c in board.columns]
    vcols = ["task", "metric", "reference", "verdict", "effect", "low", "high", "p_value", "p_holm", "n_seeds"]
    head = [f"# {method} against the committed baselines", "",
            f"- suite: {suite.name}; committed records: `{meta['runs_csv']}` ({meta['n_committed']} runs)",
            f"- tasks: {', '.join(tasks)}; budget(s): {', '.join(map(str, meta['budgets']))}; seeds: "
            f"{' '.join(map(str, meta['seeds']))}",
            f"- grid: {meta['grid']}; settings: {' '.join(meta['sets']) or '(class defaults)'}",
            f"- task protocols (this checkout = the records): "
            + ", ".join(f"{t} {p}" for t, p in meta["task_protocols"].items()),
            f"- canary: {meta['canary']}",
            f"- new runs: {meta['n_new']} finished of {meta['n_specs']} planned"
            + (" (incomplete: run the same command again to continue)" if meta["n_new"] < meta["n_specs"] else ""),
            "", "Verdict = the new method against each committed method, per seed, paired on common seeds "
            "(paired t-test, Holm-adjusted per task and metric, alpha 0.05); effect = new - committed in score "
            "units (0 = pretrained, 1 = optimum); auf = area under the achievable frontier (KL 0.1–100), "
            "score_at_kl{k} = the frontier's score at k nats.", ""]
    md = head + ["## Verdicts", "", _md(verdicts[vcols]) if len(verdicts) else "(no verdicts)\n"]
    md += [f"- {n}" for n in notes] + ["", "## Frontier table (all methods, from the per-run records)", "",
                                        _md(board[board_cols]), "",
                                        f"## Naturalness at matched KL (grid point nearest {NATURALNESS_KL:g} nats)", "",
                                        _md(natural), "", "## Plots", ""]
    md += [f"![{t}](plots/{p.name})" for t, p in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0) if len(df) else "<p>(none)</p>"

    imgs = "".join(f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,"
                   f"{base64.b64encode(Path(p).read_bytes()).decode()}'><figcaption>{html.escape(t)}</figcaption></figure>"
                   for t, p in plots)
    items = "".join(f"<li>{html.escape(h[2:])}</li>" for h in head if h.startswith("- "))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(method)} vs committed baselines</title>"
            "<style>body{font-family:sans-serif;max-width:1300px;margin:auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(method)} against the committed baselines</h1><ul>{items}</ul>"
            f"<p>{html.escape(head[-2])}</p><h2>Verdicts</h2>{table(verdicts[vcols])}"
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
            + f"<h2>Frontier table</h2>{table(board[board_cols])}"
            f"<h2>Naturalness at matched KL ({NATURALNESS_KL:g} nats)</h2>{table(natural)}<h2>Plots</h2>{imgs}"
            "</body></html>")
    (out / "report.html").write_text(page)
    return [out / "report.md", out / "report.html", *[p for _, p in plots]]


# ---- the command --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, help="the new method: package.module:ClassName (or a built-in name)")
    p.add_argument("--knob", default=None, help="the agent setting to sweep (default: the grid rule's)")
    p.add_argument("--grid", default=None, help="its values, comma-separated (default: the grid rule's)")
    p.add_argument("--suite", choices=sorted(SUITES), default="synthetic",
                   help="synthetic (default) or image (aesthetic-manifold)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task of the records)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-2 (default: the records' seeds)")
    p.add_argument("--runs-csv", default=None, help="the committed per-run records (default: the suite's)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare_<class name>)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1, as the committed runs)")
    p.add_argument("--backend", choices=("local", "submitit"), default="local")
    p.add_argument("--cluster", default=None, choices=(None, "slurm", "local", "debug"), help="submitit cluster")
    p.add_argument("--timeout-min", type=int, default=240, help="submitit job time limit in minutes")
    p.add_argument("--mem-gb", type=float, default=None, help="submitit memory per job")
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--canary", default=None, metavar="METHOD[=VALUE]", help="the committed cell to re-run first")
    p.add_argument("--no-canary", action="store_true", help="skip the canary (the report says so)")
    p.add_argument("--max-runs", type=int, default=None, help="run at most N of the unfinished runs, then report")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _sweep_args(a: argparse.Namespace, out: Path) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), dry_run=False, no_progress=a.no_progress, backend=a.backend,
                              workers=a.workers, threads=a.threads, cluster=a.cluster, timeout_min=a.timeout_min,
                              mem_gb=a.mem_gb, partition=a.partition)


def _run(specs: list[RunSpec], a: argparse.Namespace, out: Path, label: str, limit: Optional[int] = None) -> int:
    status = sweep.run_statuses(specs, resume=True)
    if limit is not None:
        todo = [s for s in specs if status[str(s.run_dir)] != "done"][:max(limit, 0)]
        keep = {str(s.run_dir) for s in todo}
        specs = [s for s in specs if status[str(s.run_dir)] == "done" or str(s.run_dir) in keep]
    command = "python -m benchmarks.run.compare " + " ".join(sys.argv[1:])
    return sweep.execute(specs, status, _sweep_args(a, out), command, label=label)


def run_compare(a: argparse.Namespace) -> int:
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.protocol import cpu_model

    suite = SUITES[a.suite]
    csv = a.runs_csv or suite.runs_csv
    committed = read_committed(csv, suite.script, suite.runs_root)
    tasks = sweep.parse_list(a.tasks, "tasks") if a.tasks else sorted(committed["task"].unique())
    absent = [t for t in tasks if t not in set(committed["task"])]
    if absent:
        raise CompareError(f"task(s) {', '.join(absent)} have no committed runs in {csv}; their tasks: "
                           f"{', '.join(sorted(committed['task'].unique()))}")
    mine = committed[committed["task"].isin(tasks)]
    seeds = sweep.parse_int_ranges(a.seeds, "seeds", 0) if a.seeds else sorted(int(s) for s in mine["seed"].unique())
    budgets = sorted(int(b) for b in mine["budget"].unique())
    try:
        cls = resolve_method(a.method)
    except ValueError as e:
        raise CompareError(str(e)) from None
    if a.method in set(committed["method"]):
        raise CompareError(f"{a.method} already has committed runs in {csv}; the comparison is for a new method")
    if a.workers < 1 or a.threads < 1:
        raise CompareError("--workers and --threads must be >= 1")
    out = Path(a.out or f"runs/compare_{cls.__name__}")
    sets = suite.sets_for(a.method, cls)

    # 1. the protocol: task by task, then the canary cell with the suite's settings
    task_protocols = check_task_protocols(committed, tasks, csv)
    canary_line = "skipped (--no-canary)"
    canary = None if a.no_canary else choose_canary(committed, tasks, seeds, a.canary)
    if canary is not None:
        ccls = resolve_method(canary.method)
        csets = suite.sets_for(canary.method, ccls) + _knob_item(ccls, canary.knob, canary.value)
        proto = checkout_protocol(canary.task, canary.method, canary.budget, csets)[0]
        theirs = sorted(set(canary.rows["protocol"]))
        if theirs != [proto]:
            raise CompareError(f"protocol mismatch on the canary cell {canary.label}: with the {suite.name} suite's "
                               f"settings ({' '.join(csets)}) this checkout computes protocol {proto}, {csv} has "
                               f"{', '.join(theirs)} (the method's code or the settings of {suite.script} changed)")
        # 2. the canary: re-run one committed cell
        cdir = out / CANARY_DIR / canary.plan().folder(canary.value)
        specs = [RunSpec(canary.task, canary.method, canary.budget, s, str(cdir), csets, True, a.threads)
                 for s in canary.seeds]
        print(f"compare: canary {canary.label}", file=sys.stderr)
        _run(specs, a, cdir, "canary")
        done = [s.run_dir for s in specs if (s.run_dir / "final.json").exists()]
        new = rf.load_runs([cdir])[0] if done else pd.DataFrame(columns=["seed", *CANARY_KEYS, "protocol"])
        if len(new) and set(new["protocol"]) != {proto}:
            raise CompareError(f"canary {canary.label}: its runs recorded protocol {sorted(set(new['protocol']))}, "
                               f"expected {proto}")
        ok, canary_line = judge_canary(canary, new, cpu_model())
        if not ok:
            raise CompareError(canary_line)
        print(f"compare: {canary_line}", file=sys.stderr)

    # 3. the new method's grid
    try:
        plans = frontier.plan_grid([a.method], [f"{a.method}={a.grid}"] if a.grid else [],
                                   [f"{a.method}={a.knob}"] if a.knob else [])
    except SweepError as e:
        raise CompareError(str(e)) from None
    plan = plans[a.method]
    if plan.knob in frontier.COUNT_KNOBS and plan.source == "rule" and a.grid is None:
        plan.values = list(suite.count_grid)
    frontier.validate_plans(plans, tasks, budgets, sets, {})
    specs = frontier.build_specs(plans, tasks, seeds, budgets, out, sets, {}, True, a.threads)
    grid = "single point" if plan.knob is None else f"{plan.knob} = {', '.join(map(frontier.fmt_value, plan.values))} [{plan.source}]"
    print(f"compare: {a.method}: {grid}; {len(specs)} runs ({len(tasks)} tasks x {len(plan.values)} points x "
          f"{len(seeds)} seeds x {len(budgets)} budget(s))", file=sys.stderr)
    frontier.record_plan(out, plans, "python -m benchmarks.run.compare " + " ".join(sys.argv[1:]))
    rc = _run(specs, a, out, "compare", a.max_runs)
    finished = [s for s in specs if (s.run_dir / "final.json").exists()]
    if not finished:
        raise CompareError(f"no run of {a.method} finished under {out} (see {out}/_logs)")

    # 4. records, verdicts, report
    new_records = rr.collect([out])
    new_records = new_records[new_records["method"] == a.method]
    runs = merge_records(committed, new_records, str(out / "runs.csv"))
    rr.write_records(runs, out / "runs.csv")
    verdicts, notes = verdict_rows(runs, a.method, tasks)
    lb.write_csv(verdicts, out / "verdicts.csv")
    meta = {"method": a.method, "suite": suite.name, "runs_csv": str(csv), "script": suite.script,
            "runs_root": suite.runs_root, "n_committed": len(committed),
            "tasks": tasks, "seeds": seeds, "budgets": budgets, "grid": grid, "sets": sets,
            "task_protocols": task_protocols, "canary": canary_line, "n_new": len(finished), "n_specs": len(specs),
            "written": _dt.datetime.now().isoformat(timespec="seconds")}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    written = write_report(out, runs, verdicts, notes, meta, tasks, suite)
    print(f"compare: {len(finished)}/{len(specs)} runs of {a.method}; {len(verdicts)} verdicts -> "
          f"{out / 'runs.csv'}, {out / 'verdicts.csv'}, {', '.join(str(p) for p in written[:2])}", file=sys.stderr)
    for _, v in verdicts.iterrows():
        if v["verdict"] != "undecided":
            print(f"  {v['task']} {v['metric']}: {v['verdict']} {v['reference']} ({v['effect']:+.3g})", file=sys.stderr)
    return rc


def main(argv: Optional[list[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return run_compare(a)
    except (rf.LeaderboardError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Reward–KL frontier sweep: each method over a log-spaced grid of its knob, then the frontier tables and plots.

    python -m benchmarks.run.frontier --tasks levy,ackley-manifold --methods sqdf,seiko,alignprop,pretrained \
        --budget 1000 --seeds 0-2 --out runs/frontier [--workers 2] [--threads 1] [--resume] \
        [--set key=value ...] [--set-for METHOD key=value ...] [--grid METHOD=v1,v2,...] [--knob METHOD=KEY] \
        [--dry-run] [--report-only] [--csv results/frontier.csv] [--plots results/] \
        [--leaderboard results/frontier_leaderboard.csv] [--md results/frontier_leaderboard.md] \
        [--runs-csv results/frontier_runs.csv] [--until-decided REFERENCE [--max-seeds 10]]
    python -m benchmarks.run.frontier --from-runs results/frontier_runs.csv --csv results/frontier.csv \
        --plots results/ --leaderboard results/frontier_leaderboard.csv --md results/frontier_leaderboard.md

THE GRID RULE (one rule for every method, in this order of precedence):
- a method whose agent class declares its own knob, ``frontier_knob = (KEY, (v1, v2, ...))``, sweeps KEY
  over those values. The peer fine-tuners without a reward-unit KL term declare the knob that sets their
  trade-off (their lr is not swept):
  raft sweeps the kept fraction ``keep_fraction`` rho over 0.03, 0.1, 0.25, 0.5 (log(1/rho) = 3.5, 2.3, 1.4,
  0.69 nats per iteration with an exact fit; the LMFlow default 0.2 lies inside, and 0.03 still keeps 4 of
  the 160 samples ranked per iteration);
  diffusion-nft sweeps its guidance strength ``nft_beta`` over 0.1, 1, 10, 100 at the default kl_coef
  (one update's target is the old policy tilted by about exp(A/(c nft_beta)), A the batch z-score of the
  proxy reward, c = 5, so nft_beta acts as a KL weight; 0.1 is the official aggressive value (smaller is
  unstable), 1 the official default, and the grid spans the same factor 1000 as ``BETA_GRID``);
- KL-regularised methods -- sqdf, seiko, adjoint-matching, and any method whose agent class has a ``beta``
  key in ``default_config`` -- sweep ``beta`` (standardised reward per nat of exact path KL) over the common
  grid ``BETA_GRID`` = 0.01, 0.1, 1, 10, the same values for all of them;
- other methods without a KL term (alignprop, draft, draft-k, draft-1, draft-lv, ddpo, ddpo-sf, and any
  other agent with an ``lr`` key) sweep ``lr`` over default_lr x ``LR_FACTORS`` = 0.01, 0.1, 1, 10, default_lr
  read from the agent class's ``default_config``;
- inference-time methods that select among pretrained samples sweep their candidate count over
  ``COUNT_GRID`` = 2, 4, 16, 64: best-of-n's ``oversample`` N, svdd's ``candidates`` M (per step) (the
  same as declaring ``frontier_knob = ("oversample", COUNT_GRID)``);
- ``pretrained`` is a single point (KL 0); so are ``random``, ``turbo`` and ``qlognei``, which ignore the
  prior (no path KL: they appear on the naturalness plots and the -manifold scores, not on the KL axis);
- fk-steering maps onto beta (potential_scale = 1/beta), so it sweeps ``BETA_GRID`` like the KL methods.
``--grid METHOD=v1,v2,...`` replaces a method's values and ``--knob METHOD=KEY`` sweeps another agent key
(then ``--grid`` is needed unless KEY is beta, lr, a count knob or the declared knob); both are recorded
in ``<out>/_frontier.json`` and in the ``grid_source`` column.

Runs go through the sweep engine (``benchmarks/run/sweep.py``: the same checks, process pool or submitit,
resume, logs): each grid point's runs live in ``<out>/<method>__<knob>=<value>/`` (``<method>__default``
for a single point) as the usual ``<task>__<method>__b<budget>__s<seed>`` folders; finished runs are
skipped. ``--set`` goes to every run, ``--set-for`` to one method's runs; neither may set a swept knob.

After the runs (or with ``--report-only``, which runs nothing) every grid folder under ``--out`` is read:
- ``--csv`` (results/frontier.csv): one row per (task, method, knob, value, budget) with the number of
  seeds and the mean and 95% Student-t interval over seeds of eval_reward, normalised_score (0 = pretrained,
  1 = task optimum; as ``benchmarks/report/leaderboard.py``; both also with median and IQM), path_kl (nats), vendi
  and the task's other metrics (naturalness: invalid_frac, prior_logpdf, fd_*; vendi_valid / n_valid when
  logged), wall_time_s; ``failed_frac`` = the fraction of its seeds that failed
  (``frontier_stats.run_failed``); ``on_frontier`` marks the vertices of the method's achievable frontier
  (the upper concave envelope in linear KL, ``benchmarks/report/frontier_stats.py``);
- ``--plots`` (results/): ``frontier_<task>.png`` (``_b<budget>`` added when a task has several budgets):
  eval reward vs path KL (log x; the pretrained model, KL 0, drawn at ``KL_FLOOR`` = 0.01 nats or half
  the smallest KL, whichever is lower; per method its grid points with 95% t-interval error bars and its
  achievable frontier as a line, points with failed seeds crossed and labelled) and eval reward vs the
  task's naturalness metric, one line per method through its grid points sorted by KL, 95% CI bands;
  and, where the runs render sample grids (the image tier), ``frontier_<task>_samples.png``: each
  method's eval samples at its grid point nearest ``SAMPLES_KL`` = 10 nats, beside the pretrained model's;
- ``--leaderboard`` (results/frontier_leaderboard.csv) and ``--md``: reward and score at matched path KL
  (1, 10, 100 nats), area under the reward–KL frontier, best score on -manifold tasks; definitions in
  ``benchmarks/report/frontier_stats.py``;
- ``--runs-csv`` (results/frontier_runs.csv): one row per run, the committed source of truth: task, method,
  knob, value, seed, budget, eval_reward, normalised_score (with norm_low, norm_high, norm_high_source),
  path_kl, vendi, the naturalness metrics the task logs (invalid_frac, n_valid, vendi_valid, fd_phi, ...),
  n_eval, round0_eval_reward / round0_path_kl (the failure rule's pretrained spread),
  best_round_eval_reward, protocol, task_protocol, commit, cpu_model, wall_time_s, grid_source, every
  other scalar of final.json, and run_dir relative to ``--out`` (``benchmarks/report/run_records.py``'s column
  order and number format). ``--from-runs CSV`` rebuilds every table and plot from that file alone (no run
  folder; --tasks/--methods/--budget filter it, re-normalising over the rows kept as the folders would);
  only the sample figures, which show the runs' samples.png, need ``--report-only`` on the folders.

``--until-decided REFERENCE`` (seeds until the verdicts are decided): after every grid point has run on
``--seeds`` (n0 seeds), each look computes, per task and budget, the per-seed area under the achievable
frontier (``DECIDE_METRIC`` = auf, ``frontier_stats.per_seed_frontier``) of REFERENCE and of every other
method with a knob grid and a path KL, and their paired verdicts (``stats.verdict_table``: paired t-test
on common seeds, Holm across the task's methods). A method still "undecided" on a task gets the next seed
id on every one of its grid points there, and REFERENCE with it (so the seeds stay paired); a method
called above or below is stopped and gets no more seeds on that task; the rest stop at ``--max-seeds``
(default 10) seeds. Looking again after every added seed would inflate the false-positive rate (with 5
first seeds, a cap of 10 and 0.05 per look, about 13 % of equal pairs get called, simulated), so every
look tests at alpha / L with L = max_seeds - n0 + 1 looks (Bonferroni over the looks, Holm across the
task's methods within a look: at most alpha = 0.05 chance of any false call per task over the whole
procedure; ``tests/test_until_decided.py`` simulates it: about 3 % for one or three equal methods), at the
cost of power (at 5 seeds one comparison needs |t| > 4.9 instead of 2.8). A pair's decision is the verdict of the
look that stopped it, or "undecided" at the cap; the last look lists every pair again on all the seeds
it has. (``python -m benchmarks.report.frontier_readme RUNS_CSV --run-verdicts REFERENCE --frontier auf`` gives
verdicts on the runs CSV at 0.05 without the looks' correction: not the sequential decision.)
Resumable: ``<out>/_until_decided.json`` holds the settings, the seeds planned per round (written before
they run), the stopped methods and every look's verdicts; rerunning the same command (with ``--resume``
if runs were cut short) re-reads the finished runs and continues.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import math
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from benchmarks.common.provenance import provenance
from benchmarks.report import frontier_stats as fs
from benchmarks.report import leaderboard as lb
from benchmarks.report import run_folders as rf
from benchmarks.report import run_records as rr
from benchmarks.report import stats
from benchmarks.report.run_records import POINT_DIR as _POINT_DIR
from benchmarks.report.run_records import fmt_value
from benchmarks.report.run_records import folder_value as _folder_value
from benchmarks.run import sweep
from benchmarks.run.sweep import RunSpec, SweepError

BETA_GRID = (0.01, 0.1, 1.0, 10.0)
LR_FACTORS = (0.01, 0.1, 1.0, 10.0)
#: candidate counts of the selection methods: best-of-N's N (``oversample``; KL log N - (N-1)/N = 0.19,
#: 0.64, 1.83, 3.17 nats) and SVDD's M (``candidates``; that KL per selecting step)
COUNT_GRID = (2, 4, 16, 64)
COUNT_KNOBS = ("oversample", "candidates")
#: KL-regularised methods (they sweep beta even before their class lists it, so a missing key is an error)
KL_METHODS = ("sqdf", "seiko", "adjoint-matching")
#: methods with no knob on the rule: the pretrained model, and the prior-free searchers (no path KL)
SINGLE_POINT = ("pretrained", "random", "turbo", "qlognei")
PLAN_FILE = "_frontier.json"
KL_FLOOR = 1e-2  # nats; where KL-0 points are drawn on the log axis


# ---- the grid -----------------------------------------------------------------------------------
@dataclass
class GridPlan:
    """One method's knob and values; knob None = a single point."""

    method: str
    knob: Optional[str]
    values: list
    source: str = "rule"

    def folder(self, value) -> str:
        safe = self.method.replace(":", ".").replace("/", "_")  # as RunSpec / sqdf_bbo.run name folders
        return f"{safe}__default" if self.knob is None else f"{safe}__{self.knob}={fmt_value(value)}"

    def set_item(self, value) -> list[str]:
        return [] if self.knob is None else [f"{self.knob}={value!r}"]


def _clean(x: float) -> float:
    return float(f"{x:.6g}")  # 0.001 * 0.01 -> 1e-05, not 1.0000000000000001e-05


def declared_knob(method: str, cls) -> Optional[tuple[str, list]]:
    """The agent class's own ``frontier_knob = (KEY, (v1, ...))`` as (KEY, sorted values); None if it
    declares none; SweepError if the declaration is malformed or KEY is not one of its settings."""
    decl = getattr(cls, "frontier_knob", None)
    if decl is None:
        return None
    try:
        key, values = decl
        values = sorted(values)
    except (TypeError, ValueError):
        raise SweepError(f"{method}: frontier_knob must be (KEY, (v1, v2, ...)), got {decl!r}") from None
    if key not in getattr(cls, "default_config", {}) or not values:
        raise SweepError(f"{method}: frontier_knob {decl!r} must name one of its settings and give values")
    return key, values


def default_knob(method: str, cls) -> Optional[str]:
    """The rule's knob: None (single point), the class's declared ``frontier_knob``, 'beta' (KL-regularised),
    'lr' or a count knob; SweepError if none applies."""
    cfg = getattr(cls, "default_config", {})
    if method in SINGLE_POINT:
        return None
    declared = declared_knob(method, cls)
    if declared is not None:
        return declared[0]
    if method in KL_METHODS or "beta" in cfg:
        return "beta"
    if "lr" in cfg:
        return "lr"
    for knob in COUNT_KNOBS:
        if knob in cfg:
            return knob
    raise SweepError(f"method {method!r} has neither a beta nor an lr setting (nor a frontier_knob); give "
                     f"--knob {method}=KEY --grid {method}=v1,v2,...")


def rule_values(method: str, cls, knob: str) -> list:
    """The declared values for the class's ``frontier_knob``; BETA_GRID for beta; default x LR_FACTORS for lr;
    COUNT_GRID for a count knob; SweepError for any other knob (needs --grid)."""
    declared = declared_knob(method, cls)
    if declared is not None and knob == declared[0]:
        return list(declared[1])
    if knob == "beta":
        return list(BETA_GRID)
    if knob == "lr":
        return [_clean(float(cls.default_config["lr"]) * f) for f in LR_FACTORS]
    if knob in COUNT_KNOBS:
        return list(COUNT_GRID)
    raise SweepError(f"--knob {method}={knob}: give its values with --grid {method}=v1,v2,... "
                     f"(the rule only covers beta, lr, {', '.join(COUNT_KNOBS)} and a declared frontier_knob)")


def _parse_pairs(items: Sequence[str], flag: str, methods: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        method, sep, rhs = item.partition("=")
        method, rhs = method.strip(), rhs.strip()
        if not sep or not method or not rhs:
            raise SweepError(f"{flag} expects METHOD=..., got {item!r}")
        if method not in methods:
            raise SweepError(f"{flag} names method {method!r} that is not in --methods ({', '.join(methods)})")
        if method in out:
            raise SweepError(f"{flag} is given twice for method {method!r}")
        out[method] = rhs
    return out


def _parse_values(text: str, method: str, integer: bool) -> list:
    vals = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        try:
            v = float(part)
        except ValueError:  # a categorical knob value (an ablation such as buffer=none)
            if not re.fullmatch(r"[A-Za-z][\w+.-]*", part):
                raise SweepError(f"--grid {method}: {part!r} is neither a number nor a plain word") from None
            vals.append(part)
            continue
        if not math.isfinite(v) or v < 0:
            raise SweepError(f"--grid {method}: values must be finite and >= 0, got {part!r}")
        if integer:
            if v != int(v):
                raise SweepError(f"--grid {method}: the knob takes integers, got {part!r}")
            v = int(v)
        vals.append(v)
    if not vals:
        raise SweepError(f"--grid {method}: no value given")
    if len({fmt_value(v) for v in vals}) < len(vals):
        raise SweepError(f"--grid {method}: values repeat (after rounding to 6 digits): {text}")
    return sorted(vals) if all(isinstance(v, (int, float)) for v in vals) else vals


def _same_value(got, value) -> bool:
    if got is None:
        return False
    if isinstance(value, float):
        try:
            return math.isclose(float(got), value, rel_tol=1e-5)
        except (TypeError, ValueError):
            return False
    return str(got) == str(value)


def plan_grid(methods: Sequence[str], grid_args: Sequence[str] = (), knob_args: Sequence[str] = ()) -> dict[str, GridPlan]:
    """Each method's GridPlan by the rule, with ``--grid`` / ``--knob`` overrides; raises SweepError."""
    from sqdf_bbo.agents import METHODS, available_methods, resolve_method

    grids, knobs = _parse_pairs(grid_args, "--grid", methods), _parse_pairs(knob_args, "--knob", methods)
    plans, errors = {}, []
    for m in methods:
        try:
            if ":" not in m and m not in METHODS:
                raise ValueError(f"unknown method {m!r}")
            cls = resolve_method(m)
        except ValueError as e:
            errors.append(str(e))
            continue
        if m in SINGLE_POINT and (m in grids or m in knobs):
            raise SweepError(f"{m!r} is a single point; it takes no --grid or --knob")
        knob = knobs.get(m) or default_knob(m, cls)
        if m in knobs and knob not in cls.default_config:
            raise SweepError(f"--knob {m}={knob}: {cls.__name__} has no setting {knob!r}; allowed: "
                             f"{', '.join(sorted(cls.default_config))}")
        if knob is None:
            plans[m] = GridPlan(m, None, [math.nan], "rule")
        elif m in grids:
            integer = isinstance(cls.default_config.get(knob), int) and not isinstance(cls.default_config.get(knob), bool)
            plans[m] = GridPlan(m, knob, _parse_values(grids[m], m, integer), "--grid")
        else:
            plans[m] = GridPlan(m, knob, rule_values(m, cls, knob), "--knob" if m in knobs else "rule")
    if errors:
        raise SweepError("; ".join(errors) + f". Available methods: {', '.join(available_methods())}")
    return plans


def validate_plans(plans: dict[str, GridPlan], tasks, budgets, sets, method_sets) -> None:
    """sweep.validate for each method with its knob set to each grid value, after checking that no --set or
    --set-for sets a swept knob and every --set-for names a method of the sweep."""
    from sqdf_bbo.run import CLIError, parse_sets

    stray = sorted(set(method_sets) - set(plans))
    if stray:
        raise SweepError(f"--set-for names method(s) {', '.join(stray)} that are not in --methods ({', '.join(plans)})")
    for m, plan in plans.items():
        try:
            agent_keys = parse_sets(list(sets) + method_sets.get(m, []))[0]
        except CLIError as e:
            raise SweepError(str(e)) from None
        if plan.knob in agent_keys:
            raise SweepError(f"{plan.knob!r} is the swept knob of {m}; set its values with --grid {m}=v1,v2,... "
                             "instead of --set")
        for value in plan.values or [None]:  # every grid value, resolved by the agent's typed settings
            extra = [] if value is None else plan.set_item(value)
            sweep.validate(tasks, [m], budgets, sets, {m: method_sets.get(m, []) + extra})


def build_specs(plans: dict[str, GridPlan], tasks, seeds, budgets, out, sets, method_sets, resume,
                threads) -> list[RunSpec]:
    """Every run of every grid point, seed-major (a cut-short sweep covers every point with its first seeds)."""
    return [RunSpec(t, m, b, s, str(Path(out) / plan.folder(v)), list(sets) + method_sets.get(m, []) + plan.set_item(v),
                    resume, threads)
            for s in seeds for b in budgets for t in tasks for m, plan in plans.items() for v in plan.values]


def record_plan(out: Path, plans: dict[str, GridPlan], command: str) -> None:
    """Merge the plans into ``<out>/_frontier.json`` (methods from earlier invocations are kept)."""
    path = Path(out) / PLAN_FILE
    rec = json.loads(path.read_text()) if path.exists() else {"methods": {}, "commands": []}
    for m, p in plans.items():
        rec["methods"][m] = {"knob": p.knob, "values": [] if p.knob is None else p.values, "source": p.source}
    rec["commands"].append({**provenance(command=command),
                            "started": _dt.datetime.now().isoformat(timespec="seconds")})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))


# ---- reading the runs ---------------------------------------------------------------------------
def load_frontier_runs(out: str | Path, tasks=None, methods=None, budgets=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, rounds) of every grid folder ``<out>/<method>__<knob>=<value>`` (or ``__default``).

    ``runs``: one row per finished run (the leaderboard's final.json columns) plus knob, value, point,
    grid_source and normalised_score / norm_low / norm_high / norm_high_source. Checks that every run's
    config.json has the folder's knob value and that a point's seeds share their settings.
    """
    out = Path(out)
    if not out.is_dir():
        raise rf.LeaderboardError(f"--out {str(out)!r} does not exist or is not a folder")
    plan = json.loads((out / PLAN_FILE).read_text()).get("methods", {}) if (out / PLAN_FILE).exists() else {}
    finals, rounds = [], []
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        m = _POINT_DIR.match(d.name)
        if not rf.find_run_dirs([d])[0]:
            continue
        if not m:
            print(f"note: {d} is not a grid folder (<method>__<knob>=<value>); left out", file=sys.stderr)
            continue
        f, r = rf.load_runs([d])
        rf.check_uniform_settings(f)
        knob = m.group("knob") or ""
        value = _folder_value(m.group("value")) if knob else math.nan
        n_eval, commit = [], []  # evaluation designs per run (config.json's run.n_eval, for
        for run_dir in f["run_dir"]:  # frontier_stats.run_failed) and the commit that made it
            cfg = rf._read_json(Path(run_dir) / "config.json") if (Path(run_dir) / "config.json").exists() else {}
            got = cfg.get("agent", {}).get(knob) if knob else None
            if knob and not _same_value(got, value):
                raise rf.LeaderboardError(f"{run_dir}: its folder says {knob}={m.group('value')} but config.json "
                                          f"has agent.{knob}={got!r}")
            n_eval.append((cfg.get("run") or {}).get("n_eval"))
            commit.append(str(cfg.get("git_commit") or ""))
        best = r.groupby(["task", "method", "budget", "seed"])["eval_reward"].max().rename("best_round_eval_reward")
        f = f.merge(best.reset_index(), on=["task", "method", "budget", "seed"], how="left")
        f = f.assign(knob=knob, value=value, point=d.name, commit=commit,
                     n_eval=pd.to_numeric(pd.Series(n_eval, index=f.index), errors="coerce"))
        f["grid_source"] = f["method"].map(lambda x: plan.get(x, {}).get("source", ""))
        r = r.assign(knob=knob, value=value, point=d.name)
        finals.append(f)
        rounds.append(r)
    if not finals:
        raise rf.LeaderboardError(f"no finished run in a grid folder under {str(out)!r}")
    runs, rr = pd.concat(finals, ignore_index=True), pd.concat(rounds, ignore_index=True)
    for col, keep in (("task", tasks), ("method", methods), ("budget", budgets)):
        if keep:
            runs, rr = runs[runs[col].isin(keep)], rr[rr[col].isin(keep)]
    if runs.empty:
        raise rf.LeaderboardError("no finished run matches --tasks/--methods/--budget under " + str(out))
    rf.require_one_protocol(runs, str(out))  # one table, one protocol: never pool runs that computed differently
    runs = rf.add_normalised(runs, rf.normalisation_bounds(runs, rr))
    return runs.reset_index(drop=True), rr.reset_index(drop=True)


#: metrics of the frontier CSV, in order; the task's other numeric keys follow
FIRST_METRICS = ("eval_reward", "normalised_score", "path_kl", "vendi", "vendi_valid", "n_valid",
                 "mean_pairwise_distance")
LAST_METRICS = ("wall_time_s",)
#: metrics that also get a median and an interquartile mean over seeds (robust to a failed seed)
ROBUST_METRICS = ("eval_reward", "normalised_score")


def point_table(runs: pd.DataFrame, confidence: float = fs.CONFIDENCE) -> pd.DataFrame:
    """One row per grid point: n_seeds, seeds, ``<metric>_mean/_ci_low/_ci_high`` (Student-t interval over
    seeds, ``stats.t_interval``; NaN bounds with one seed) of every metric, ``_median`` and ``_iqm`` of
    eval_reward and normalised_score, ``n_failed`` / ``failed_frac`` (seeds that failed,
    ``frontier_stats.run_failed``; they stay in the means), and ``on_frontier`` = a vertex of the method's
    achievable frontier (``frontier_stats.envelope`` of its point means and the pretrained start)."""
    skip = {"knob", "value", "norm_low", "norm_high", "grid_source", "point", "peak_mem_mb", "n_eval", "failed",
            "best_round_eval_reward", "torch_threads"}
    extras = [k for k in rf.extra_metric_keys(runs) if k not in skip and k not in FIRST_METRICS]
    # a metric no run logged (all empty) gets no columns, whether the runs come from folders or a runs CSV
    metrics = [k for k in (*FIRST_METRICS, *extras, *LAST_METRICS)
               if k in runs and pd.to_numeric(runs[k], errors="coerce").notna().any()]
    runs = runs.assign(failed=fs.failed_mask(runs))
    rows = []
    for (task, method, knob, value, budget), g in runs.groupby(fs.POINT_KEY, sort=True, dropna=False):
        g = g.sort_values("seed")
        row = {"task": task, "method": method, "knob": knob, "value": value, "budget": int(budget),
               "grid_source": g["grid_source"].iloc[0], "n_seeds": len(g), "seeds": " ".join(map(str, g["seed"]))}
        for k in metrics:
            v = pd.to_numeric(g[k], errors="coerce").dropna().to_numpy(float)
            row[f"{k}_mean"], row[f"{k}_ci_low"], row[f"{k}_ci_high"] = stats.t_interval(v, confidence)
            if k in ROBUST_METRICS:
                row[f"{k}_median"] = float(np.median(v)) if len(v) else math.nan
                row[f"{k}_iqm"] = stats.iqm(v) if len(v) else math.nan
        row["n_failed"] = int(g["failed"].sum())
        row["failed_frac"] = row["n_failed"] / len(g)
        b = g.iloc[0]
        row.update({"norm_low": b["norm_low"], "norm_high": b["norm_high"], "norm_high_source": b["norm_high_source"]})
        rows.append(row)
    pts = pd.DataFrame(rows)
    pts["on_frontier"] = False
    for _, g in pts.groupby(fs.ROW_KEY):
        _, _, src = fs.envelope(g["path_kl_mean"], g["eval_reward_mean"], float(g["norm_low"].iloc[0]))
        pts.loc[g.index[src[src >= 0]], "on_frontier"] = True
    return pts


def naturalness_key(points: pd.DataFrame) -> Optional[str]:
    """The naturalness metric of these points: invalid_frac, else fd_phi (or another Fréchet distance),
    else prior_logpdf; None if none is logged."""
    def has(k):
        return f"{k}_mean" in points and points[f"{k}_mean"].notna().any()

    fds = sorted(c[:-5] for c in points.columns if c.endswith("_mean") and not c.startswith("eval_")
                 and any(s in c.lower() for s in ("fd_", "frechet", "fid")) and not c.startswith("fd_n"))
    for k in ("invalid_frac", "fd_phi", *fds, "prior_logpdf"):
        if has(k):
            return k
    return None


# ---- plots --------------------------------------------------------------------------------------
def plot_task(points: pd.DataFrame, task: str, budget: int, path: Path) -> Path:
    """frontier_<task>.png: eval reward vs path KL (log x) and vs the naturalness metric, 95% CIs."""
    from benchmarks.report import plot as bplot  # sets the Agg backend

    plt = bplot.plt
    p = points[(points["task"] == task) & (points["budget"] == budget)]
    nat = naturalness_key(p)
    methods = bplot._method_order(p["method"])
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6), squeeze=False)
    ax_kl, ax_nat = axes[0]
    r_pre = float(p["norm_low"].iloc[0])
    kl_pos = p.loc[p["path_kl_mean"] > 0, "path_kl_mean"]
    floor = min(KL_FLOOR, float(kl_pos.min()) / 2) if len(kl_pos) else KL_FLOOR  # left of every real point
    ax_kl.axhline(r_pre, color="#7f7f7f", lw=0.8, ls=":")
    ax_kl.plot([floor], [r_pre], marker="*", ms=13, color=bplot.colour("pretrained", methods), ls="none",
               label="pretrained (KL 0)", zorder=5)
    for m in methods:
        g = p[p["method"] == m].sort_values("path_kl_mean")
        c = bplot.colour(m, methods)
        if m in SINGLE_POINT or not g["knob"].iloc[0]:
            if nat:
                ax_nat.errorbar(g[f"{nat}_mean"], g["eval_reward_mean"],
                                xerr=_err(g, nat), yerr=_err(g, "eval_reward"), marker="*", ms=13, color=c,
                                ls="none", label=m, zorder=5)
            continue
        x = np.maximum(g["path_kl_mean"].to_numpy(float), floor)
        y = g["eval_reward_mean"].to_numpy(float)
        label = f"{m} ({g['knob'].iloc[0]})"
        ls, mk = bplot.style(m)
        lw = 2.4 if m == "sqdf" else 1.6
        xs, ys, _ = fs.envelope(g["path_kl_mean"], y, r_pre)
        if len(xs) > 1:  # the achievable frontier: linear in KL between vertices (curved on the log axis)
            k = np.union1d(np.geomspace(floor, xs[-1], 400), xs[1:])
            ax_kl.plot(k, fs.envelope_at(xs, ys, k), ls=ls, color=c, lw=lw, label=label)
        else:
            ax_kl.plot([], [], ls=ls, color=c, lw=lw, label=label)
        ax_kl.errorbar(x, y, xerr=_err(g, "path_kl"), yerr=_err(g, "eval_reward"), fmt="none", ecolor=c,
                       elinewidth=0.7, alpha=0.7)
        on = g["on_frontier"].to_numpy(bool)
        ax_kl.scatter(x[on], y[on], color=c, s=26, zorder=4, marker=mk)
        ax_kl.scatter(x[~on], y[~on], facecolors="white", edgecolors=c, s=26, zorder=4, marker=mk)
        if "failed_frac" in g:
            for xi, yi, nf, ns in zip(x, y, g["n_failed"], g["n_seeds"]):
                if nf > 0:  # failed seeds stay in the mean: cross the point and say how many
                    ax_kl.scatter([xi], [yi], marker="x", color="black", s=30, lw=0.9, zorder=6)
                    ax_kl.annotate(f"{int(nf)}/{int(ns)} failed", (xi, yi), xytext=(3, -8),
                                   textcoords="offset points", fontsize=6, color=c)
        if nat:
            xn = g[f"{nat}_mean"].to_numpy(float)
            ax_nat.plot(xn, y, ls=ls, marker=mk, color=c, lw=lw - 0.2, ms=4, label=label)
            ax_nat.fill_between(xn, g["eval_reward_ci_low"], g["eval_reward_ci_high"], color=c, alpha=0.12, lw=0)
            ax_nat.errorbar(xn, y, xerr=_err(g, nat), fmt="none", ecolor=c, elinewidth=0.7, alpha=0.7)
    lo = _focus_ylim(p, r_pre)
    if lo is not None:  # collapsed grid points far below the pretrained model would flatten the frontier
        for ax in (ax_kl, ax_nat):
            ax.set_ylim(bottom=lo)
        ax_kl.text(0.01, 0.01, f"y axis cut at {lo:.3g}: points below it (collapsed runs) are off the chart",
                   transform=ax_kl.transAxes, fontsize=7, color="#555555")
    ax_kl.set_xscale("log")
    ax_kl.set_xlabel(f"path KL to the pretrained model (nats, log scale; pretrained KL 0 drawn at {floor:.2g})")
    ax_kl.set_ylabel("eval reward")
    ax_kl.set_title("reward vs KL: line = achievable frontier (upper concave envelope in linear KL);\n"
                    "hollow = below it; x = point with failed seeds", fontsize=9)
    if nat:
        xv = p[f"{nat}_mean"].dropna()
        if len(xv) and xv.min() > 0 and xv.max() / xv.min() > 50:  # e.g. Fréchet distances spanning decades
            ax_nat.set_xscale("log")
        ax_nat.set_xlabel(bplot.NATURALNESS_LABELS.get(nat, nat))
        ax_nat.set_ylabel("eval reward")
        ax_nat.set_title(f"reward vs naturalness ({nat})", fontsize=9)
    else:
        ax_nat.text(0.5, 0.5, "no naturalness metric logged", ha="center", va="center", transform=ax_nat.transAxes)
    for ax in (ax_kl, ax_nat):
        ax.grid(alpha=0.3, which="both", lw=0.4)
    handles, labels = ax_kl.get_legend_handles_labels()
    for h, lab in zip(*ax_nat.get_legend_handles_labels()):  # methods drawn on the naturalness panel only
        if lab not in labels and not lab.startswith("pretrained"):
            handles.append(h)
            labels.append(f"{lab} (no path KL)")
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    n = f"{int(p['n_seeds'].min())}–{int(p['n_seeds'].max())}" if p["n_seeds"].nunique() > 1 else str(int(p["n_seeds"].iloc[0]))
    fig.suptitle(f"{task}: reward–KL frontier, budget {budget}, {n} seed(s) per point, 95% Student-t intervals over seeds\n"
                 "line: solid = KL-regularised, dashed = reward backprop, dash-dot = policy gradient / "
                 "reward-weighted, dotted = inference-time", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=bplot.DPI)
    plt.close(fig)
    return path


SAMPLES_KL = 10.0  # nats: the matched KL of the sample figure


def plot_samples_at_kl(points: pd.DataFrame, runs: pd.DataFrame, task: str, budget: int, path: Path,
                       target_kl: float = SAMPLES_KL) -> Optional[Path]:
    """frontier_<task>_samples.png, for tasks whose runs render sample grids (the image tier): the pretrained
    model's eval samples, then per method with a path KL the eval samples of its grid point whose mean KL
    is nearest ``target_kl`` in log10 (lowest seed; the left panel of that run's samples.png, whose right
    panel is the pretrained model's). None when no run has a samples.png."""
    from PIL import Image

    from benchmarks.report import plot as bplot

    plt = bplot.plt
    picks = samples_at_kl_picks(points, runs, task, budget, target_kl)
    if not picks:
        return None
    fig, axes = bplot.image_panels(len(picks), 3.1, 3.4, 0.6)
    for ax, (label, png, side) in zip(axes, picks):
        im = Image.open(png).convert("RGB")
        w, h = im.size
        top = int(0.09 * h)  # below the figure title and the panel's own title
        ax.imshow(im.crop((0, top, w // 2, h) if side == "left" else (w // 2, top, w, h)))
        ax.set_title(label, fontsize=8)
    fig.suptitle(f"{task}: eval samples at the grid point nearest {target_kl:g} nats of path KL "
                 f"(budget {budget}, lowest seed)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    plt.close(fig)
    # 256 colours: a quarter of the bytes, and these grids of flat 16x16 patches lose nothing visible
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
        .save(path, optimize=True)
    return path


def samples_at_kl_picks(points: pd.DataFrame, runs: pd.DataFrame, task: str, budget: int,
                        target_kl: float = SAMPLES_KL) -> list[tuple[str, Path, str]]:
    """(label, samples.png, panel) per panel of :func:`plot_samples_at_kl`: first the pretrained model (the
    right panel of the first pick's grid), then per method with KL > 0 the lowest seed with a samples.png
    of the point nearest ``target_kl`` in log10 (its left panel). Empty when no such samples.png exists."""
    from benchmarks.report import plot as bplot

    p = points[(points["task"] == task) & (points["budget"] == budget) & (points["path_kl_mean"] > 0)
               & (points["method"] != "pretrained")]
    r = runs[(runs["task"] == task) & (runs["budget"] == budget)]
    picks = []
    for m in bplot._method_order(p["method"]):
        g = p[p["method"] == m]
        best = g.iloc[int(np.argmin(np.abs(np.log10(g["path_kl_mean"].to_numpy(float)) - math.log10(target_kl))))]
        seeds = r[(r["method"] == m) & r["value"].map(lambda v: _same_point_value(v, best["value"]))].sort_values("seed")
        png = next((Path(d) / "samples.png" for d in seeds["run_dir"] if (Path(d) / "samples.png").exists()), None)
        if png is not None:
            knob = f"{best['knob']}={fmt_value(best['value'])}" if best["knob"] else "default"
            picks.append((f"{m} ({knob})\nKL {best['path_kl_mean']:.3g} nats, reward {best['eval_reward_mean']:.2f}",
                          png, "left"))
    if picks:
        picks.insert(0, (f"pretrained\nKL 0, reward {float(p['norm_low'].iloc[0]):.2f}", picks[0][1], "right"))
    return picks


def _same_point_value(a, b) -> bool:
    """Knob values of one grid point: equal, or both NaN (a method's single default point)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _focus_ylim(p: pd.DataFrame, r_pre: float) -> Optional[float]:
    """A lower y limit that keeps the frontiers' peaks and the pretrained model in view when other points
    lie more than 3x further below the pretrained model than the best peak rises above it; else None."""
    top = max(float(p.loc[p["on_frontier"].astype(bool), "eval_reward_mean"].max()), r_pre) \
        if p["on_frontier"].astype(bool).any() else r_pre
    span = max(top - r_pre, 1e-9)
    low = float(p["eval_reward_ci_low"].fillna(p["eval_reward_mean"]).min())
    return r_pre - 3 * span if low < r_pre - 3 * span else None


def _err(g: pd.DataFrame, k: str) -> np.ndarray:
    """(2, n) error-bar lengths from the interval columns; 0 where there is no interval (one seed)."""
    m = g[f"{k}_mean"].to_numpy(float)
    err = np.vstack([m - g[f"{k}_ci_low"].to_numpy(float), g[f"{k}_ci_high"].to_numpy(float) - m])
    return np.nan_to_num(np.clip(err, 0, None), nan=0.0)


# ---- the report ---------------------------------------------------------------------------------
def write_report(out, csv: Optional[Path], plots: Optional[Path], board_csv: Optional[Path], md: Optional[Path],
                 tasks=None, methods=None, budgets=None, targets=fs.KL_TARGETS, cap=fs.AUF_CAP, low=fs.AUF_LOW,
                 confidence: float = fs.CONFIDENCE, runs_csv: Optional[Path] = None,
                 from_runs: Optional[Path] = None) -> list[Path]:
    """Read the grid folders under ``out`` (or, with ``from_runs``, the one-row-per-run CSV instead) and write
    the point CSV, the PNGs and the leaderboard (each skipped where its path is None), and with ``runs_csv``
    the runs themselves; returns the paths written."""
    if from_runs is not None:
        runs = load_runs_csv(from_runs, tasks, methods, budgets)
    else:
        runs, _ = load_frontier_runs(out, tasks, methods, budgets)
    runs = canonical_runs(runs)
    written = []
    if runs_csv is not None:
        write_runs_csv(runs, Path(runs_csv), None if from_runs is not None else Path(out))
        written.append(Path(runs_csv))
    pts = point_table(runs, confidence)
    if csv is not None:
        lb.write_csv(pts, Path(csv))
        written.append(Path(csv))
    if plots is not None:
        for task, g in pts.groupby("task", sort=True):
            budgets_t = sorted(g["budget"].unique())
            for b in budgets_t:
                name = f"frontier_{task}.png" if len(budgets_t) == 1 else f"frontier_{task}_b{b}.png"
                written.append(plot_task(pts, task, int(b), Path(plots) / name))
                if from_runs is not None:  # the sample grids are images in the run folders, not in the CSV
                    continue
                grid = plot_samples_at_kl(pts, runs, task, int(b), Path(plots) / name.replace(".png", "_samples.png"))
                if grid is not None:
                    written.append(grid)
        if from_runs is not None:
            print(f"note: built from {from_runs}: the sample figures (frontier_<task>_samples.png) need the run "
                  "folders' samples.png and are not drawn; make them with --report-only --out RUNS", file=sys.stderr)
    board = fs.frontier_leaderboard(runs, targets, cap, low, confidence)
    if board_csv is not None:
        lb.write_csv(board, Path(board_csv))
        written.append(Path(board_csv))
    if md is not None:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(fs.frontier_markdown(board, targets, cap, low, confidence=confidence))
        written.append(Path(md))
    print(f"frontier: {len(runs)} runs, {len(pts)} grid points -> " + ", ".join(map(str, written)), file=sys.stderr)
    return written


# ---- one row per run: the committed source of the tables -------------------------------------------
#: what a runs CSV must hold to rebuild the tables and plots (the failure rule also reads round-0 values,
#: n_valid / n_eval / invalid_frac where logged)
RUNS_CSV_COLUMNS = ("task", "method", "knob", "value", "budget", "seed", "eval_reward", "normalised_score",
                    "norm_low", "norm_high", "norm_high_source", "path_kl", "grid_source")


def canonical_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs in one row order (``run_records.order_records``, unpadded) with empty columns as float NaN, so
    that runs read from folders and the same runs read back from their CSV give identical tables."""
    runs = rr.order_records(runs, pad=False)
    for c in runs.columns:
        if runs[c].dtype == object and runs[c].isna().all():
            runs[c] = np.nan
    return runs


def write_runs_csv(runs: pd.DataFrame, path: Path, root: Optional[Path] = None) -> None:
    """One row per run (``run_records.write_records``: full float precision), ``run_dir`` relative to the
    ``--out`` folder ``root`` (the CSV is committed; the folders are not)."""
    rec = runs.copy()
    if root is not None:
        rec["run_dir"] = [_relative(d, root) for d in rec["run_dir"]]
    rr.write_records(rr.order_records(rec, pad=False), path)


def _relative(run_dir, root: Path) -> str:
    try:
        return str(Path(run_dir).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(run_dir)


def _csv_value(v):
    """A knob value read back from a runs CSV: a float, the word of a categorical knob, NaN when empty."""
    if isinstance(v, str):
        return _folder_value(v)
    return float(v) if v is not None else math.nan


def load_runs_csv(path: str | Path, tasks=None, methods=None, budgets=None) -> pd.DataFrame:
    """The runs of a ``--runs-csv`` file (one row per run), filtered like :func:`load_frontier_runs`.

    When a filter drops rows, the normalisation is recomputed over the rows kept, as it is from the folders
    (``run_folders.normalisation_bounds``: needs round0_eval_reward, round0_path_kl, optimal_value and
    best_round_eval_reward, the best eval reward of any round of the run)."""
    path = Path(path)
    if not path.is_file():
        raise rf.LeaderboardError(f"--from-runs {str(path)!r} is not a file")
    runs = rr.read_records(path)
    missing = [c for c in RUNS_CSV_COLUMNS if c not in runs.columns]
    if missing:
        raise rf.LeaderboardError(f"{path} lacks {', '.join(missing)}; write it with python -m benchmarks.run.frontier "
                                  "--runs-csv")
    runs["value"] = runs["value"].map(_csv_value)
    n = len(runs)
    for col, keep in (("task", tasks), ("method", methods), ("budget", budgets)):
        if keep:
            runs = runs[runs[col].isin(keep)]
    if runs.empty:
        raise rf.LeaderboardError(f"no run in {path} matches --tasks/--methods/--budget")
    if len(runs) < n:
        need = ("round0_eval_reward", "round0_path_kl", "optimal_value", "best_round_eval_reward")
        lack = [c for c in need if c not in runs.columns]
        if lack:
            raise rf.LeaderboardError(f"{path} lacks {', '.join(lack)}: cannot re-normalise a filtered table")
        rounds = runs[["task", "method", "budget", "seed"]].assign(eval_reward=runs["best_round_eval_reward"])
        runs = runs.drop(columns=["normalised_score", "norm_low", "norm_high", "norm_high_source"])
        runs = rf.add_normalised(runs, rf.normalisation_bounds(runs, rounds))
    rf.require_one_protocol(runs, str(path))
    return runs.reset_index(drop=True)


# ---- adding seeds until the verdicts are decided ----------------------------------------------------
DECIDED_FILE = "_until_decided.json"
#: the per-seed metric the verdicts of ``--until-decided`` are drawn on: the area under the achievable
#: frontier (``frontier_stats.per_seed_frontier``), one number per seed over the whole KL range; score @ KL k
#: is "not reached" (no value) for methods whose frontier ends before k, so it cannot decide every pair
DECIDE_METRIC = "auf"
MAX_SEEDS = 10
ALPHA = 0.05


def n_looks(n_first: int, max_seeds: int) -> int:
    """The most looks one comparison gets: at the first ``n_first`` seeds, then after each added seed until
    ``max_seeds``."""
    return max(1, max_seeds - n_first + 1)


def alpha_per_look(n_first: int, max_seeds: int, alpha: float = ALPHA) -> float:
    """Bonferroni over the looks: testing at alpha / looks at every look keeps the chance that a comparison
    of two equal methods is ever called above or below <= alpha (a union bound over the looks)."""
    return alpha / n_looks(n_first, max_seeds)


def look(reference, others: dict, stopped, alpha_look: float) -> tuple[list[stats.Verdict], list[str]]:
    """One look of ``--until-decided`` on one task: the paired verdicts of the reference's per-seed values
    against each other method's (``stats.verdict_table``: paired t-test on common seeds, Holm across the
    task's methods, at ``alpha_look``), and the methods that are neither ``stopped`` (decided at an
    earlier look) nor decided now."""
    verdicts = stats.verdict_table(reference, others, "t", alpha_look)
    return verdicts, [v.other for v in verdicts if v.other not in stopped and v.verdict == "undecided"]


def simulate_until_decided(reference: np.ndarray, others: dict, n_first: int, max_seeds: int = MAX_SEEDS,
                           alpha: float = ALPHA, alpha_look: Optional[float] = None) -> dict[str, tuple[str, int]]:
    """The ``--until-decided`` rule on per-seed values drawn beforehand (value i = seed i; arrays of at least
    ``max_seeds``): per method (verdict, seeds used), with the verdict it stopped on, or 'undecided' at the
    cap. ``alpha_look`` defaults to :func:`alpha_per_look`. For simulating the rule's error rates."""
    a = alpha_per_look(n_first, max_seeds, alpha) if alpha_look is None else alpha_look
    n = dict.fromkeys(others, n_first)
    n_ref, stopped = n_first, {}
    while True:
        verdicts, open_ = look(dict(enumerate(reference[:n_ref])),  # seed -> value, as the runs' Series
                               {m: dict(enumerate(v[:n[m]])) for m, v in others.items()}, stopped, a)
        stopped.update({v.other: (v.verdict, v.n_seeds) for v in verdicts
                        if v.other not in stopped and v.verdict != "undecided"})
        open_ = [m for m in open_ if n_ref < max_seeds]
        if not open_:
            return {m: stopped.get(m, ("undecided", n[m])) for m in others}
        n_ref += 1
        for m in open_:
            n[m] += 1


def _decided_state(out: Path, reference: str, base_seeds, max_seeds: int, alpha: float) -> dict:
    """``<out>/_until_decided.json``, or a new one; SweepError when it was started with other settings."""
    path = out / DECIDED_FILE
    settings = {"reference": reference, "metric": DECIDE_METRIC, "test": "paired t, Holm per task",
                "base_seeds": list(base_seeds), "max_seeds": max_seeds, "alpha": alpha,
                "looks_max": n_looks(len(base_seeds), max_seeds),
                "alpha_per_look": alpha_per_look(len(base_seeds), max_seeds, alpha)}
    if not path.exists():
        return {**settings, "added": [], "looks": [], "stopped": {}, "finished": False}
    state = json.loads(path.read_text())
    differ = [k for k in settings if state.get(k) != settings[k]]
    if differ:
        raise SweepError(f"{path} was started with other settings ({', '.join(f'{k}={state.get(k)!r}' for k in differ)}"
                         "); give the same --until-decided, --seeds, --max-seeds, or another --out")
    return state


def _write_state(out: Path, state: dict) -> None:
    path = out / DECIDED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)  # a kill never leaves half a plan


def _row_key(task: str, budget: int) -> str:
    return f"{task}/b{int(budget)}"


def until_decided(out, plans: dict[str, GridPlan], tasks, budgets, base_seeds, reference: str, runner, specs_for,
                  max_seeds: int = MAX_SEEDS, alpha: float = ALPHA, cap: float = fs.AUF_CAP, low: float = fs.AUF_LOW,
                  max_rounds: Optional[int] = None) -> int:
    """Run the grid on ``base_seeds``, then add seeds until every method's verdict against ``reference`` is
    decided or capped (the module docstring, ``--until-decided``). Returns 0, or the runner's non-zero code.

    ``runner(specs) -> rc`` runs the RunSpecs not finished yet (finished ones must be skipped);
    ``specs_for(plans, tasks, seeds, budgets)`` builds them (:func:`build_specs` with the sweep's settings).
    Resumable: the added seeds are planned in ``<out>/_until_decided.json`` before they run, and every look
    re-reads the finished runs. ``max_rounds``: return after running that many rounds of added seeds
    (before their look), as a kill would; None = until done.
    """
    out = Path(out)
    state = _decided_state(out, reference, base_seeds, max_seeds, alpha)
    a = state["alpha_per_look"]
    compared = [m for m, p in plans.items() if m != reference and p.knob is not None]  # single points: no frontier
    rounds_run = 0
    while True:
        specs = specs_for(plans, tasks, list(base_seeds), budgets)
        for add in state["added"]:
            for key, plan in add["runs"].items():
                task, budget = key.rsplit("/b", 1)
                specs += specs_for({m: plans[m] for m in plan["methods"]}, [task], [plan["seed"]], [int(budget)])
        rc = runner(specs)
        if rc:
            print("frontier --until-decided: some runs failed; fix them and rerun the same command (with "
                  "--resume) to continue", file=sys.stderr)
            return rc
        if max_rounds is not None and rounds_run >= max_rounds:
            return 0
        runs, _ = load_frontier_runs(out, tasks, list(plans), budgets)
        rows, added, seeds_now = [], {}, {}
        for (task, budget), g in runs.groupby(["task", "budget"], sort=True):
            key = _row_key(task, budget)
            per_seed = {m: _per_seed_metric(g[g["method"] == m], cap, low)
                        for m in [reference, *compared] if (g["method"] == m).any()}
            ref = per_seed.pop(reference, pd.Series(dtype=float))
            if len(ref) < 2:
                raise SweepError(f"--until-decided {reference}: it has no area under the frontier on {key} "
                                 "(no runs with a path KL on at least 2 seeds)")
            others = {m: v for m, v in per_seed.items() if len(v)}  # methods without a path KL have no AUF
            stopped = state["stopped"].setdefault(key, {})
            verdicts, open_ = look(ref, others, stopped, a)
            for v in verdicts:
                if v.other not in stopped and v.verdict != "undecided":
                    stopped[v.other] = {"verdict": v.verdict, "n_seeds": v.n_seeds, "look": len(state["looks"])}
            capped = len(ref) >= max_seeds
            for v in verdicts:
                status = ("stopped" if v.other in stopped else "capped" if capped else "more seeds")
                rows.append({"task": task, "budget": int(budget), "method": v.other, "verdict": v.verdict,
                             "effect": v.effect, "low": v.low, "high": v.high, "p": v.p_value, "p_holm": v.p_holm,
                             "n_seeds": v.n_seeds, "status": status})
            seeds_now[key] = len(ref)
            if open_ and not capped:
                added[key] = {"seed": int(max(ref.index)) + 1, "methods": sorted([reference, *open_])}
        entry = {"look": len(state["looks"]), "seeds": seeds_now, "alpha_per_look": a, "verdicts": rows}
        if state["looks"] and state["looks"][-1]["seeds"] == seeds_now:  # the same runs looked at again
            entry["look"] = state["looks"][-1]["look"]
            state["looks"][-1] = entry
        else:
            state["looks"].append(entry)
        _print_look(entry, reference)
        if not added:
            state["finished"] = True
            _write_state(out, state)
            print(f"frontier --until-decided: done after {len(state['added'])} added seed round(s); verdicts in "
                  f"{out / DECIDED_FILE}", file=sys.stderr)
            return 0
        state["added"].append({"round": len(state["added"]) + 1, "runs": added})
        _write_state(out, state)  # the plan is on disk before its runs start
        rounds_run += 1


def _per_seed_metric(method_runs: pd.DataFrame, cap: float, low: float) -> pd.Series:
    """One method's per-seed ``DECIDE_METRIC`` on one task and budget (empty without a path KL)."""
    values = fs.per_seed_frontier(method_runs, (), cap, low)
    return values[DECIDE_METRIC].dropna().astype(float) if DECIDE_METRIC in values else pd.Series(dtype=float)


def _print_look(entry: dict, reference: str) -> None:
    print(f"frontier --until-decided: look {entry['look']} ({DECIDE_METRIC}, paired t, Holm per task, "
          f"alpha {entry['alpha_per_look']:.3g} per look)", file=sys.stderr)
    for r in entry["verdicts"]:
        print(f"  {r['task']} b{r['budget']}: {reference} vs {r['method']}: {r['verdict']} "
              f"(effect {r['effect']:+.3g}, Holm p {r['p_holm']:.3g}, {r['n_seeds']} seeds) -> {r['status']}",
              file=sys.stderr)


# ---- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run.frontier", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=None, help="comma-separated task names (with --report-only: a filter)")
    p.add_argument("--methods", default=None, help="comma-separated method names (with --report-only: a filter)")
    sweep.add_run_arguments(p)
    p.set_defaults(seeds=None, budget=None)
    p.add_argument("--grid", action="append", default=[], metavar="METHOD=V1,V2,...",
                   help="this method's knob values instead of the rule's (repeatable)")
    p.add_argument("--knob", action="append", default=[], metavar="METHOD=KEY",
                   help="sweep this agent setting instead of beta/lr (repeatable; needs --grid unless beta/lr)")
    p.add_argument("--report-only", action="store_true", help="run nothing; read the runs under --out, write the report")
    p.add_argument("--runs-csv", default=None, metavar="CSV",
                   help="also write one row per run here (e.g. results/frontier_runs.csv): every table and plot "
                        "can be rebuilt from it with --from-runs")
    p.add_argument("--from-runs", default=None, metavar="CSV",
                   help="run nothing and read no run folder: build the tables and plots from this --runs-csv file "
                        "(--tasks/--methods/--budget filter it)")
    p.add_argument("--until-decided", default=None, metavar="REFERENCE",
                   help="after --seeds, add one seed at a time to the methods whose paired AUF verdict against "
                        "REFERENCE is still undecided on a task, until decided or --max-seeds")
    p.add_argument("--max-seeds", type=int, default=None,
                   help=f"with --until-decided: most seeds per method and task (default {MAX_SEEDS})")
    p.add_argument("--csv", default="results/frontier.csv", help="per-point CSV (default results/frontier.csv; '' = none)")
    p.add_argument("--plots", default="results", help="folder for frontier_<task>.png (default results/; '' = none)")
    p.add_argument("--leaderboard", default="results/frontier_leaderboard.csv",
                   help="headline table CSV (default results/frontier_leaderboard.csv; '' = none)")
    p.add_argument("--md", default=None, help="also write the headline table as Markdown here")
    p.add_argument("--kl-targets", default=",".join(f"{t:g}" for t in fs.KL_TARGETS),
                   help="path KLs (nats) for reward at matched KL (default 1,10,100)")
    p.add_argument("--kl-cap", type=float, default=fs.AUF_CAP, help="AUF upper KL limit, nats (default 100)")
    p.add_argument("--kl-low", type=float, default=fs.AUF_LOW, help="AUF lower KL limit, nats (default 0.1)")
    p.add_argument("--confidence", type=float, default=fs.CONFIDENCE,
                   help="level of the Student-t intervals over seeds (default 0.95)")
    return p


def _targets(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SweepError(f"--kl-targets must be comma-separated numbers, got {text!r}") from None
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise SweepError(f"--kl-targets must be positive numbers, got {text!r}")
    return vals


def main(argv: Optional[list[str]] = None, runner=None) -> int:
    """The CLI; ``runner(specs) -> rc`` replaces the sweep engine (tests drive ``--until-decided`` with it)."""
    args = build_parser().parse_args(argv)
    command = "python -m benchmarks.run.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
    report = dict(csv=Path(args.csv) if args.csv else None, plots=Path(args.plots) if args.plots else None,
                  board_csv=Path(args.leaderboard) if args.leaderboard else None,
                  md=Path(args.md) if args.md else None, cap=args.kl_cap, low=args.kl_low,
                  confidence=args.confidence, runs_csv=Path(args.runs_csv) if args.runs_csv else None)
    try:
        report["targets"] = _targets(args.kl_targets)
        if not 0 < args.confidence < 1:
            raise SweepError(f"--confidence must be in (0, 1), got {args.confidence}")
        if not 0 < args.kl_low < args.kl_cap:
            raise SweepError(f"need 0 < --kl-low < --kl-cap, got {args.kl_low} and {args.kl_cap}")
        if args.max_seeds is not None and not args.until_decided:
            raise SweepError("--max-seeds only applies with --until-decided")
        if args.until_decided and (args.report_only or args.from_runs):
            raise SweepError("--until-decided runs seeds; it does not go with --report-only or --from-runs")
        if args.report_only and args.from_runs:
            raise SweepError("give --report-only (read the folders under --out) or --from-runs CSV, not both")
        if args.report_only or args.from_runs:
            if args.from_runs:
                report["from_runs"] = Path(args.from_runs)
            return _report(args.out, report, tasks=args.tasks and sweep.parse_list(args.tasks, "tasks"),
                           methods=args.methods and sweep.parse_list(args.methods, "methods"),
                           budgets=args.budget and sweep.parse_int_ranges(args.budget, "budget", 1))
        if not args.tasks or not args.methods:
            raise SweepError("--tasks and --methods are required (unless --report-only)")
        args.seeds, args.budget = args.seeds or "0-4", args.budget or "2000"
        tasks = sweep.parse_list(args.tasks, "tasks")
        methods = sweep.parse_list(args.methods, "methods")
        seeds, budgets, method_sets = sweep.check_run_arguments(args)
        plans = plan_grid(methods, args.grid, args.knob)
        validate_plans(plans, tasks, budgets, args.sets, method_sets)
        specs = build_specs(plans, tasks, seeds, budgets, args.out, args.sets, method_sets, args.resume, args.threads)
        if len({str(s.run_dir) for s in specs}) < len(specs):
            raise SweepError("two grid points share a folder (values equal to 6 significant digits)")
        status = sweep.run_statuses(specs, args.resume)
        max_seeds = MAX_SEEDS if args.max_seeds is None else args.max_seeds
        if args.until_decided:
            if args.until_decided not in plans or plans[args.until_decided].knob is None:
                raise SweepError(f"--until-decided {args.until_decided}: the reference must be one of --methods "
                                 "with a knob grid (a frontier)")
            if max_seeds < len(seeds):
                raise SweepError(f"--max-seeds {max_seeds} is below the {len(seeds)} seeds of --seeds")
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_points = sum(len(p.values) for p in plans.values())
    n_done = sum(v == "done" for v in status.values())
    print(f"frontier: {len(specs)} runs ({len(tasks)} tasks x {n_points} grid points x {len(budgets)} budgets x "
          f"{len(seeds)} seeds); {n_done} finished already (skipped), {len(specs) - n_done} to run "
          f"[{args.backend}, {args.workers} worker(s) x {args.threads} thread(s)]", file=sys.stderr)
    for p in plans.values():
        grid = ("single point (KL 0)" if p.method == "pretrained" else "single point (no path KL)") if p.knob is None else f"{p.knob} = {', '.join(map(fmt_value, p.values))}"
        print(f"  {p.method}: {grid} [{p.source}]", file=sys.stderr)
    if args.until_decided:
        print(f"  then seeds {max(seeds) + 1}, {max(seeds) + 2}, ... for the methods still undecided against "
              f"{args.until_decided}, up to {max_seeds} seeds ({DECIDE_METRIC}, alpha {ALPHA:g} / "
              f"{n_looks(len(seeds), max_seeds)} looks)", file=sys.stderr)
    if args.dry_run:
        return sweep.execute(specs, status, args, command, label="frontier")
    record_plan(Path(args.out), plans, command)
    run = runner or _sweep_runner(args, command)
    try:
        if args.until_decided:
            rc = until_decided(args.out, plans, tasks, budgets, seeds, args.until_decided, run,
                               partial(build_specs, out=args.out, sets=args.sets, method_sets=method_sets,
                                       resume=args.resume, threads=args.threads),
                               max_seeds=max_seeds, cap=args.kl_cap, low=args.kl_low)
        else:
            rc = run(specs)
    except (SweepError, rf.LeaderboardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rc_report = _report(args.out, report)
    return rc or rc_report


def _sweep_runner(args: argparse.Namespace, command: str):
    """``runner(specs) -> rc`` on the sweep engine: finished runs skipped, interrupted ones continued with
    --resume, the rest run on --backend."""
    def run(specs: list[RunSpec]) -> int:
        return sweep.execute(specs, sweep.run_statuses(specs, args.resume), args, command, label="frontier")
    return run


def _report(out, report: dict, **filters) -> int:
    try:
        write_report(out, **report, **filters)
    except rf.LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compact Markdown of the frontier leaderboard for the README: per task, methods ranked by the area under
the reward–KL frontier, with the score at matched KL (1, 10, 100 nats) and the best -manifold score; and,
with ``--verdicts METHOD``, where that method's frontier lies against every other method's.

    python -m benchmarks.report.frontier_readme results/frontier_leaderboard.csv > /tmp/table.md
    python -m benchmarks.report.frontier_readme results/frontier_leaderboard.csv --verdicts sqdf > /tmp/verdicts.md
    python -m benchmarks.report.frontier_readme results/frontier_image.csv --near-kl 3 > /tmp/matched.md

``--near-kl KL`` reads the per-grid-point frontier CSV instead and prints, per task and method, the grid
point whose mean path KL is nearest KL on a log scale (within a factor ``--within``, default 3; "none
within" otherwise) with its reward, path KL and the naturalness and diversity columns the CSV has (means
over seeds): naturalness at matched KL, read off measured points rather than interpolated. Given a table with
one row per run instead (a ``seed`` column, as ``--runs-csv`` writes), it first takes each grid point's means
over its seeds (:func:`points_from_runs`), so the block can come from the committed per-run records.

A verdict compares two 95 % CIs (each a percentile bootstrap over one method's seeds): "above" when the
reference's lower bound is above the other's upper bound, "below" in the mirror case, "on" when they
overlap (not a finding either way), "only X" when one of the two frontiers does not reach that KL, "one
seed" when either method has a grid point with one seed (no interval to compare).
Overlapping independent CIs is a conservative test: "on" can hide a real but small difference.

``--run-verdicts METHOD`` is its successor and reads one row per run (columns task, method, seed and the
metric; path_kl with ``--kl``): per task, METHOD's per-seed value is paired with each other method's on
their common seeds (methods share seeds, so seed s of both saw the same evaluation noise), tested with a
paired t-test (or ``--test signflip``), Holm-corrected across the task's table, and called "above" /
"below" / "undecided" at alpha = 0.05 (:func:`benchmarks.report.stats.verdict_table`):

    python -m benchmarks.report.frontier_readme runs.csv --run-verdicts sqdf --kl 10 > /tmp/verdicts.md

``--summary`` prints the same verdicts as one matrix (a row per method, a column per task; each cell the
verdict, the mean paired difference and the Holm-adjusted p), the README's headline block:

    python -m benchmarks.report.frontier_readme results/frontier_runs.csv --run-verdicts sqdf --frontier auf --summary

``--earlier FINDINGS.csv`` puts each earlier finding (one row each: the finding in words, reference and
other method, ``;``-separated tasks, the frontier metric, the earlier verdict) beside today's verdict from
the same tests (``--summary``: one line, how many changed and which held).

The per-seed value is the ``--metric`` column (default normalised_score) of the method's one run per seed,
or with ``--kl K`` the seed's largest metric over its runs with path KL <= K nats (its best measured
grid point within that KL budget). :func:`run_verdicts` also takes any per-seed metric as a callable.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Optional

import pandas as pd

from benchmarks.common.markdown import markdown_table
from benchmarks.report import stats


def cell(row, key: str) -> str:
    v = row[key]
    if isinstance(v, float) and math.isnan(v):
        return "not reached" if key.startswith("score_at") else "–"
    return f"{v:.3f} [{row[key + '_ci_low']:.3f}, {row[key + '_ci_high']:.3f}]"


TABLE_HEADER = ("method", "knob", "AUF (KL 0.1–100)", "score @ KL 1", "score @ KL 10", "score @ KL 100", "max KL",
                "best score")


def table(df: pd.DataFrame) -> str:
    lines = []
    for task, g in df.groupby("task", sort=True):
        g = g.sort_values("auf", ascending=False)
        rows = []
        for _, r in g.iterrows():
            best = cell(r, "best_score_manifold") if not math.isnan(r["best_score_manifold"]) else "–"
            knob = r['knob'] if isinstance(r['knob'], str) and r['knob'] else '–'
            if "kl_measured" in r and r["kl_measured"] is False:  # random search, BO, FK steering: no path KL
                rows.append([r["method"], knob, "no path KL", "–", "–", "–", "–", best])
                continue
            rows.append([r["method"], knob, cell(r, "auf"), cell(r, "score_at_kl1"), cell(r, "score_at_kl10"),
                         cell(r, "score_at_kl100"), f"{r['kl_max']:.3g}", best])
        lines += [f"**{task}** (pretrained eval reward {g['pretrained_reward'].iloc[0]:.2f})", "",
                  markdown_table(TABLE_HEADER, rows), ""]
    return "\n".join(lines)


VERDICT_KEYS = (("auf", "AUF"), ("score_at_kl1", "@ KL 1"), ("score_at_kl10", "@ KL 10"),
                ("score_at_kl100", "@ KL 100"))


def verdict(ref, other, key: str, ref_name: str, other_name: str) -> str:
    """'above' / 'below' / 'on' (CIs overlap) / 'only <method>' / 'neither' for one metric of two rows;
    'one seed' when either method has a grid point with a single seed (its CI is a point, not an interval)."""
    have = [not (isinstance(r[key], float) and math.isnan(r[key])) for r in (ref, other)]
    if not all(have):
        return "neither" if not any(have) else f"only {ref_name if have[0] else other_name}"
    if min(int(r.get("seeds_per_point", 2)) for r in (ref, other)) < 2:
        return "one seed"
    if ref[key + "_ci_low"] > other[key + "_ci_high"]:
        return "above"
    if ref[key + "_ci_high"] < other[key + "_ci_low"]:
        return "below"
    return "on"


def verdicts(df: pd.DataFrame, reference: str) -> str:
    """Per task, one row per other method with a frontier: where ``reference``'s frontier lies against it.
    Superseded by :func:`run_verdicts` (paired tests over common seeds); kept for the aggregate CSVs."""
    lines = []
    for task, g in df.groupby("task", sort=True):
        has_kl = g["kl_measured"].astype(bool) if "kl_measured" in g else pd.Series(True, index=g.index)
        g = g[has_kl & (g["method"] != "pretrained")]
        if reference not in set(g["method"]):
            continue
        ref = g[g["method"] == reference].iloc[0]
        rows = [[r["method"], *(verdict(ref, r, k, reference, r["method"]) for k, _ in VERDICT_KEYS)]
                for _, r in g[g["method"] != reference].sort_values("auf", ascending=False).iterrows()]
        lines += [f"**{task}**: {reference}'s frontier against each method's (95 % CIs; 'on' = they overlap)", "",
                  markdown_table(["method", *(name for _, name in VERDICT_KEYS)], rows), ""]
    if not lines:
        raise SystemExit(f"error: no task in the table has a frontier for method {reference!r}")
    return "\n".join(lines)


def seed_values(runs: pd.DataFrame, metric: str = "normalised_score", kl: Optional[float] = None) -> pd.Series:
    """One method's per-seed value (a Series indexed by seed) from its runs (one row per run).

    ``kl`` None: the ``metric`` of the seed's run; a seed with several runs (grid points) is an error.
    ``kl`` given: per seed the largest ``metric`` over its runs with finite path_kl <= ``kl`` nats; seeds
    with no such run are left out. Runs with a non-finite metric are left out.
    """
    r = runs[pd.to_numeric(runs[metric], errors="coerce").notna()]
    if kl is not None:
        r = r[r["path_kl"].notna() & (r["path_kl"] <= kl)]
        return r.groupby("seed")[metric].max().astype(float)
    dup = r["seed"].duplicated(keep=False)
    if dup.any():
        raise SystemExit(f"error: method {runs['method'].iloc[0]!r} has several runs for seed(s) "
                         f"{sorted(set(r.loc[dup, 'seed']))}; pass --kl or keep one grid point per method")
    return r.set_index("seed")[metric].astype(float)


def frontier_metric(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    """Per-seed achievable-frontier metric ``name`` (``auf`` or ``score_at_kl{T}``) of one method's runs, for
    :func:`run_verdicts`: the envelope's fixed combination applied to each seed's rewards."""
    from benchmarks.report import frontier_stats as fs

    try:
        targets = (float(name[len("score_at_kl"):]),) if name.startswith("score_at_kl") else fs.KL_TARGETS
    except ValueError:
        targets = ()
    if (name != "auf" and not name.startswith("score_at_kl")) or not targets or not targets[0] > 0:
        raise SystemExit(f"error: --frontier must be auf or score_at_kl<KL> with KL > 0 nats, got {name!r}")

    def per_seed(method_runs: pd.DataFrame) -> pd.Series:
        values = fs.per_seed_frontier(method_runs, targets=targets)
        col = "auf" if name == "auf" else f"score_at_kl{fs._tag(targets[0])}"
        return values[col].dropna().astype(float) if col in values else pd.Series(dtype=float)

    per_seed.__name__ = ("area under the achievable frontier" if name == "auf"
                         else f"achievable-frontier score at {targets[0]:g} nats")
    return per_seed


def _num(v: float, signed: bool = False) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else (f"{v:+.3g}" if signed else f"{v:.3g}")


def _p(v: float) -> str:
    return "–" if math.isnan(v) else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _p_is(v: float) -> str:
    return _p(v) if _p(v).startswith("<") else f"= {_p(v)}"


def verdict_sentence(reference: str, v: stats.Verdict, what: str, alpha: float = 0.05) -> str:
    """One sentence stating a :class:`benchmarks.report.stats.Verdict` row of ``reference`` against ``v.other``."""
    if v.n_seeds < 2:
        return (f"{reference} vs {v.other}: undecided, {v.n_seeds} common seed(s) "
                "(a paired test needs at least 2).")
    ci = f"95 % CI {_num(v.low, True)} to {_num(v.high, True)}"
    stat = f"p {_p_is(v.p_value)}, Holm-adjusted p {_p_is(v.p_holm)}, {v.n_seeds} common seeds"
    if v.verdict == "undecided":
        return (f"{reference} vs {v.other}: undecided; {what} differs by {_num(v.effect, True)} ({ci}; {stat}), "
                f"not significant at {alpha:g} after Holm.")
    word = "higher" if v.verdict == "above" else "lower"
    return (f"{reference} is {v.verdict} {v.other}: its {what} is {word} by {_num(abs(v.effect))} on average "
            f"({ci}; {stat}).")


def _task_verdicts(runs: pd.DataFrame, reference: str, per_seed: Callable[[pd.DataFrame], pd.Series], test: str,
                   alpha: float) -> list[tuple[str, Any, list[stats.Verdict], list[str], pd.DataFrame]]:
    """Per task (and budget, when the runs have one): (task, budget or None, verdict rows sorted by effect,
    methods without a per-seed value, that task's runs). The pretrained model is left out; tasks without
    ``reference`` are skipped."""
    keys = ["task", "budget"] if "budget" in runs.columns else ["task"]
    out = []
    for key, g in runs.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g[g["method"] != "pretrained"]
        if reference not in set(g["method"]):
            continue
        ref = per_seed(g[g["method"] == reference])
        others, empty = {}, []
        for m in sorted(set(g["method"]) - {reference}):
            vals = per_seed(g[g["method"] == m])
            if len(vals):
                others[m] = vals
            else:
                empty.append(m)
        rows = sorted(stats.verdict_table(ref, others, test, alpha),  # tested rows by effect, then untested
                      key=lambda v: (v.n_seeds < 2, -v.effect if not math.isnan(v.effect) else 0.0, v.other))
        out.append((str(key[0]), key[1] if len(key) > 1 else None, rows, empty, g))
    if not out:
        raise SystemExit(f"error: no task in the runs has method {reference!r}")
    return out


def _title(task: str, budget: Any) -> str:
    return task + (f" (budget {budget})" if budget is not None else "")


def _per_seed_and_name(metric: str, kl: Optional[float], per_seed) -> tuple[Callable, str]:
    if per_seed is None:
        return (partial(seed_values, metric=metric, kl=kl),
                f"best {metric} within {kl:g} nats" if kl is not None else metric)
    return per_seed, getattr(per_seed, "__name__", "per-seed metric")


def _why_empty(runs: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[str]]:
    """Split methods without a per-seed value into (those without any finite path KL: not on the KL axis,
    those with one: their frontier does not reach the metric's KL)."""
    kl = pd.to_numeric(runs["path_kl"], errors="coerce") if "path_kl" in runs else pd.Series(float("nan"), index=runs.index)
    has_kl = set(runs.loc[kl.notna() & (kl > 0), "method"])
    return [m for m in methods if m not in has_kl], [m for m in methods if m in has_kl]


def run_verdicts(runs: pd.DataFrame, reference: str, metric: str = "normalised_score", kl: Optional[float] = None,
                 per_seed: Optional[Callable[[pd.DataFrame], pd.Series]] = None, test: str = "t",
                 alpha: float = 0.05) -> str:
    """Per task (and budget, when the runs have one), a Markdown table of ``reference`` against each other
    method (the pretrained model left out): verdict, effect = mean over common seeds of reference - other
    with its 95 % t-interval, p, Holm-adjusted p, common seeds; then one sentence per row.

    ``per_seed(method_runs) -> Series indexed by seed`` overrides the default :func:`seed_values` (``metric``,
    ``kl``), so any per-seed metric (e.g. a per-seed area under the frontier) can be compared.
    """
    per_seed, what = _per_seed_and_name(metric, kl, per_seed)
    test_name = "paired t-test" if test == "t" else "exact sign-flip test"
    lines = []
    for task, budget, rows, empty, task_runs in _task_verdicts(runs, reference, per_seed, test, alpha):
        lines += [f"**{_title(task, budget)}**: {reference} against each method on {what}, per seed, paired over common seeds "
                  f"({test_name}, Holm across the table, alpha = {alpha:g})", "",
                  markdown_table(["method", "verdict", "effect [95 % CI]", "p", "p (Holm)", "seeds"],
                                 [[v.other, v.verdict, f"{_num(v.effect, True)} [{_num(v.low, True)}, "
                                   f"{_num(v.high, True)}]", _p(v.p_value), _p(v.p_holm), v.n_seeds] for v in rows]),
                  ""]
        lines += [f"- {verdict_sentence(reference, v, what, alpha)}" for v in rows]
        no_kl, short = _why_empty(task_runs, empty)
        if no_kl:
            lines.append(f"- No per-seed value (no path KL, so no frontier; left out): {', '.join(no_kl)}.")
        if short:
            lines.append(f"- No per-seed value (the frontier does not reach this KL; left out): {', '.join(short)}.")
        lines.append("")
    return "\n".join(lines)


def summary_cell(v: stats.Verdict) -> str:
    """'above +0.072 (0.048)': the verdict, the mean paired difference and the Holm-adjusted p."""
    if v.n_seeds < 2:
        return f"undecided ({v.n_seeds} seed)"
    word = f"**{v.verdict}**" if v.verdict != "undecided" else v.verdict
    return f"{word} {_num(v.effect, True)} ({_p(v.p_holm)})"


def verdict_summary(runs: pd.DataFrame, reference: str, metric: str = "normalised_score", kl: Optional[float] = None,
                    per_seed: Optional[Callable[[pd.DataFrame], pd.Series]] = None, test: str = "t",
                    alpha: float = 0.05) -> str:
    """The verdicts of :func:`run_verdicts` as one matrix, a row per method and a column per task; each cell is
    :func:`summary_cell`; a last line counts above / below / undecided and names the seeds."""
    per_seed, what = _per_seed_and_name(metric, kl, per_seed)
    tasks = _task_verdicts(runs, reference, per_seed, test, alpha)
    budgets = {budget for _, budget, *_ in tasks}
    one_budget = len(budgets) == 1 and None not in budgets  # say it once, not in every column
    columns = [task if one_budget else _title(task, budget) for task, budget, *_ in tasks]
    if one_budget:
        what = f"{what} (budget {budgets.pop()})"
    cells: dict[str, dict[str, str]] = {}
    counts = {"above": 0, "below": 0, "undecided": 0}
    seeds = set()
    left_out = set()
    for column, (_, _, rows, empty, _) in zip(columns, tasks):
        for v in rows:
            cells.setdefault(v.other, {})[column] = summary_cell(v)
            counts[v.verdict if v.n_seeds >= 2 else "undecided"] += 1
            seeds.add(v.n_seeds)
        left_out |= set(empty)
    no_kl, short = _why_empty(runs, sorted(left_out - set(cells)))
    order = sorted(cells, key=lambda m: (-sum(c.startswith("**above") for c in cells[m].values()),
                                         sum(c.startswith("**below") for c in cells[m].values()), m))
    test_name = "paired t-test" if test == "t" else "exact sign-flip test"
    n = f"{min(seeds)}" if len(seeds) == 1 else f"{min(seeds)}–{max(seeds)}"
    lines = [f"{reference} against each method on {what} (per seed; cell: verdict, mean paired difference "
             f"{reference} − method, Holm-adjusted p; {test_name} over {n} common seeds, Holm across each task's "
             f"column, alpha = {alpha:g})", "",
             markdown_table(["method", *columns], [[m, *(cells[m].get(c, "–") for c in columns)] for m in order]), "",
             f"{counts['above']} above, {counts['below']} below, {counts['undecided']} undecided."
             + (f" Not on the KL axis (no path KL): {', '.join(no_kl)}." if no_kl else "")
             + (f" Frontier does not reach this KL on any task: {', '.join(short)}." if short else ""), ""]
    return "\n".join(lines)


EARLIER_COLUMNS = {"finding", "reference", "other", "tasks", "metric", "earlier"}


def earlier_findings(runs: pd.DataFrame, findings: pd.DataFrame, test: str = "t", alpha: float = 0.05,
                     brief: bool = False) -> str:
    """Each earlier finding (a row of ``findings``: the finding in words, reference and other method,
    ``;``-separated tasks, the frontier metric ``auf`` / ``score_at_kl<K>``, the earlier verdict in words)
    beside today's verdict on the per-run records: the same paired test, with Holm over the same family as
    the full table of that metric and task (:func:`run_verdicts`), so the two never disagree. ``brief``: only
    the count of changed verdicts and the findings that held, in one line."""
    now: dict[tuple[str, str, str, str], stats.Verdict] = {}
    for (metric, reference), _ in findings.groupby(["metric", "reference"], sort=True):
        per_seed = frontier_metric(metric)
        for task, _, rows, *_ in _task_verdicts(runs, reference, per_seed, test, alpha):
            now.update({(metric, reference, task, v.other): v for v in rows})
    out = []
    for _, f in findings.iterrows():
        for task in str(f["tasks"]).split(";"):
            v = now.get((f["metric"], f["reference"], task, f["other"]))
            cellv = "no runs" if v is None else (f"{summary_cell(v)}, {v.n_seeds} seeds")
            changed = "–" if v is None else ("same" if f["earlier"].split()[0] == v.verdict else "**changed**")
            out.append([f["finding"], task, f["metric"], f["earlier"], cellv, changed])
    n_changed = sum(r[-1] == "**changed**" for r in out)
    if brief:
        by_finding: dict[str, list[str]] = {}
        for r in out:
            if r[-1] == "same":
                by_finding.setdefault(r[0], []).append(r[1])
        held = [f"{f} ({', '.join(tasks)})" for f, tasks in by_finding.items()]
        return (f"{n_changed} of {len(out)} earlier verdicts changed"
                + (f"; these held: {'; '.join(held)}." if held else "; none held.") + "\n")
    return "\n".join([f"Earlier findings (3 seeds, compared by whether the seeds' ranges overlapped) against today's "
                      f"paired verdicts ({reference_list(findings)} − other; verdict, mean paired difference, "
                      f"Holm-adjusted p):", "",
                      markdown_table(["earlier finding", "task", "metric", "earlier", "now", ""], out), "",
                      f"{n_changed} of {len(out)} earlier verdicts changed.", ""])


def reference_list(findings: pd.DataFrame) -> str:
    return ", ".join(sorted(set(findings["reference"])))


#: per-grid-point columns shown by --near-kl when the frontier CSV has them: (column stem, header)
NEAR_KL_COLUMNS = (("eval_reward", "eval reward"), ("path_kl", "path KL"), ("fd_phi", "FD (φ)"),
                   ("denoise_loss", "denoising loss"), ("n_valid", "valid designs"),
                   ("vendi_valid", "Vendi (valid)"), ("eval_ground_truth_A", "ground truth A"))


def points_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point (task, method, knob, value) from one row per run: ``n_seeds`` and, for every
    column of :data:`NEAR_KL_COLUMNS` the runs have, ``<column>_mean`` over the point's seeds (NaN runs
    left out of a mean). A method without a knob (the pretrained model) keeps its empty knob."""
    keys = ["task", "method", "knob", "value"]
    stems = [c for c, _ in NEAR_KL_COLUMNS if c in runs.columns]
    grouped = runs.groupby(keys, dropna=False, sort=True)
    points = grouped[stems].mean().add_suffix("_mean")
    points["n_seeds"] = grouped["seed"].nunique()
    return points.reset_index()


def near_kl(points: pd.DataFrame, kl: float, within: float = 3.0) -> str:
    """Per task, each method's grid point nearest ``kl`` nats (|log KL_point - log kl| smallest, at most
    log ``within``), with the pretrained model first; methods without a path KL are left out."""
    if not kl > 0 or not within >= 1:
        raise SystemExit(f"error: --near-kl must be > 0 and --within >= 1, got {kl} and {within}")
    cols = [(c, h) for c, h in NEAR_KL_COLUMNS if f"{c}_mean" in points.columns]
    lines = []
    for task, g in points.groupby("task", sort=True):
        rows = []
        for method in sorted(g["method"].unique(), key=lambda name: (name != "pretrained", name)):
            m = g[(g["method"] == method) & g["path_kl_mean"].notna()]
            if method == "pretrained":  # its one point, at KL 0
                if not len(m):
                    continue
                r = m.iloc[0]
            else:
                m = m[m["path_kl_mean"] > 0]
                if not len(m):
                    continue
                dist = (m["path_kl_mean"].map(math.log) - math.log(kl)).abs()
                if dist.min() > math.log(within):
                    rows.append([method, "–", "–", *("none within" if c == "path_kl" else "–" for c, _ in cols)])
                    continue
                r = m.loc[dist.idxmin()]
            knob = f"{r['knob']} = {r['value']:g}" if isinstance(r["knob"], str) and r["knob"] else "–"
            rows.append([method, knob, int(r["n_seeds"]), *(f"{r[c + '_mean']:.3g}" for c, _ in cols)])
        lines += [f"**{task}**: each method's grid point nearest {kl:g} nats of path KL (within ×{within:g}; "
                  "means over seeds)", "", markdown_table(["method", "knob", "seeds", *(h for _, h in cols)], rows,
                                                          align="lll" + "r" * len(cols)), ""]
    return "\n".join(lines)


def require(df: pd.DataFrame, columns: set, path: str, expected: str) -> None:
    """One-line exit when the table at ``path`` lacks any of ``columns``."""
    if not columns <= set(df.columns):
        raise SystemExit(f"error: {path} lacks {', '.join(sorted(columns - set(df.columns)))}; {expected}")


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.frontier_readme", description=__doc__.split("\n\n")[0])
    p.add_argument("leaderboard", nargs="?", default="results/frontier_leaderboard.csv")
    p.add_argument("--verdicts", metavar="METHOD", default=None,
                   help="print where METHOD's frontier lies against every other method's instead of the table")
    p.add_argument("--near-kl", type=float, metavar="KL", default=None,
                   help="the positional CSV is the per-grid-point frontier CSV (benchmarks.run.frontier --csv) or one "
                        "row per run (--runs-csv): print each method's grid point nearest KL nats with its "
                        "naturalness and diversity (means over seeds)")
    p.add_argument("--within", type=float, default=3.0, help="with --near-kl: largest factor between KL and a point's")
    p.add_argument("--run-verdicts", metavar="METHOD", default=None,
                   help="the positional CSV has one row per run: paired, Holm-corrected verdicts of METHOD "
                        "against every other method on their common seeds")
    p.add_argument("--metric", default="normalised_score", help="with --run-verdicts: the per-run column compared")
    p.add_argument("--kl", type=float, default=None,
                   help="with --run-verdicts: per seed, the best --metric over runs with path KL <= KL nats")
    p.add_argument("--test", choices=("t", "signflip"), default="t", help="with --run-verdicts: the paired test")
    p.add_argument("--earlier", metavar="CSV", default=None,
                   help="the positional CSV has one row per run: print each earlier finding of CSV (columns finding, "
                        "reference, other, tasks, metric, earlier) beside today's paired verdict")
    p.add_argument("--summary", action="store_true",
                   help="with --run-verdicts: one matrix (method x task) of the verdicts instead of a table per task; "
                        "with --earlier: one line (how many changed, which held)")
    p.add_argument("--frontier", metavar="METRIC", default=None,
                   help="with --run-verdicts: compare the per-seed achievable-frontier metric (auf, or score_at_kl1, "
                        "score_at_kl10, score_at_kl100; benchmarks.report.frontier_stats.per_seed_frontier) instead of a column")
    args = p.parse_args(argv)
    try:
        df = pd.read_csv(args.leaderboard)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read the frontier table {args.leaderboard}: {e}") from None
    if args.near_kl is not None:
        if "seed" in df.columns and "n_seeds" not in df.columns:  # one row per run: average each grid point
            require(df, {"task", "method", "knob", "value", "path_kl", "eval_reward"}, args.leaderboard,
                    "--near-kl expects one row per run (--runs-csv) or a per-point table (--csv)")
            df = points_from_runs(df)
        require(df, {"task", "method", "knob", "value", "n_seeds", "path_kl_mean", "eval_reward_mean"},
                args.leaderboard, "--near-kl expects a table written by python -m benchmarks.run.frontier --csv")
        print(near_kl(df, args.near_kl, args.within))
        return
    if args.earlier is not None:
        require(df, {"task", "method", "seed", "value", "path_kl", "eval_reward", "norm_low", "norm_high"},
                args.leaderboard, "--earlier expects one row per run with the normalisation columns")
        try:
            findings = pd.read_csv(args.earlier)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot read the earlier findings {args.earlier}: {e}") from None
        require(findings, EARLIER_COLUMNS, args.earlier, "one row per earlier finding")
        print(earlier_findings(df, findings, test=args.test, brief=args.summary))
        return
    if args.run_verdicts is not None and args.frontier is not None:
        require(df, {"task", "method", "seed", "value", "path_kl", "eval_reward", "norm_low", "norm_high"},
                args.leaderboard, "--frontier expects one row per run with the normalisation columns")
        show = verdict_summary if args.summary else run_verdicts
        print(show(df, args.run_verdicts, per_seed=frontier_metric(args.frontier), test=args.test))
        return
    if args.run_verdicts is not None:
        need = {"task", "method", "seed", args.metric} | ({"path_kl"} if args.kl is not None else set())
        require(df, need, args.leaderboard, "--run-verdicts expects one row per run")
        show = verdict_summary if args.summary else run_verdicts
        print(show(df, args.run_verdicts, args.metric, args.kl, test=args.test))
        return
    require(df, {"task", "method", "auf", "auf_ci_low", "auf_ci_high"}, args.leaderboard,
            "expected a table written by python -m benchmarks.run.frontier --leaderboard")
    print(verdicts(df, args.verdicts) if args.verdicts else table(df))


if __name__ == "__main__":
    main()

"""Sample-efficiency, trade-off, diversity and sample-grid plots from run folders (matplotlib, Agg).

    python -m benchmarks.report.plot runs/ [more_runs/ ...] --out results/ [--all-samples]

Writes, for each budget B present (the ``_b<B>`` suffix is left out when there is one budget, unless
``--budget-suffix``):
- ``curves.png``: eval reward (row 1) and best-so-far (row 2) vs oracle queries, mean over seeds with a
  95% bootstrap CI band, one panel per task, one line per method; round 0 (pretrained) is at 0 queries;
- ``tradeoff.png``: eval reward vs path KL to the pretrained model, one point per method and round
  (mean over seeds), rounds joined in order;
- ``diversity.png``: Vendi score and mean pairwise distance vs oracle queries;
- ``naturalness.png``: the tasks' naturalness keys (invalid fraction, prior log-density, Fréchet
  distances) vs oracle queries;
- ``samples_<task>.png`` for image tasks (every task with ``--all-samples``): each method's samples.png
  (lowest seed) side by side.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.report import stats  # noqa: E402
from benchmarks.report.run_folders import LeaderboardError, load_runs  # noqa: E402

#: fixed colours so a method looks the same in every figure
METHOD_COLOURS = {"pretrained": "#7f7f7f", "sqdf": "#d62728", "ddpo": "#1f77b4", "ddpo-sf": "#17becf",
                  "alignprop": "#2ca02c", "draft": "#ff7f0e", "draft-k": "#bcbd22", "draft-lv": "#8c564b",
                  "adjoint-matching": "#9467bd", "seiko": "#e377c2", "draft-1": "#393b79",
                  "best-of-n": "#000000", "svdd": "#8c6d31", "random": "#c7c7c7", "fk-steering": "#637939",
                  "raft": "#e7969c", "diffusion-nft": "#6b6ecf", "turbo": "#843c39", "qlognei": "#de9ed6",
                  "find": "#31a354", "dts": "#3182bd", "dts-star": "#9ecae1", "d3po": "#a55194",
                  "rlcm": "#fd8d3c"}
#: line style and marker by method family, so that methods of similar colour stay apart in a crowded figure
FAMILY_STYLES = {"kl-regularised": ("-", "o"), "reward backprop": ("--", "s"),
                 "policy gradient / reward-weighted": ("-.", "^"), "inference-time": (":", "D")}
METHOD_FAMILY = {"sqdf": "kl-regularised", "seiko": "kl-regularised", "adjoint-matching": "kl-regularised",
                 "alignprop": "reward backprop", "draft": "reward backprop", "draft-k": "reward backprop",
                 "draft-1": "reward backprop", "draft-lv": "reward backprop",
                 "ddpo": "policy gradient / reward-weighted", "ddpo-sf": "policy gradient / reward-weighted",
                 "raft": "policy gradient / reward-weighted", "diffusion-nft": "policy gradient / reward-weighted",
                 "best-of-n": "inference-time", "svdd": "inference-time", "fk-steering": "inference-time",
                 "find": "kl-regularised", "dts": "inference-time", "dts-star": "inference-time",
                 "d3po": "policy gradient / reward-weighted", "rlcm": "policy gradient / reward-weighted"}
NATURALNESS_LABELS = {"invalid_frac": "invalid fraction (off-manifold designs)",
                      "prior_logpdf": "prior log-density (nats)"}
CI_REPS = 1000
DPI = 110


def colour(method: str, methods: Sequence[str]) -> str:
    """Fixed colour for built-in methods (all distinct); the others (plug-ins, ablation variants) take tab10's
    colours by position, skipping those of the built-in methods drawn beside them."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    taken = {METHOD_COLOURS[m] for m in methods if m in METHOD_COLOURS}
    free = [c for c in map(matplotlib.colors.to_hex, plt.get_cmap("tab10").colors) if c not in taken]
    others = [m for m in methods if m not in METHOD_COLOURS]
    return free[(others.index(method) if method in others else 0) % len(free)]


def style(method: str) -> tuple[str, str]:
    """(line style, marker) of the method's family (solid circles for methods outside the families)."""
    return FAMILY_STYLES.get(METHOD_FAMILY.get(method, ""), ("-", "o"))


def _method_order(methods) -> list[str]:
    """pretrained first, sqdf second, the rest alphabetically."""
    rank = {"pretrained": 0, "sqdf": 1}
    return sorted(set(methods), key=lambda m: (rank.get(m, 2), m))


def curve_stats(rounds: pd.DataFrame, metric: str, reps: int = CI_REPS) -> pd.DataFrame:
    """Per (task, method, budget, round): mean queries, mean of ``metric`` over seeds, 95% CI, seeds."""
    rows = []
    for (task, method, budget, rnd), g in rounds.groupby(["task", "method", "budget", "round"], sort=True):
        if metric not in g:
            continue
        v = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy(float)
        if len(v) == 0:
            continue
        if len(v) > 1 and np.ptp(v) > 0:
            m, lo, hi = stats.stratified_bootstrap_ci([v], stats.aggregate_mean, reps=reps, seed=0)
        else:
            m = lo = hi = float(v.mean())
        rows.append({"task": task, "method": method, "budget": budget, "round": int(rnd),
                     "queries": float(pd.to_numeric(g["queries_used"]).mean()), "mean": m, "ci_low": lo,
                     "ci_high": hi, "n": len(v)})
    return pd.DataFrame(rows)


def _grid(n_rows: int, tasks: Sequence[str], height: float = 3.3, width: float = 4.2):
    fig, axes = plt.subplots(n_rows, len(tasks), figsize=(width * len(tasks) + 1.8, height * n_rows + 0.6),
                             squeeze=False)
    return fig, axes


def _finish(fig, axes, path: Path, title: str) -> Path:
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   title="method", fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _line_panel(ax, cs: pd.DataFrame, task: str, methods: Sequence[str], ylabel: str, all_methods) -> None:
    sub = cs[cs["task"] == task]
    for m in methods:
        s = sub[sub["method"] == m].sort_values("queries")
        if s.empty:
            continue
        c = colour(m, all_methods)
        n = int(s["n"].max())
        ax.plot(s["queries"], s["mean"], "-o", ms=3, color=c, label=m, lw=2 if m == "sqdf" else 1.4)
        if n > 1:
            ax.fill_between(s["queries"], s["ci_low"], s["ci_high"], color=c, alpha=0.18, lw=0)
    ax.set_xlabel("oracle queries used")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _suffix(budget: int, budgets: Optional[Sequence[int]]) -> str:
    """'_b<budget>' unless ``budgets`` holds one budget; ``budgets=None`` always names the budget."""
    return "" if budgets is not None and len(budgets) == 1 else f"_b{budget}"


def _n_seeds(rounds: pd.DataFrame) -> str:
    n = rounds.groupby(["task", "method"])["seed"].nunique()
    return str(n.min()) if n.min() == n.max() else f"{n.min()}-{n.max()}"


def _two_metric_figure(rounds: pd.DataFrame, out: Path, budget: int, budgets: Optional[Sequence[int]], name: str,
                       top: tuple[str, str], bottom: tuple[str, str], title: str) -> Path:
    """Two rows of per-task panels: metric ``top[0]`` (y label ``top[1]``) over queries, then ``bottom``."""
    r = rounds[rounds["budget"] == budget]
    tasks, methods = sorted(r["task"].unique()), _method_order(r["method"])
    fig, axes = _grid(2, tasks)
    upper, lower = curve_stats(r, top[0]), curve_stats(r, bottom[0])
    for j, t in enumerate(tasks):
        _line_panel(axes[0, j], upper, t, methods, top[1], methods)
        axes[0, j].set_title(t)
        _line_panel(axes[1, j], lower, t, methods, bottom[1], methods)
    return _finish(fig, axes, out / f"{name}{_suffix(budget, budgets)}.png", title.format(seeds=_n_seeds(r)))


def plot_curves(rounds: pd.DataFrame, out: Path, budget: int, budgets: Optional[Sequence[int]]) -> Path:
    """Eval reward and best-so-far vs oracle queries (mean, 95% CI band over seeds)."""
    return _two_metric_figure(rounds, out, budget, budgets, "curves",
                              ("eval_reward", "eval reward (true oracle, mean over eval draws)"),
                              ("best_so_far", "best-so-far (best true value queried)"),
                              f"Sample efficiency, budget {budget} (mean and 95% bootstrap CI over {{seeds}} seeds)")


def plot_tradeoff(rounds: pd.DataFrame, out: Path, budget: int, budgets: Optional[Sequence[int]]) -> Path:
    """Eval reward vs path KL to the pretrained model, one point per method and round."""
    r = rounds[rounds["budget"] == budget]
    tasks, methods = sorted(r["task"].unique()), _method_order(r["method"])
    ev, kl = curve_stats(r, "eval_reward"), curve_stats(r, "path_kl")
    both = ev.merge(kl, on=["task", "method", "budget", "round"], suffixes=("_r", "_kl"))
    fig, axes = _grid(1, tasks, height=3.8)
    for j, t in enumerate(tasks):
        ax = axes[0, j]
        sub = both[both["task"] == t]
        for m in methods:
            s = sub[sub["method"] == m].sort_values("round")
            s = s[np.isfinite(s["mean_kl"])]
            if s.empty:
                continue
            c = colour(m, methods)
            ax.plot(s["mean_kl"], s["mean_r"], "-", color=c, alpha=0.6, lw=1.2)
            ax.scatter(s["mean_kl"], s["mean_r"], color=c, s=18 + 10 * s["round"], label=m, zorder=3,
                       edgecolor="k", lw=0.4)
            last = s.iloc[-1]
            ax.annotate(f"r{int(last['round'])}", (last["mean_kl"], last["mean_r"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("path KL to pretrained (nats, symlog)")
        ax.set_ylabel("eval reward (true oracle)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    return _finish(fig, axes, out / f"tradeoff{_suffix(budget, budgets)}.png",
                   f"Reward vs KL to the pretrained model, budget {budget} "
                   "(one point per round, mean over seeds; larger = later round)")


def plot_diversity(rounds: pd.DataFrame, out: Path, budget: int, budgets: Optional[Sequence[int]]) -> Path:
    """Vendi score and mean pairwise distance vs oracle queries."""
    return _two_metric_figure(rounds, out, budget, budgets, "diversity",
                              ("vendi", "Vendi score (effective # distinct designs)"),
                              ("mean_pairwise_distance", "mean pairwise distance (feature space)"),
                              f"Diversity of eval samples vs queries, budget {budget} (mean and 95% CI over seeds)")


def naturalness_keys(rounds: pd.DataFrame) -> list[str]:
    """Naturalness columns present: invalid_frac, prior_logpdf, then Fréchet-distance / ELBO keys."""
    keys = [k for k in ("invalid_frac", "prior_logpdf") if k in rounds]
    keys += sorted(c for c in rounds.columns if c not in keys and not c.startswith("eval_")
                   and any(s in c.lower() for s in ("fd", "frechet", "fid", "elbo")))
    return keys


def plot_naturalness(rounds: pd.DataFrame, out: Path, budget: int, budgets: Optional[Sequence[int]]) -> Optional[Path]:
    """Each naturalness key vs oracle queries (a row per key); None if the runs log none."""
    r = rounds[rounds["budget"] == budget]
    keys = naturalness_keys(r)
    if not keys:
        return None
    tasks, methods = sorted(r["task"].unique()), _method_order(r["method"])
    fig, axes = _grid(len(keys), tasks)
    for i, k in enumerate(keys):
        cs = curve_stats(r, k)
        for j, t in enumerate(tasks):
            ax = axes[i, j]
            if cs.empty or cs[cs["task"] == t].empty:
                ax.set_visible(False)
                continue
            _line_panel(ax, cs, t, methods, NATURALNESS_LABELS.get(k, k.replace("_", " ")), methods)
            ax.set_title(t)
    return _finish(fig, axes, out / f"naturalness{_suffix(budget, budgets)}.png",
                   f"Naturalness of eval samples vs queries, budget {budget} (mean and 95% CI over seeds)")


def image_panels(n: int, width: float, height: float, extra_height: float = 0.0, max_cols: int = 4):
    """(fig, axes): ``n`` image panels of ``width`` x ``height`` inches, at most ``max_cols`` per row, axes
    hidden, in reading order (unused trailing panels stay blank)."""
    ncols = min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + extra_height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def plot_sample_grid(finals: pd.DataFrame, task: str, out: Path) -> Optional[Path]:
    """Each method's samples.png for ``task`` (largest budget, lowest seed) side by side."""
    f = finals[finals["task"] == task]
    f = f[f["budget"] == f["budget"].max()]
    picks = []
    for m in _method_order(f["method"]):
        g = f[f["method"] == m].sort_values("seed")
        for _, row in g.iterrows():
            png = Path(row["run_dir"]) / "samples.png"
            if png.exists():
                picks.append((m, int(row["seed"]), png))
                break
    if not picks:
        return None
    fig, axes = image_panels(len(picks), 4.0, 4.0, 0.5)
    for ax, (m, seed, png) in zip(axes, picks):
        ax.imshow(plt.imread(str(png)))
        ax.set_title(f"{m} (seed {seed})", fontsize=11)
    fig.suptitle(f"{task}: samples after the last round, budget {int(f['budget'].max())}", fontsize=12)
    fig.tight_layout()
    path = out / f"samples_{task}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def make_all(roots: Sequence[str | Path], out: str | Path, all_samples: bool = False,
             on_duplicate: str = "error", min_seeds: int = 1, budget_suffix: bool = False) -> list[Path]:
    """Every figure for the finished runs under ``roots``; returns the written paths.

    (task, method, budget) cells with fewer than ``min_seeds`` finished seeds are left out; with
    ``budget_suffix`` the file names carry ``_b<B>`` even for one budget (to replace one budget's figures).
    """
    out = Path(out)
    finals, rounds = load_runs(roots, on_duplicate)
    if min_seeds > 1:
        n = finals.groupby(["task", "method", "budget"])["seed"].transform("nunique")
        finals = finals[n >= min_seeds]
        keep = set(zip(finals["task"], finals["method"], finals["budget"]))
        rounds = rounds[[k in keep for k in zip(rounds["task"], rounds["method"], rounds["budget"])]]
        if finals.empty:
            raise LeaderboardError(f"no (task, method, budget) has {min_seeds} finished seeds")
    budgets = sorted(int(b) for b in rounds["budget"].unique())
    written: list[Path] = []
    for b in budgets:
        for fn in (plot_curves, plot_tradeoff, plot_diversity, plot_naturalness):
            p = fn(rounds, out, b, None if budget_suffix else budgets)
            if p is not None:
                written.append(p)
    for task in sorted(finals["task"].unique()):
        tiers = set(finals.loc[finals["task"] == task, "tier"].dropna())
        if all_samples or (tiers and tiers != {"synthetic"}):
            p = plot_sample_grid(finals, task, out)
            if p is not None:
                written.append(p)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="folders holding run folders")
    p.add_argument("--out", default="results", help="folder for the PNGs (default results/)")
    p.add_argument("--all-samples", action="store_true", help="sample grids for synthetic tasks too")
    p.add_argument("--on-duplicate", choices=("error", "first"), default="error",
                   help="two folders for one (task, method, budget, seed): error, or keep the first root's")
    p.add_argument("--min-seeds", type=int, default=1, help="leave out cells with fewer finished seeds")
    p.add_argument("--budget-suffix", action="store_true",
                   help="name the figures <name>_b<B>.png even when the runs have one budget")
    args = p.parse_args(argv)
    try:
        written = make_all(args.runs, args.out, args.all_samples, args.on_duplicate, args.min_seeds,
                           args.budget_suffix)
    except LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compact Markdown of the frontier leaderboard for the README: per task, methods ranked by the area under
the reward–KL frontier, with the score at matched KL (1, 10, 100 nats) and the best -manifold score; and,
with ``--verdicts METHOD``, where that method's frontier lies against every other method's.

    python -m benchmarks.frontier_readme results/frontier_leaderboard.csv > /tmp/table.md
    python -m benchmarks.frontier_readme results/frontier_leaderboard.csv --verdicts sqdf > /tmp/verdicts.md
    python -m benchmarks.frontier_readme results/frontier_image.csv --near-kl 3 > /tmp/matched.md

``--near-kl KL`` reads the per-grid-point frontier CSV instead and prints, per task and method, the grid
point whose mean path KL is nearest KL on a log scale (within a factor ``--within``, default 3; "none
within" otherwise) with its reward, path KL and the naturalness and diversity columns the CSV has (means
over seeds): naturalness at matched KL, read off measured points rather than interpolated.

A verdict compares two 95 % CIs (each a percentile bootstrap over one method's seeds): "above" when the
reference's lower bound is above the other's upper bound, "below" in the mirror case, "on" when they
overlap (not a finding either way), "only X" when one of the two frontiers does not reach that KL, "one
seed" when either method has a grid point with one seed (no interval to compare).
Overlapping independent CIs is a conservative test: "on" can hide a real but small difference.
"""
from __future__ import annotations

import math

import pandas as pd


def cell(row, key: str) -> str:
    v = row[key]
    if isinstance(v, float) and math.isnan(v):
        return "not reached" if key.startswith("score_at") else "–"
    return f"{v:.3f} [{row[key + '_ci_low']:.3f}, {row[key + '_ci_high']:.3f}]"


def table(df: pd.DataFrame) -> str:
    lines = []
    for task, g in df.groupby("task", sort=True):
        g = g.sort_values("auf", ascending=False)
        lines += [f"**{task}** (pretrained eval reward {g['pretrained_reward'].iloc[0]:.2f})", "",
                  "| method | knob | AUF (KL 0.1–100) | score @ KL 1 | score @ KL 10 | score @ KL 100 | max KL | best score |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in g.iterrows():
            best = cell(r, "best_score_manifold") if not math.isnan(r["best_score_manifold"]) else "–"
            knob = r['knob'] if isinstance(r['knob'], str) and r['knob'] else '–'
            if "kl_measured" in r and r["kl_measured"] is False:  # random search, BO, FK steering: no path KL
                lines.append(f"| {r['method']} | {knob} | no path KL | – | – | – | – | {best} |")
                continue
            lines.append(f"| {r['method']} | {knob} | {cell(r, 'auf')} | {cell(r, 'score_at_kl1')} | "
                         f"{cell(r, 'score_at_kl10')} | {cell(r, 'score_at_kl100')} | {r['kl_max']:.3g} | {best} |")
        lines.append("")
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
    """Per task, one row per other method with a frontier: where ``reference``'s frontier lies against it."""
    lines = []
    for task, g in df.groupby("task", sort=True):
        has_kl = g["kl_measured"].astype(bool) if "kl_measured" in g else pd.Series(True, index=g.index)
        g = g[has_kl & (g["method"] != "pretrained")]
        if reference not in set(g["method"]):
            continue
        ref = g[g["method"] == reference].iloc[0]
        lines += [f"**{task}**: {reference}'s frontier against each method's (95 % CIs; 'on' = they overlap)", "",
                  "| method | " + " | ".join(name for _, name in VERDICT_KEYS) + " |",
                  "|---|" + "---|" * len(VERDICT_KEYS)]
        for _, r in g[g["method"] != reference].sort_values("auf", ascending=False).iterrows():
            lines.append(f"| {r['method']} | " + " | ".join(verdict(ref, r, k, reference, r["method"])
                                                           for k, _ in VERDICT_KEYS) + " |")
        lines.append("")
    if not lines:
        raise SystemExit(f"error: no task in the table has a frontier for method {reference!r}")
    return "\n".join(lines)


#: per-grid-point columns shown by --near-kl when the frontier CSV has them: (column stem, header)
NEAR_KL_COLUMNS = (("eval_reward", "eval reward"), ("path_kl", "path KL"), ("fd_phi", "FD (φ)"),
                   ("denoise_loss", "denoising loss"), ("n_valid", "valid designs"),
                   ("vendi_valid", "Vendi (valid)"), ("eval_ground_truth_A", "ground truth A"))


def near_kl(points: pd.DataFrame, kl: float, within: float = 3.0) -> str:
    """Per task, each method's grid point nearest ``kl`` nats (|log KL_point - log kl| smallest, at most
    log ``within``), with the pretrained model first; methods without a path KL are left out."""
    if not kl > 0 or not within >= 1:
        raise SystemExit(f"error: --near-kl must be > 0 and --within >= 1, got {kl} and {within}")
    cols = [(c, h) for c, h in NEAR_KL_COLUMNS if f"{c}_mean" in points.columns]
    lines = []
    for task, g in points.groupby("task", sort=True):
        lines += [f"**{task}**: each method's grid point nearest {kl:g} nats of path KL (within ×{within:g}; "
                  "means over seeds)", "", "| method | knob | seeds | " + " | ".join(h for _, h in cols) + " |",
                  "|---|---|---|" + "---:|" * len(cols)]
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
                    lines.append(f"| {method} | – | – | " + " | ".join("none within" if c == "path_kl" else "–"
                                                                     for c, _ in cols) + " |")
                    continue
                r = m.loc[dist.idxmin()]
            knob = f"{r['knob']} = {r['value']:g}" if isinstance(r["knob"], str) and r["knob"] else "–"
            lines.append(f"| {method} | {knob} | {int(r['n_seeds'])} | "
                         + " | ".join(f"{r[c + '_mean']:.3g}" for c, _ in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def require(df: pd.DataFrame, columns: set, path: str, expected: str) -> None:
    """One-line exit when the table at ``path`` lacks any of ``columns``."""
    if not columns <= set(df.columns):
        raise SystemExit(f"error: {path} lacks {', '.join(sorted(columns - set(df.columns)))}; {expected}")


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier_readme", description=__doc__.split("\n\n")[0])
    p.add_argument("leaderboard", nargs="?", default="results/frontier_leaderboard.csv")
    p.add_argument("--verdicts", metavar="METHOD", default=None,
                   help="print where METHOD's frontier lies against every other method's instead of the table")
    p.add_argument("--near-kl", type=float, metavar="KL", default=None,
                   help="the positional CSV is the per-grid-point frontier CSV (benchmarks.frontier --csv): print "
                        "each method's grid point nearest KL nats with its naturalness and diversity")
    p.add_argument("--within", type=float, default=3.0, help="with --near-kl: largest factor between KL and a point's")
    args = p.parse_args(argv)
    try:
        df = pd.read_csv(args.leaderboard)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read the frontier table {args.leaderboard}: {e}") from None
    if args.near_kl is not None:
        require(df, {"task", "method", "knob", "value", "n_seeds", "path_kl_mean", "eval_reward_mean"},
                args.leaderboard, "--near-kl expects a table written by python -m benchmarks.frontier --csv")
        print(near_kl(df, args.near_kl, args.within))
        return
    require(df, {"task", "method", "auf", "auf_ci_low", "auf_ci_high"}, args.leaderboard,
            "expected a table written by python -m benchmarks.frontier --leaderboard")
    print(verdicts(df, args.verdicts) if args.verdicts else table(df))


if __name__ == "__main__":
    main()

"""Compact Markdown of the frontier leaderboard for the README: per task, methods ranked by the area under
the reward–KL frontier, with the score at matched KL (1, 10, 100 nats) and the best -manifold score.

    python -m benchmarks.frontier_readme results/frontier_leaderboard.csv > /tmp/table.md
"""
from __future__ import annotations

import math
import sys

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


if __name__ == "__main__":
    print(table(pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "results/frontier_leaderboard.csv")))

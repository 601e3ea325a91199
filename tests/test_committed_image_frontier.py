"""The committed image-tier frontier (results/frontier_image*.csv) is what benchmarks/run/reproduce_image_frontier.sh
plans: the script's dry run lists one run per grid point and seed, every committed grid point at 3 seeds, for
every method whose grid rule is unchanged since the CSV was made. raft and diffusion-nft now sweep their
declared knob (keep_fraction, nft_beta) instead of lr: for them the dry run must plan the new rule, and their
committed lr rows are stale until the cells are re-run (the test prints them). The methods added since (FIND,
D3PO, RLCM, DTS, DTS*) join additively: the dry run plans their rule's points at the same seeds. (Re-running an
image cell costs ~20 CPU-minutes, so CI checks the plan, not a run.)"""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd

from benchmarks.run import frontier as fr

ROOT = Path(__file__).resolve().parents[1]
#: methods whose grid rule changed after the committed CSV was made: their committed points may be stale
RULE_CHANGED = ("raft", "diffusion-nft")
#: methods added to the script after the committed CSV was made: not in it yet
ADDED = ("find", "d3po", "rlcm", "dts", "dts-star")


def _label(method: str, knob, value) -> str:
    return f"{method}__default" if not isinstance(knob, str) or not knob else f"{method}__{knob}={float(value):g}"


def test_reproduce_script_plans_the_committed_grid_and_the_new_rule(tmp_path, capsys):
    committed = pd.read_csv(ROOT / "results" / "frontier_image.csv")
    assert set(committed.task) == {"aesthetic-manifold"} and (committed.n_seeds == 3).all()
    assert (committed.budget == 1000).all()
    out = subprocess.run(["bash", "benchmarks/run/reproduce_image_frontier.sh", str(tmp_path / "runs"), "1", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    planned = re.findall(r"runs/([^/\s]+)/aesthetic-manifold__[^/\s]+__b1000__s([0-2])\s*$", text, re.M)
    points = Counter(p for p, _ in planned)
    assert set(points.values()) == {3} and f"frontier: {3 * len(points)} runs" in text
    assert {p.split("__")[0] for p in points} == set(committed.method) | set(ADDED)
    assert not set(ADDED) & set(committed.method)

    labels = {_label(r.method, r.knob, r.value) for r in committed.itertuples()}
    unchanged = {p for p in points if p.split("__")[0] not in RULE_CHANGED + ADDED}
    # every method whose rule did not change: exactly its committed points
    assert unchanged == {lab for lab in labels if lab.split("__")[0] not in RULE_CHANGED}
    # raft / diffusion-nft: exactly the new rule's points (their declared knob and values); the added methods:
    # exactly their rule's points
    plans = fr.plan_grid(list(RULE_CHANGED + ADDED))
    for m in RULE_CHANGED + ADDED:
        expect = {plans[m].folder(v) for v in plans[m].values}
        assert {p for p in points if p.split("__")[0] == m} == expect, m
        assert len(expect) == 4 and (m in ADDED or plans[m].knob != "lr")

    stale = sorted(lab for lab in labels if lab not in points)  # empty once the new points replace them
    assert all(lab.split("__")[0] in RULE_CHANGED for lab in stale)
    if stale:
        with capsys.disabled():
            print(f"\nstale committed rows of results/frontier_image.csv (not in the current plan): {', '.join(stale)}")

"""The committed image-tier frontier (results/frontier_image*.csv) is what benchmarks/reproduce_image_frontier.sh
plans: the script's dry run lists one run per committed grid point and seed, and the committed CSV has every
grid point at 3 seeds. (Re-running an image cell costs ~20 CPU-minutes, so CI checks the plan, not a run.)"""
from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_script_plans_exactly_the_committed_grid(tmp_path):
    committed = pd.read_csv(ROOT / "results" / "frontier_image.csv")
    assert set(committed.task) == {"aesthetic-manifold"} and (committed.n_seeds == 3).all()
    assert (committed.budget == 1000).all()
    out = subprocess.run(["bash", "benchmarks/reproduce_image_frontier.sh", str(tmp_path / "runs"), "1", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert f"frontier: {3 * len(committed)} runs" in text
    planned = re.findall(r"runs/([^/\s]+)/aesthetic-manifold__[^/\s]+__b1000__s([0-2])\s*$", text, re.M)
    points = Counter(p for p, _ in planned)
    assert len(points) == len(committed) and set(points.values()) == {3}
    per_method = Counter(p.split("__")[0] for p in points)
    assert per_method == Counter(committed.method)
    labels = {f"{r.method}__{r.knob}={float(r.value):g}" for r in committed.itertuples() if r.method != "pretrained"}
    assert labels == {p for p in points if not p.startswith("pretrained")}

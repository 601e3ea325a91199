"""The committed image-tier frontier (results/frontier_image*.csv) is what benchmarks/run/reproduce_image_frontier.sh
plans: the script's dry run lists one run per grid point and seed, every committed grid point at the re-make's
5 seeds (the committed CSV, of the older protocol, has 3), for
every method whose grid rule is unchanged since the CSV was made. raft and diffusion-nft now sweep their
declared knob (keep_fraction, nft_beta) instead of lr: for them the dry run must plan the new rule, and their
committed lr rows are stale until the cells are re-run (the test prints them). The methods added since (FIND,
D3PO, RLCM, DTS, DTS*) join additively: the dry run plans their rule's points at the same seeds. (Re-running an
image cell costs ~20 CPU-minutes, so CI checks the plan, not a run.)"""
from __future__ import annotations

import os
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
    planned = re.findall(r"runs/([^/\s]+)/aesthetic-manifold__[^/\s]+__b1000__s([0-9]+)\s*$", text, re.M)
    points = Counter(p for p, _ in planned)
    assert {s for _, s in planned} == {"0", "1", "2", "3", "4"}
    assert set(points.values()) == {5} and f"frontier: {5 * len(points)} runs" in text
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


def test_reproduce_script_runs_a_subset_with_the_same_settings(tmp_path):
    """ONLY= keeps the listed methods (the re-make is spread over sessions) with the settings the full script
    gives them, so their runs carry the same protocol id; SEEDS= keeps a subset of the seeds."""
    def plan(env: dict) -> tuple[Counter, str]:
        out = subprocess.run(["bash", "benchmarks/run/reproduce_image_frontier.sh", str(tmp_path / "runs"), "1",
                              "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr[-2000:]
        text = out.stdout + out.stderr
        return Counter(re.findall(r"runs/([^/\s]+)/aesthetic-manifold__[^/\s]+__b1000__s[0-9]+\s*$", text, re.M)), text
    full, full_text = plan({})
    sub, text = plan({"ONLY": "sqdf,best-of-n", "SEEDS": "0-2"})
    assert set(sub) == {p for p in full if p.split("__")[0] in ("sqdf", "best-of-n")}
    assert set(sub.values()) == {3} and len(sub) == 4 + 3  # best-of-n keeps the image tier's capped grid
    # the same per-method settings in both: the arguments the script passes, read through a stand-in python
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (shim / "python").chmod(0o755)

    def settings(env: dict) -> dict[str, list[str]]:
        out = subprocess.run(["bash", "benchmarks/run/reproduce_image_frontier.sh", "x", "1"], cwd=ROOT, timeout=60,
                             capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", **env})
        args = out.stdout.splitlines()
        per: dict[str, list[str]] = {}
        for i, a in enumerate(args):
            if a in ("--set-for", "--grid"):
                name = args[i + 1] if a == "--set-for" else args[i + 1].split("=")[0]
                per.setdefault(name, []).append(" ".join(args[i:i + (3 if a == "--set-for" else 2)]))
        common = [" ".join(args[i:i + 2]) for i, a in enumerate(args) if a in ("--set", "--budget", "--tasks")]
        return {"common": common, **per}
    full_args, sub_args = settings({}), settings({"ONLY": "sqdf,best-of-n"})
    assert set(sub_args) == {"common", "sqdf", "best-of-n"}
    assert all(sub_args[k] == full_args[k] for k in sub_args) and sub_args["sqdf"]
    # one compute cap for the search peers: at most 16 chains' worth of UNet calls per design
    assert "--grid best-of-n=2,4,16" in full_args["best-of-n"] and "--grid svdd=2,4,16" in full_args["svdd"]
    assert "--set-for dts rollouts=16" in full_args["dts"] and "--set-for dts-star rollouts=16" in full_args["dts-star"]
    bad = subprocess.run(["bash", "benchmarks/run/reproduce_image_frontier.sh", str(tmp_path / "r"), "1", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ONLY": "nosuch"})
    assert bad.returncode == 2 and "ONLY=nosuch names no method" in bad.stderr


def test_committed_image_runs_are_the_records_of_complete_methods(tmp_path):
    """results/frontier_image_runs.csv (the re-make on the current protocol, one row per run) is what the
    frontier tool writes from the committed run records for the methods it holds, and holds only methods
    whose every planned grid point finished at the script's 5 seeds, under one protocol id per point."""
    committed = ROOT / "results" / "frontier_image_runs.csv"
    records = ROOT / "results" / "run_records" / "frontier_image_b1000"
    runs = pd.read_csv(committed)
    methods = sorted(set(runs["method"]))
    assert "pretrained" in methods and "sqdf" in methods
    rebuilt = tmp_path / "runs.csv"
    assert fr.main(["--report-only", "--out", str(records), "--budget", "1000", "--methods", ",".join(methods),
                    "--runs-csv", str(rebuilt), "--csv", str(tmp_path / "points.csv"), "--plots", "",
                    "--leaderboard", str(tmp_path / "board.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(rebuilt), runs)
    capped = [f"{m}=2,4,16" for m in ("best-of-n", "svdd") if m in methods]  # the script's image-tier grid
    plans = fr.plan_grid([m for m in methods if m != "pretrained"], capped)
    for m, g in runs.groupby("method"):
        points = {"default"} if m == "pretrained" else {plans[m].folder(v).split("__", 1)[1] for v in plans[m].values}
        folders = g["run_dir"].str.split("/").str[0].str.split("__", n=1).str[1]
        assert set(folders) == points, m
        for _, cell in g.groupby(folders):
            assert sorted(cell["seed"]) == [0, 1, 2, 3, 4] and cell["protocol"].nunique() == 1, m
    assert runs["task"].eq("aesthetic-manifold").all() and runs["budget"].eq(1000).all()

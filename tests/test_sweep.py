"""Tests of benchmarks/run/sweep.py: argument checks, and a tiny *real* grid that reproduces itself.

The grid (2 tasks x pretrained x 2 seeds, budget 100, 2 rounds, 10 denoising steps, 32 eval draws) runs
once through the local process pool and once, from a clean folder, through submitit's ``debug``
executor; the two leaderboards must be identical row for row (timing columns aside). More methods can
be added with SQDF_BBO_SWEEP_TEST_METHODS=pretrained,sqdf (slower).
"""
from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import torch

from benchmarks.report import leaderboard as lb
from benchmarks.report import plot
from benchmarks.run import sweep
from sqdf_bbo.agents import Agent

TASKS = "ackley,levy"
METHODS = os.environ.get("SQDF_BBO_SWEEP_TEST_METHODS", "pretrained")
SETS = ["--set", "run.rounds=2", "--set", "run.n_eval=32", "--set", "task.num_steps=10"]


def grid_args(out, *extra):
    return ["--tasks", TASKS, "--methods", METHODS, "--seeds", "0-1", "--budget", "100", "--out", str(out),
            "--threads", "1", "--no-progress", *SETS, *extra]


# ---- parsing and validation (no run) -------------------------------------------------------------
def test_parse_helpers():
    assert sweep.parse_int_ranges("0-4", "seeds", 0) == [0, 1, 2, 3, 4]
    assert sweep.parse_int_ranges("5,0-1, 3", "seeds", 0) == [0, 1, 3, 5]
    assert sweep.parse_int_ranges("2000,500", "budget", 1) == [500, 2000]
    for bad, msg in [("4-1", "empty"), ("a", "ranges like 0-4"), ("-1", "ranges like 0-4"), ("", "empty")]:
        with pytest.raises(sweep.SweepError, match=msg):
            sweep.parse_int_ranges(bad, "seeds", 0)
    with pytest.raises(sweep.SweepError, match=">= 1"):
        sweep.parse_int_ranges("0", "budget", 1)
    with pytest.raises(sweep.SweepError, match="repeats levy"):
        sweep.parse_list("levy,ackley,levy", "tasks")
    spec = sweep.RunSpec("ackley", "pkg.mod:Cls", 100, 3, "runs", ["a=1"], resume=True)
    assert spec.name == "ackley__pkg.mod.Cls__b100__s3"
    assert spec.argv()[-3:] == ["--set", "a=1", "--resume"]


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "ackley,nope"], "unknown task(s) 'nope'; allowed: ackley"),
    (["--methods", "pretrained,nope"], "unknown method 'nope'. Available methods: adjoint-matching, "),
    (["--set", "lr=0.1"], "unknown setting(s) 'lr' for method PretrainedAgent"),
    (["--set", "run.foo=1"], "unknown run setting 'foo'"),
    (["--set", "task.bogus=1"], "unknown override(s) 'bogus' for task 'ackley'"),
    (["--set", "run.rounds=500"], "smaller than the number of rounds"),
    (["--set-for", "sqdf", "lr=0.1"], "--set-for names method(s) sqdf"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--cluster", "debug"], "--cluster only applies"),
])
def test_bad_arguments_are_named(tmp_path, capsys, extra, message):
    argv = ["--tasks", "ackley", "--methods", "pretrained", "--budget", "100", "--out", str(tmp_path / "r"), *extra]
    assert sweep.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing ran, nothing written


# ---- a tiny real grid ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Grid A through the local process pool; returns its folder."""
    out = tmp_path_factory.mktemp("sweep_a")
    threads = torch.get_num_threads()
    try:
        assert sweep.main(grid_args(out, "--workers", "1")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _board(root):
    finals, rounds = lb.load_runs([root])
    return lb.build_leaderboard(finals, rounds, reps=300).drop(columns=list(lb.TIMING_COLUMNS))


def test_local_pool_runs_the_grid_and_skips_finished_runs(grid, capsys):
    n = len(TASKS.split(",")) * len(METHODS.split(",")) * 2
    finals = sorted(grid.glob("*/final.json"))
    assert len(finals) == n
    rec = json.loads(next((grid / sweep.LOG_DIR).glob("sweep_*.json")).read_text())
    assert rec["ran"] == n and rec["failed"] == 0 and rec["wall_time_s"] > 0
    cfg = json.loads((grid / "ackley__pretrained__b100__s1" / "config.json").read_text())
    assert cfg["command"].startswith("python -m sqdf_bbo.run --task ackley --method pretrained --budget 100 --seed 1")
    assert cfg["run"]["rounds"] == 2 and cfg["run"]["n_eval"] == 32
    mtimes = [p.stat().st_mtime_ns for p in finals]
    capsys.readouterr()
    assert sweep.main(grid_args(grid)) == 0  # everything finished: nothing runs
    assert f"{n} finished already (skipped), 0 to run" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in finals] == mtimes


def test_submitit_debug_from_clean_folder_reproduces_rows(grid, tmp_path):
    out = tmp_path / "sweep_b"
    assert sweep.main(grid_args(out, "--backend", "submitit", "--cluster", "debug")) == 0
    assert list((out / sweep.LOG_DIR / "submitit").iterdir())  # submitit really ran the jobs
    a, b = _board(grid), _board(out)
    assert len(a) == len(TASKS.split(",")) * len(METHODS.split(","))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # the CLI tables agree too (CSV text minus machine-timing columns)
    for root, name in ((grid, "a.csv"), (out, "b.csv")):
        assert lb.main([str(root), "--out", str(tmp_path / name), "--reps", "300"]) == 0
    ca, cb = (pd.read_csv(tmp_path / n).drop(columns=list(lb.TIMING_COLUMNS)) for n in ("a.csv", "b.csv"))
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    assert lb.main([str(out), "--out", str(tmp_path / "c.csv"), "--compare", str(tmp_path / "a.csv")]) == 0


def test_plots_from_real_runs(grid, tmp_path):
    written = plot.make_all([grid], tmp_path)
    assert {p.name for p in written} >= {"curves.png", "tradeoff.png", "diversity.png", "naturalness.png"}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000


def test_interrupted_run_needs_resume_and_then_matches(grid, tmp_path, capsys):
    out = tmp_path / "sweep_c"
    name = "ackley__pretrained__b100__s0"
    shutil.copytree(grid / name, out / name)
    ref = json.loads((out / name / "final.json").read_text())
    (out / name / "final.json").unlink()  # as if killed after its last checkpoint
    args = ["--tasks", "ackley", "--methods", "pretrained", "--seeds", "0", "--budget", "100", "--out", str(out),
            "--threads", "1", "--no-progress", "--backend", "submitit", "--cluster", "debug", *SETS]
    assert sweep.main(args) == 2
    assert "pass --resume to continue them" in capsys.readouterr().err
    assert sweep.main(args + ["--resume"]) == 0
    new = json.loads((out / name / "final.json").read_text())
    for k in ("eval_reward", "best_so_far", "vendi", "prior_logpdf", "queries_used"):
        assert new[k] == ref[k], k


class BrokenAgent(Agent):
    """Fails on its first proposal, to test that a failed run is reported and does not stop the sweep."""

    def propose(self, n, generator):
        raise RuntimeError("broken agent: deliberate failure")


def test_failed_run_is_reported_with_its_log(tmp_path, capsys):
    out = tmp_path / "sweep_d"
    args = ["--tasks", "ackley", "--methods", f"{__name__}:BrokenAgent", "--seeds", "0", "--budget", "100",
            "--out", str(out), "--no-progress", "--backend", "submitit", "--cluster", "debug", *SETS]
    assert sweep.main(args) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "deliberate failure" in err
    rec = json.loads(next((out / sweep.LOG_DIR).glob("sweep_*.json")).read_text())
    assert rec["failed"] == 1
    log = next((out / sweep.LOG_DIR).glob("*.log")).read_text()
    assert "RuntimeError: broken agent: deliberate failure" in log

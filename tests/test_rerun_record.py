"""benchmarks/run/rerun_record.py: a committed record re-run from its config, compared number for number, in the
process setup that made it (threads of torch and of numpy's BLAS)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.run import rerun_record as rr
from benchmarks.run.sweep import THREAD_VARS
from sqdf_bbo import protocol


def test_differences_compare_every_number_but_the_machine_measurements():
    old = {"eval_reward": 1.0, "wall_time_s": 3.0, "x": [1.0, math.nan], "run_dir": "a", "phase_sample_s": 1.0}
    assert rr.differences(old, {**old, "wall_time_s": 9.0, "run_dir": "b", "phase_sample_s": 2.0}) == []
    assert rr.differences(old, {**old, "eval_reward": 1.0 + 1e-15}) == [".eval_reward: 1.0 -> 1.000000000000001"]
    assert rr.differences(old, {**old, "x": [1.0]}) == [".x: length 2 vs 1"]
    assert rr.differences(old, {k: v for k, v in old.items() if k != "x"}) == [".x: only in old"]


def test_rerun_env_takes_the_records_blas_threads_or_the_librarys_default():
    env = rr.rerun_env({"blas_threads": 2}, threads=1)
    assert env["OPENBLAS_NUM_THREADS"] == "2" and all(env[v] == "1" for v in THREAD_VARS if v != "OPENBLAS_NUM_THREADS")
    old = rr.rerun_env({}, threads=1)  # a record from before blas_threads was recorded: the library's default
    assert old["OPENBLAS_NUM_THREADS"] == str(os.cpu_count()) and old["OMP_NUM_THREADS"] == "1"


def _blas_threads_in_child(code: str, env_threads: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if env_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = env_threads
    out = subprocess.run([sys.executable, "-c", code + "\nfrom sqdf_bbo.protocol import blas_threads; print(blas_threads())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_a_sweep_worker_limits_numpy_blas_even_when_numpy_is_loaded_first():
    """A spawned worker imports the driver's main module (and numpy) before its initializer: the variables
    alone come too late, so the initializer also limits the loaded BLAS library."""
    assert _blas_threads_in_child("import numpy\nfrom benchmarks.run.sweep import _set_threads\n_set_threads(1)", None) == 1
    assert _blas_threads_in_child("import numpy", "1") == 1  # what config.json records is what the library uses


def test_config_records_the_blas_threads():
    rec = protocol.machine_record()
    assert isinstance(rec["blas_threads"], int) and rec["blas_threads"] >= 1
    assert set(rec) == {"cpu_model", "torch_threads", "blas_threads"}


@pytest.mark.slow
def test_a_fresh_record_reproduces_and_an_edited_one_does_not(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--task", "levy", "--method", "random", "--budget", "32",
                          "--set", "run.rounds=2", "--no-progress", "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (record,) = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    assert rr.check(record) == []
    final = json.loads((record / "final.json").read_text())
    (record / "final.json").write_text(json.dumps({**final, "eval_reward": final["eval_reward"] + 1.0}))
    diffs = rr.check(record)
    assert len(diffs) == 1 and diffs[0].startswith("final.eval_reward: ")
    assert rr.main([str(record)]) == 1

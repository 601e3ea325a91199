"""The reproduce scripts refuse what they cannot take before they run anything: an option given in the place of
OUT (``bash reproduce_leaderboard.sh --dry-run`` used to take it for OUT and start a 7-hour sweep), a bad
WORKERS; the leaderboard script also a fourth argument and a bad PART. A stand-in ``python`` on the PATH
records any call, so the tests also show that nothing was started."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, says", [
    (["--dry-run"], "takes no options, got '--dry-run'"),
    (["out", "2", "synthetic", "--dry-run"], "at most 3 arguments, got 4"),
    (["out", "-h"], "takes no options, got '-h'"),
    (["out", "2", "both"], "PART must be all, synthetic or image, got 'both'"),
    (["out", "two"], "WORKERS must be a positive integer, got 'two'"),
])
def test_bad_arguments_are_one_line_and_start_nothing(tmp_path, args, says):
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "python").write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    (shim / "python").chmod(0o755)
    out = subprocess.run(["bash", "benchmarks/run/reproduce_leaderboard.sh", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not calls.exists()


@pytest.mark.parametrize("script", ["reproduce_frontier.sh", "reproduce_sqdf_ablations.sh", "reproduce_image_frontier.sh"])
@pytest.mark.parametrize("args, says", [
    (["--dry-run"], "OUT and WORKERS come before any option, got '--dry-run'"),
    (["out", "--dry-run"], "OUT and WORKERS come before any option, got '--dry-run'"),
    (["out", "0"], "WORKERS must be a positive integer, got '0'"),
])
def test_frontier_scripts_refuse_an_option_in_place_of_out_or_workers(tmp_path, script, args, says):
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "python").write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    (shim / "python").chmod(0o755)
    out = subprocess.run(["bash", f"benchmarks/run/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not calls.exists()


def test_good_arguments_reach_the_sweep(tmp_path):
    """The same stand-in shows the valid form runs: the first call is the synthetic tier's sweep into OUT."""
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "calls"
    (shim / "python").write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    (shim / "python").chmod(0o755)
    out = subprocess.run(["bash", "benchmarks/run/reproduce_leaderboard.sh", str(tmp_path / "out"), "1", "synthetic"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    first = calls.read_text().splitlines()[0]
    assert first.startswith("-m benchmarks.run.sweep --tasks ackley,levy,rastrigin-manifold --methods pretrained")
    assert f"--out {tmp_path / 'out'} --workers 1" in first

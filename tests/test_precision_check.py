"""benchmarks/perf/precision_check.py: which runs are left (resumable), the arguments each run gets, and the
paired fp32-vs-bf16 comparison against a hand computation (no real main command runs here)."""
import math

import pytest

from benchmarks.perf import perf_main
from benchmarks.perf import precision_check as pc
from benchmarks.common.provenance import machine


def fake_run(calls, cpu=None):
    def run_once(task, method, budget, seed, threads, out, profile, extra):
        calls.append(extra)
        bf16 = extra[-1] == "run.precision=bf16"
        row = {k: "" for k in perf_main.COLUMNS}
        row.update(task=task, method=method, budget=budget, seed=seed, threads=threads, wall_s=10.0 + bf16,
                   load_before=0.5, git_commit=perf_main.git_commit_short(), machine=cpu or machine(),
                   eval_reward_final=[8.0, 9.0, 10.0][seed] + (0.5 if bf16 else 0.0) + (0.1 * seed if bf16 else 0.0),
                   eval_ground_truth_A_final=1.0, path_kl_final=100.0 + seed, fd_phi_final=50.0)
        return row
    return run_once


def test_runs_each_precision_and_seed_once_then_resumes(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(perf_main, "run_once", fake_run(calls))
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "abc1234")
    out = tmp_path / "p.csv"
    assert pc.main(["--seeds", "0", "1", "--out", str(out), "--set", "run.n_eval=16"]) == 0
    assert calls == [["--set", "run.n_eval=16", "--set", f"run.precision={p}"] for p in ("fp32", "bf16")] * 2
    assert len(pc.read_rows(out)) == 4
    assert pc.main(["--seeds", "0", "1", "2", "--out", str(out), "--set", "run.n_eval=16"]) == 0
    assert len(calls) == 6 and "2 run(s) to do" in capsys.readouterr().err  # only seed 2 was left
    assert pc.main(["--seeds", "0", "--out", str(out), "--set", "run.precision=bf16"]) == 2
    assert "run.precision is what this check varies" in capsys.readouterr().err


def test_report_is_a_paired_t_interval_by_hand(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(perf_main, "run_once", fake_run([]))
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "abc1234")
    out = tmp_path / "p.csv"
    assert pc.main(["--seeds", "0", "1", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    # differences bf16 - fp32 in eval reward: 0.5, 0.6, 0.7 -> mean 0.6, sd 0.1, t(0.975, 2) = 4.302653
    half = 4.302653 * 0.1 / math.sqrt(3)
    m, lo, hi = pc.paired_t_interval([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and lo == pytest.approx(0.6 - half, rel=1e-6) and hi == pytest.approx(0.6 + half, rel=1e-6)
    text = pc.report(pc.read_rows(out))
    reward = next(ln for ln in text.splitlines() if ln.startswith("| final eval reward"))
    assert "9 ± 1" in reward and f"+0.6 [{0.6 - half:+.4g}, {0.6 + half:+.4g}]" in reward and "bf16 higher" in reward
    kl = next(ln for ln in text.splitlines() if ln.startswith("| path KL"))
    assert "+0 [+0, +0]" in kl and "within seed noise" in kl  # identical values: the interval is the point 0
    with pytest.raises(SystemExit, match="no rows"):
        pc.report([])


def test_rows_of_a_commit_with_the_same_library_code_count_as_done(tmp_path, monkeypatch, capsys):
    trees = {"abc1234": "t1", "def5678": "t1", "9990000": "t2"}  # def5678 changed only docs; 9990000 the code
    monkeypatch.setattr(perf_main, "code_tree", lambda commit="HEAD": trees.get(commit, ""))
    calls = []
    monkeypatch.setattr(perf_main, "run_once", fake_run(calls))
    out = tmp_path / "p.csv"
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "abc1234")
    assert pc.main(["--seeds", "0", "--out", str(out)]) == 0 and len(calls) == 2
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "def5678")
    assert pc.main(["--seeds", "0", "--out", str(out)]) == 0 and len(calls) == 2  # nothing left to run
    assert "0 run(s) to do at commit def5678" in capsys.readouterr().err
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "9990000")
    assert pc.main(["--seeds", "0", "--out", str(out)]) == 0 and len(calls) == 4  # new code: both again
    rows = pc.read_rows(out)
    assert pc.same_code(rows, "def5678") == {"abc1234", "def5678"} and pc.same_code(rows, "9990000") == {"9990000"}


def test_code_tree_is_git_s_tree_hash_of_the_library_folders():
    import subprocess
    tree = perf_main.code_tree()
    if not tree:
        pytest.skip("not a git checkout")
    want = subprocess.run(["git", "rev-parse", "HEAD:sqdf_bbo", "HEAD:baselines"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert tree.split() == want and perf_main.code_tree("no-such-commit") == ""


def test_rows_of_another_cpu_model_neither_count_as_done_nor_pair(tmp_path, monkeypatch, capsys):
    """The same seed runs other trajectories on another CPU's kernels: another machine's rows are left out."""
    monkeypatch.setattr(perf_main, "git_commit_short", lambda: "abc1234")
    out = tmp_path / "p.csv"
    monkeypatch.setattr(perf_main, "run_once", fake_run([], cpu="Other CPU (2 logical CPUs, Linux)"))
    assert pc.main(["--seeds", "0", "1", "--out", str(out)]) == 0
    calls = []
    monkeypatch.setattr(perf_main, "run_once", fake_run(calls))
    assert pc.main(["--seeds", "0", "1", "--out", str(out)]) == 0 and len(calls) == 4  # all four again here
    assert "4 run(s) to do" in capsys.readouterr().err
    rows = pc.read_rows(out)
    rows[-1]["eval_reward_final"] = "100.0"  # this machine's bf16 seed 1
    assert "Other CPU" not in pc.report(rows) and machine() in pc.report(rows)
    assert "| final eval reward | 8.5 ± 0.7071 | 54.25 ± 64.7 |" in pc.report(rows)
    other = pc.report(rows, machine="Other CPU (2 logical CPUs, Linux)")
    assert "| final eval reward | 8.5 ± 0.7071 | 9.05 ± 0.7778 |" in other
    with pytest.raises(SystemExit, match="no seed has both"):
        pc.report(rows, machine="Third CPU")

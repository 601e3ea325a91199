"""The runner: run folder contents, one-line CLI errors, plug-in agents, kill-and-resume equality."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sqdf_bbo.agents import Agent
from sqdf_bbo.run import TIMING_KEYS, main, round_sizes

TESTS_DIR = Path(__file__).parent
FAST = ["--set", "run.n_eval=32", "--no-progress"]


class HillClimbAgent(Agent):
    """A plug-in agent defined outside the package: Gaussian perturbations of the best design so far.

    It keeps state across rounds and draws from its own generator *and* torch's global RNG, so an
    inexact resume (lost RNG or agent state) changes its proposals.
    """

    default_config = {"step": 0.5}

    def __init__(self, task, config=None, seed=0):
        super().__init__(task, config, seed)
        lo, hi = task.bounds
        self.lo, self.hi = lo.double(), hi.double()
        self.best, self.best_value = (lo.double() + hi.double()) / 2, -float("inf")
        self.gen = torch.Generator().manual_seed(seed)

    def propose(self, n, generator):
        scale = self.config["step"] * (self.hi - self.lo) / 10
        noise = torch.randn((n, self.best.shape[0]), generator=self.gen, dtype=torch.float64)
        jitter = torch.rand((n, 1), dtype=torch.float64)  # global RNG on purpose
        x = self.best + noise * scale * (0.5 + jitter)
        return torch.maximum(torch.minimum(x, self.hi), self.lo).float()

    def observe(self, designs, values):
        i = int(torch.argmax(values))
        if values[i] > self.best_value:
            self.best_value, self.best = float(values[i]), designs[i].double()

    def improve(self):
        return {"best_value": self.best_value}


def _run_cli(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_round_sizes_follow_doubling_and_sum_to_budget():
    assert round_sizes(15360, 4) == [1024, 2048, 4096, 8192]
    for budget in (4, 7, 100, 1000, 2001):
        sizes = round_sizes(budget, 4)
        assert sum(sizes) == budget and min(sizes) >= 1 and sizes == sorted(sizes)


def test_pretrained_run_folder_holds_everything(tmp_path):
    assert main(["--task", "ackley-manifold", "--method", "pretrained", "--budget", "200", "--seed", "1",
                 "--out", str(tmp_path), *FAST]) == 0
    run = tmp_path / "ackley-manifold__pretrained__b200__s1"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["budget"] == 200 and cfg["method"] == "pretrained" and cfg["versions"]["torch"]
    assert "git_commit" in cfg and cfg["round_sizes"] == [13, 26, 53, 108]
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert [r["queries_used"] for r in rounds] == [0, 13, 39, 92, 200]
    for r in rounds[1:]:  # the round's wall time split into disjoint phases
        phases = r["phase_wall_s"]
        assert set(phases) == {"propose", "query", "improve", "evaluate", "checkpoint"}
        assert min(phases.values()) >= 0 and phases["checkpoint"] > 0
        assert sum(phases.values()) <= r["round_wall_s"] + 1e-3
    q = pd.read_csv(run / "queries.csv")
    assert len(q) == 200 and list(q["query_index"]) == list(range(200))
    assert {"round", "observed", "true", "x0", "x7"} <= set(q.columns)
    # observed = true + noise with the task's noise std
    resid = q["observed"] - q["true"]
    assert 0.5 * 0.0796 < resid.std() < 1.5 * 0.0796
    final = json.loads((run / "final.json").read_text())
    assert final["queries_used"] == 200 and final["path_kl"] == 0.0
    assert final["best_so_far"] == pytest.approx(q["true"].max())
    assert final["top10"] == pytest.approx(np.sort(q["true"])[-10:].mean())
    assert (run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-running into a finished folder is refused; --resume is a no-op that returns the same result
    assert main(["--task", "ackley-manifold", "--method", "pretrained", "--budget", "200", "--seed", "1",
                 "--out", str(tmp_path), *FAST]) == 2
    assert main(["--task", "ackley-manifold", "--method", "pretrained", "--budget", "200", "--seed", "1",
                 "--out", str(tmp_path), "--resume", *FAST]) == 0


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--task", "nope"], r"unknown task 'nope'; allowed: .*ackley"),
        (["--method", "nope"], r"unknown method 'nope'; allowed: .*pretrained"),
        (["--budget", "0"], r"budget must be a positive integer, got '0'"),
        (["--budget", "abc"], r"budget must be a positive integer, got 'abc'"),
        (["--seed", "-3"], r"seed must be a non-negative integer, got '-3'"),
        (["--set", "novalue"], r"--set expects key=value, got 'novalue'"),
        (["--set", "bogus=1"], r"unknown setting\(s\) 'bogus'.*allowed:"),
        (["--set", "run.nope=1"], r"unknown run setting 'nope'; allowed: rounds"),
        (["--set", "task.dim=3"], r"unknown override\(s\) 'dim' for task 'levy'"),
    ],
)
def test_bad_cli_values_give_one_line_errors(tmp_path, capsys, args, pattern):
    base = {"--task": "levy", "--method": "pretrained", "--budget": "100", "--out": str(tmp_path)}
    argv = []
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    with pytest.raises(SystemExit) if args[0] in ("--budget", "--seed") else _no_raise():
        code = main(argv + args)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    import re

    assert re.search(pattern, err), err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_unwritable_out_folder_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["--task", "levy", "--method", "pretrained", "--budget", "10", "--out", str(blocker / "sub")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not writable" in err and str(blocker) in err


def test_user_agent_plugs_in_by_module_path(tmp_path):
    r = _run_cli(["--task", "levy", "--method", "test_run:HillClimbAgent", "--budget", "120", "--out",
                  str(tmp_path), "--set", "step=0.3", *FAST])
    assert r.returncode == 0, r.stderr
    run = tmp_path / "levy__test_run.HillClimbAgent__b120__s0"
    final = json.loads((run / "final.json").read_text())
    assert final["queries_used"] == 120 and np.isnan(final["path_kl"])
    assert json.loads((run / "config.json").read_text())["agent"] == {"step": 0.3}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    args = ["--task", "rastrigin-manifold", "--method", "test_run:HillClimbAgent", "--budget", "150", *FAST]
    full = _run_cli(args + ["--out", str(tmp_path / "a")])
    assert full.returncode == 0, full.stderr
    killed = _run_cli(args + ["--out", str(tmp_path / "b"), "--fault", "crash_after_round=2"])
    assert killed.returncode == 17, killed.stderr
    name = "rastrigin-manifold__test_run.HillClimbAgent__b150__s0"
    assert not (tmp_path / "b" / name / "final.json").exists()
    assert len((tmp_path / "b" / name / "rounds.jsonl").read_text().splitlines()) == 3
    # without --resume an unfinished folder is refused
    again = _run_cli(args + ["--out", str(tmp_path / "b")])
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = _run_cli(args + ["--out", str(tmp_path / "b"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    fa = json.loads((tmp_path / "a" / name / "final.json").read_text())
    fb = json.loads((tmp_path / "b" / name / "final.json").read_text())
    for d in (fa, fb):
        for k in (*TIMING_KEYS, "run_dir"):
            d.pop(k, None)
    assert fa == fb
    qa = pd.read_csv(tmp_path / "a" / name / "queries.csv")
    qb = pd.read_csv(tmp_path / "b" / name / "queries.csv")
    pd.testing.assert_frame_equal(qa, qb)

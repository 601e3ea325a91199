"""Faults a real black box produces: NaN and ±inf answers are recorded and no method crashes (the proxy
ignores them); an oracle that raises is retried without charging twice; a corrupt journal is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
import math
from sqdf_bbo.tasks.synthetic import SyntheticTask

class FlakyLevy(SyntheticTask):
    """levy whose oracle answers NaN for every 7th design and +inf for every 11th, and raises on its 2nd call."""
    def __init__(self, **kw):
        super().__init__("levy", **kw)
        self.calls = 0
    def evaluate_true(self, designs):
        v = super().evaluate_true(designs)
        if designs.shape[0] == 24:  # the harness's free evaluation batches (run.n_eval) stay clean
            return v
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("instrument busy")
        v[::7] = math.nan
        v[3::11] = math.inf
        return v

def make_task(**kw):
    return FlakyLevy(**kw)
'''


@pytest.mark.parametrize("method", ["sqdf", "seiko", "ddpo", "best-of-n"])
def test_nan_inf_answers_and_a_raising_oracle(tmp_path, method):
    (tmp_path / "flaky.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--task", "flaky:make_task", "--method", method,
                        "--budget", "96", "--out", str(tmp_path), "--no-progress", "--set", "num_steps=4",
                        "--set", "proxy_epochs=3", "--set", "run.n_eval=24", "--set", "run.batch_size=16",
                        "--set", "run.oracle_retry_wait_s=0"]
                       + ([] if method == "best-of-n" else ["--set", "updates_per_round=2"]),
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    folder = tmp_path / f"flaky.make_task__{method}__b96__s0"
    q = pd.read_csv(folder / "queries.csv")
    assert len(q) == 96  # the raising call was retried, and charged once
    assert q["true"].isna().sum() > 0 and (q["true"] == float("inf")).sum() > 0
    sizes = json.loads((folder / "config.json").read_text())["round_sizes"]
    assert len((folder / "journal.jsonl").read_text().splitlines()) == sum(-(-s // 16) for s in sizes)
    final = json.loads((folder / "final.json").read_text())
    assert final["nonfinite_values"] == int((~q["true"].apply(lambda v: pd.notna(v) and abs(v) < float("inf"))).sum())
    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    assert rounds[1]["train"]["proxy_dropped_nonfinite"] > 0


def test_corrupt_journal_is_a_clear_error(tmp_path):
    from sqdf_bbo.journal import QueryJournal

    path = tmp_path / "journal.jsonl"
    path.write_text('{"round": 1, "batch": 0}\nnot json\n{"round": 1, "batch": 1}\n')
    with pytest.raises(ValueError, match="corrupt at line 2"):
        QueryJournal(path)


# ---- simulated kills: the FaultInjection object (RunConfig.faults) ----------------------------------------
class Killed(Exception):
    pass


def _killed_state(folder: Path) -> dict:
    """What a killed run left: its finished rounds (no timings), journal batches and newest checkpoint."""
    from sqdf_bbo import checkpoint

    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("_s") and k != "phase_wall_s"}  # noqa: E731
    desc, tensors = checkpoint.load(folder / "checkpoint", "state")
    st = checkpoint.decode(desc["run"], "run", tensors)
    return {"rounds": [strip(r) for r in rounds], "journal": len((folder / "journal.jsonl").read_text().splitlines()),
            "ckpt_id": st.ckpt_id, "queries": len(st.queries), "final": (folder / "final.json").exists()}


@pytest.mark.parametrize("fault", ["crash_after_round=1", "crash_after_checkpoint=2", "crash_after_queries=12"])
def test_fault_injection_kills_the_same_from_the_object_and_the_option(tmp_path, monkeypatch, fault):
    """The same kill (status 17, the same folder left behind) from the object in run_experiment and from
    the command line's --fault; the former SQDF_BBO_CRASH_AFTER_* environment variables do nothing."""
    from sqdf_bbo.harness.config import FaultInjection
    from sqdf_bbo.run import main, run_experiment

    codes = []

    def kill(code):
        codes.append(code)
        raise Killed(code)

    monkeypatch.setattr(os, "_exit", kill)
    key, value = fault.split("=")
    argv = ["--task", "levy", "--method", "random", "--budget", "40", "--no-progress", "--set", "run.rounds=2",
            "--set", "run.n_eval=8", "--set", "run.batch_size=8"]
    with pytest.raises(Killed):
        run_experiment("levy", "random", budget=40, out=str(tmp_path / "object"),
                       run_settings={"rounds": 2, "n_eval": 8, "batch_size": 8},
                       faults=FaultInjection(**{key: int(value)}))
    with pytest.raises(Killed):
        main([*argv, "--out", str(tmp_path / "option"), "--fault", fault])
    monkeypatch.setenv("SQDF_BBO_" + key.upper(), value)
    assert main([*argv, "--out", str(tmp_path / "environ")]) == 0
    monkeypatch.delenv("SQDF_BBO_" + key.upper())
    assert codes == [17, 17]
    states = [_killed_state(next((tmp_path / d).iterdir())) for d in ("object", "option")]
    assert states[0] == states[1] and not states[0]["final"]
    expected = {"crash_after_round": (2, 3), "crash_after_checkpoint": (1, 2), "crash_after_queries": (1, 1)}[key]
    assert (len(states[0]["rounds"]), states[0]["ckpt_id"]) == expected
    if key == "crash_after_queries":  # the journal holds the answers bought before the kill, no checkpoint yet
        assert states[0]["journal"] == 2 and states[0]["queries"] == 0
    assert main([*argv, "--out", str(tmp_path / "option"), "--resume"]) == 0  # and the folder resumes


def test_fault_injection_refuses_unknown_faults():
    from sqdf_bbo.harness.config import CLIError, FaultInjection

    assert not FaultInjection().any and FaultInjection.parse(["crash_after_round=2"]).crash_after_round == 2
    with pytest.raises(CLIError, match="unknown fault"):
        FaultInjection.parse(["crash_after_lunch=1"])
    with pytest.raises(CLIError, match="must be an integer"):
        FaultInjection(crash_after_round="1")

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

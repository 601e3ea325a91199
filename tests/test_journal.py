"""The query journal: a run killed in the middle of a round's queries and resumed never asks the oracle
twice, ends with the same queries and metrics as an uninterrupted run, and refuses a journal that does not
match what the resumed agent proposes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
import os
import torch
from sqdf_bbo.tasks import RunDefaults, Task, TaskInfo

class LoggedTask(Task):
    """-||x - 0.3||^2 on [-1, 1]^3; every design the oracle scores is counted in $ORACLE_LOG."""
    noise_std = 0.05
    def __init__(self):
        self.info = TaskInfo(name="logged", tier="vector", design_shape=(3,), make_backbone=None,
                             features=torch.nn.Identity(), feature_dim=3,
                             bounds=(-torch.ones(3), torch.ones(3)), run_defaults=RunDefaults(batch_size=8, n_eval=16))
    def evaluate_true(self, designs):
        if designs.shape[0] != 16:  # evaluation batches (free, 16 designs) are not oracle queries
            with open(os.environ["ORACLE_LOG"], "a") as f:
                f.write(f"{designs.shape[0]}\\n")
        return -((designs.double() - 0.3) ** 2).sum(1)

def make_task(**kw):
    return LoggedTask(**kw)
'''


def run(tmp: Path, out: str, log: str, *extra, crash=None, method="random"):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT)]), ORACLE_LOG=str(tmp / log))
    if crash is not None:
        extra = (*extra, "--fault", f"crash_after_queries={crash}")
    return subprocess.run([sys.executable, "-m", "sqdf_bbo.run", "--task", "jtasks:make_task", "--method", method,
                           "--budget", "60", "--out", str(tmp / out), "--no-progress", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def oracle_queries(path: Path) -> int:
    return sum(int(x) for x in path.read_text().split()) if path.exists() else 0


@pytest.mark.parametrize("crash", [4 + 8, 4 + 8 + 16 + 8])  # inside round 2 (sizes 4, 8, 16, 32), inside round 4
def test_kill_mid_round_resume_rebuys_nothing_and_matches(tmp_path, crash):
    (tmp_path / "jtasks.py").write_text(PLUGIN)
    ref = run(tmp_path, "ref", "ref.log")
    assert ref.returncode == 0, ref.stderr
    assert oracle_queries(tmp_path / "ref.log") == 60
    killed = run(tmp_path, "cut", "cut.log", crash=crash)
    assert killed.returncode == 17
    resumed = run(tmp_path, "cut", "cut.log", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert oracle_queries(tmp_path / "cut.log") == 60  # every query paid exactly once across kill and resume
    folder = "jtasks.make_task__random__b60__s0"
    assert (tmp_path / "ref" / folder / "queries.csv").read_bytes() == (tmp_path / "cut" / folder / "queries.csv").read_bytes()
    a = json.loads((tmp_path / "ref" / folder / "final.json").read_text())
    b = json.loads((tmp_path / "cut" / folder / "final.json").read_text())
    for k in ("eval_reward", "best_so_far", "top10", "queries_used"):
        assert a[k] == b[k], k


def test_mismatching_journal_is_refused_and_torn_line_ignored(tmp_path):
    """An edited entry breaks the hash chain; a consistently re-chained entry for other designs (as if the
    code changed what the agent proposes) is refused by the designs check."""
    from sqdf_bbo.journal import entry_hash

    (tmp_path / "jtasks.py").write_text(PLUGIN)
    assert run(tmp_path, "cut", "cut.log", crash=12).returncode == 17
    journal = tmp_path / "cut" / "jtasks.make_task__random__b60__s0" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["designs_sha256"] = "0" * 64
    journal.write_text("\n".join(lines[:-1] + [json.dumps(entry)]) + "\n" + '{"round": 9, "bat')  # + a torn line
    p = run(tmp_path, "cut", "cut.log", "--resume")
    assert p.returncode == 2 and f"was edited at line {len(lines)}" in p.stderr, p.stderr
    entry["hash"] = entry_hash(entry)
    journal.write_text("\n".join(lines[:-1] + [json.dumps(entry)]) + "\n" + '{"round": 9, "bat')
    journal.with_name("journal.head").write_text(json.dumps({"entries": len(lines), "hash": entry["hash"]}))
    p = run(tmp_path, "cut", "cut.log", "--resume")
    assert p.returncode == 2 and "proposes other designs than the query journal records" in p.stderr, p.stderr


def test_a_torn_last_line_is_dropped_so_later_appends_stay_readable(tmp_path):
    """A kill during a journal write leaves a torn last line; loading drops it, the next append starts a
    clean line, and a second resume reads every entry (no merged, corrupt line)."""
    import numpy as np
    import torch

    from sqdf_bbo.journal import QueryJournal

    path = tmp_path / "journal.jsonl"
    j = QueryJournal(path)
    j.reset()
    x = torch.zeros(2, 3)
    j.append(1, 0, 0, x, np.zeros(2), np.zeros(2), {"q": 2})
    with open(path, "a") as f:
        f.write('{"round": 1, "batch": 1, "sta')  # the kill
    j2 = QueryJournal(path)
    assert set(j2.entries) == {(1, 0)}
    j2.append(1, 1, 2, x, np.ones(2), np.ones(2), {"q": 4})
    j3 = QueryJournal(path)
    assert set(j3.entries) == {(1, 0), (1, 1)} and j3.get(1, 1)["observed"] == [1.0, 1.0]

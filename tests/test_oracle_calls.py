"""Each query is scored by the oracle exactly once: the env hands the harness its noise-free value."""
from __future__ import annotations

import json

import pandas as pd
import torch

from sqdf_bbo.run import main
from sqdf_bbo.tasks import RunDefaults, Task, TaskInfo, register_task


class CountingTask(Task):
    """-‖x‖² on [-1, 1]^2, counting every design the oracle scores."""

    noise_std = 0.1

    def __init__(self):
        self.calls = 0
        self.info = TaskInfo(name="counting", tier="vector", design_shape=(2,), make_backbone=None,
                             features=torch.nn.Identity(), feature_dim=2,
                             bounds=(-torch.ones(2), torch.ones(2)), run_defaults=RunDefaults(batch_size=8))

    def evaluate_true(self, designs):
        self.calls += len(designs)
        return -(designs.double() ** 2).sum(1)


def test_each_query_scored_once(tmp_path):
    made = []
    register_task("counting-once", lambda **kw: made.append(CountingTask(**kw)) or made[-1])
    assert main(["--task", "counting-once", "--method", "random", "--budget", "40", "--out", str(tmp_path),
                 "--no-progress", "--set", "run.n_eval=16"]) == 0
    task = made[-1]
    rounds = len(json.loads((tmp_path / "counting-once__random__b40__s0" / "config.json").read_text())["round_sizes"])
    assert task.calls == 40 + 16 * (rounds + 1)  # every query once, plus the free evaluations (round 0 too)
    q = pd.read_csv(tmp_path / "counting-once__random__b40__s0" / "queries.csv")
    torch.testing.assert_close(torch.tensor(q["true"].to_numpy()),
                               -(torch.tensor(q[["x0", "x1"]].to_numpy()) ** 2).sum(1), rtol=1e-6, atol=1e-6)


def test_run_experiment_library_entry_point_matches_the_cli(tmp_path):
    from sqdf_bbo import run_experiment

    a = run_experiment("levy", "random", budget=32, seed=3, out=str(tmp_path / "lib"), run_settings={"n_eval": 16})
    assert main(["--task", "levy", "--method", "random", "--budget", "32", "--seed", "3", "--out", str(tmp_path / "cli"),
                 "--no-progress", "--set", "run.n_eval=16"]) == 0
    b = json.loads((tmp_path / "cli" / "levy__random__b32__s3" / "final.json").read_text())
    assert a["eval_reward"] == b["eval_reward"] and a["best_so_far"] == b["best_so_far"]
    import pytest

    with pytest.raises(ValueError, match="setting gamma=2"):
        run_experiment("levy", "sqdf", budget=32, out=str(tmp_path / "bad"), gamma=2)
    assert not (tmp_path / "bad").exists()

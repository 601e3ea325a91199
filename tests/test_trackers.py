"""Optional trackers: run.tracker=tensorboard mirrors every round's metrics and sample grid; a tracker whose
package is missing is refused when the run is built."""
from __future__ import annotations

import importlib.util
import json

import pytest

from sqdf_bbo.run import main


def test_tensorboard_mirrors_each_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["--task", "levy", "--method", "sqdf", "--budget", "64", "--out", str(tmp_path), "--no-progress",
                 "--set", "num_steps=4", "--set", "updates_per_round=2", "--set", "proxy_epochs=2",
                 "--set", "run.n_eval=16", "--set", "run.tracker=tensorboard"]) == 0
    folder = tmp_path / "levy__sqdf__b64__s0"
    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    rounds = [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]
    ev = acc.Scalars("eval_reward")
    assert [e.step for e in ev] == [r["queries_used"] for r in rounds]
    assert [round(e.value, 4) for e in ev] == [round(r["eval_reward"], 4) for r in rounds]
    assert "train/loss" in acc.Tags()["scalars"]
    assert len(acc.Images("samples")) == len(rounds) - 1  # a grid after every round (none before round 1)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="only meaningful where wandb is absent")
def test_missing_tracker_package_is_refused_before_any_work(tmp_path, capsys):
    assert main(["--task", "levy", "--method", "random", "--budget", "8", "--out", str(tmp_path / "o"),
                 "--set", "run.tracker=wandb"]) == 2
    assert "run.tracker=wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["--task", "levy", "--method", "random", "--budget", "8", "--out", str(tmp_path / "o"),
                 "--set", "run.tracker=mlflow"]) == 2

"""Every baseline runs end to end from the CLI on a synthetic task (tiny settings) and records its
hyperparameters, including --set overrides, in config.json."""
from __future__ import annotations

import json

import pytest

from sqdf_bbo.agents import METHODS, resolve_method
from sqdf_bbo.run import main

BASELINES = ["ddpo", "ddpo-sf", "alignprop", "draft", "draft-k", "draft-1", "draft-lv", "adjoint-matching", "seiko",
             "raft", "diffusion-nft"]
TINY = ["--budget", "40", "--no-progress", "--set", "run.rounds=2", "--set", "run.n_eval=8", "--set",
        "run.batch_size=20", "--set", "task.num_steps=3", "--set", "proxy_epochs=2", "--set", "proxy_heads=2",
        "--set", "updates_per_round=1", "--set", "train_batch=4", "--set", "lora_rank=1"]
EXTRA = {"draft-k": {"K": 2}, "ddpo": {"ppo_minibatch": 2, "num_inner_epochs": 2}, "seiko": {"kl_reference": "pretrained"},
         "adjoint-matching": {"alpha": 0.5}, "alignprop": {"truncation": "uniform"}, "draft-lv": {"n_lv": 3},
         "raft": {"samples_per_iteration": 10, "selection": "local"},
         "diffusion-nft": {"nft_beta": 0.1, "timestep_fraction": 0.5}}


def test_every_baseline_is_registered():
    for m in BASELINES:
        assert m in METHODS
        cls = resolve_method(m)
        assert cls.__module__.startswith("baselines.")


@pytest.mark.parametrize("method", BASELINES)
def test_cli_resolves_and_records_settings(tmp_path, method):
    """Every baseline's --set overrides are validated and land in the config record (no run)."""
    from sqdf_bbo.run import Run, build_parser

    extra = EXTRA.get(method, {})
    argv = ["--task", "levy", "--method", method, "--out", str(tmp_path)] + TINY
    for k, v in extra.items():
        argv += ["--set", f"{k}={v}"]
    rec = Run(build_parser().parse_args(argv)).config_record()
    assert rec["method"] == method and rec["agent"]["train_batch"] == 4
    for k, v in extra.items():
        assert rec["agent"][k] == v
    assert set(resolve_method(method).default_config) == set(rec["agent"])


@pytest.mark.parametrize("method", ["draft-k", "seiko", "raft", "diffusion-nft"])
def test_cli_run_records_config(tmp_path, method):
    extra = EXTRA.get(method, {})
    argv = ["--task", "levy", "--method", method, "--out", str(tmp_path)] + TINY
    for k, v in extra.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    run_dir = next(tmp_path.iterdir())
    cfg = json.loads((run_dir / "config.json").read_text())
    agent_cfg = cfg["agent"]
    assert agent_cfg["train_batch"] == 4 and agent_cfg["num_steps"] == 3
    for k, v in extra.items():
        assert agent_cfg[k] == v
    final = json.loads((run_dir / "final.json").read_text())
    assert final["queries_used"] == 40


def test_cli_rejects_bad_baseline_setting(tmp_path, capsys):
    rc = main(["--task", "levy", "--method", "draft-k", "--out", str(tmp_path), "--set", "K=0"] + TINY)
    assert rc == 2
    assert "K must be" in capsys.readouterr().err

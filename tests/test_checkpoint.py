"""Checkpoints without pickle (sqdf_bbo/checkpoint.py): round trips of every kind of state, every built-in
method killed after a round and resumed to the same result, corrupted files and foreign state refused."""
from __future__ import annotations

import json
import re
import math
import os
import random

import numpy as np
import pandas as pd
import pytest
import torch

from sqdf_bbo import checkpoint
from sqdf_bbo.agents import METHODS
from sqdf_bbo.run import main

TIMING_KEYS = ("wall_time_s", "peak_mem_mb", "round_wall_s", "run_dir")


def test_round_trip_of_every_kind(tmp_path):
    g = torch.Generator().manual_seed(3)
    torch.rand(5, generator=g)
    tree = {"none": None, "flag": True, "n": 7, "x": 0.25, "nan": float("nan"), "inf": -math.inf, "s": "hi",
            "t": torch.arange(6.0).reshape(2, 3), "gen": g, "np": np.arange(5, dtype=np.uint32),
            "dtype": torch.bfloat16, "nested": {"a": [1, (2.0, "b")], "t": torch.ones(2, dtype=torch.int64)},
            "module": torch.nn.Linear(3, 2), "py_rng": random.getstate(), "np_rng": np.random.get_state()}
    checkpoint.save(tmp_path, "s", tree)
    desc, tensors = checkpoint.load(tmp_path, "s")
    out = {k: checkpoint.decode(d, k, tensors, torch.nn.Linear(3, 2) if k == "module" else None) for k, d in desc.items()}
    assert out["none"] is None and out["flag"] is True and out["n"] == 7 and out["s"] == "hi"
    assert math.isnan(out["nan"]) and out["inf"] == -math.inf and out["dtype"] is torch.bfloat16
    torch.testing.assert_close(out["t"], tree["t"])
    assert torch.equal(torch.rand(4, generator=out["gen"]), torch.rand(4, generator=g))  # same stream
    assert out["np"].dtype == np.uint32 and out["np"].tolist() == [0, 1, 2, 3, 4]
    assert out["nested"]["a"] == [1, (2.0, "b")]
    for a, b in zip(out["module"].parameters(), tree["module"].parameters()):
        torch.testing.assert_close(a, b)
    random.setstate(out["py_rng"])
    np.random.set_state(out["np_rng"])
    # only JSON and safetensors on disk
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]


def test_unknown_objects_are_refused_when_saving(tmp_path):
    class Opaque:
        pass

    with pytest.raises(checkpoint.CheckpointError, match="cannot checkpoint agent.thing: a .*Opaque"):
        checkpoint.save(tmp_path, "s", {"agent": {"thing": Opaque()}})


def test_corrupted_truncated_and_foreign_checkpoints_give_clear_errors(tmp_path):
    checkpoint.save(tmp_path, "s", {"t": torch.ones(3), "m": torch.nn.Linear(2, 2)})
    js = tmp_path / "s.json"
    rec = json.loads(js.read_text())
    tfile = tmp_path / rec["tensors"]
    data = tfile.read_bytes()
    tfile.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
        checkpoint.load(tmp_path, "s")
    tfile.write_bytes(data)
    desc, tensors = checkpoint.load(tmp_path, "s")
    with pytest.raises(checkpoint.CheckpointError, match="does not match the current code|shape"):
        checkpoint.decode(desc["m"], "m", tensors, torch.nn.Linear(2, 3))
    rec["tree"]["o"] = {"k": "obj", "class": "os.system", "v": {}}  # a class the code does not allow
    js.write_text(json.dumps(rec))
    desc, tensors = checkpoint.load(tmp_path, "s")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpointable class"):
        checkpoint.decode(desc["o"], "o", tensors)
    js.write_text(js.read_text()[:40])
    with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
        checkpoint.load(tmp_path, "s")


def test_a_failed_write_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, "s", {"t": torch.zeros(2)})
    import sqdf_bbo.checkpoint as ck

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "atomic_write_bytes", full_disk)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, "s", {"t": torch.ones(2)})
    monkeypatch.undo()
    desc, tensors = checkpoint.load(tmp_path, "s")
    torch.testing.assert_close(checkpoint.decode(desc["t"], "t", tensors), torch.zeros(2))


TINY = ["--budget", "24", "--no-progress", "--set", "run.rounds=3", "--set", "run.n_eval=6", "--set",
        "run.batch_size=8", "--set", "task.num_steps=3"]
EXTRA = {  # each method's smallest settings (only keys it has)
    "proxy_epochs": 2, "proxy_heads": 2, "updates_per_round": 1, "train_batch": 4, "lora_rank": 1,
    "on_policy_batch": 4, "buffer_size": 16, "oversample": 2, "candidates": 2, "particles": 2, "kl_samples": 4,
    "samples_per_iteration": 8, "n_candidates": 50, "q_chunk": 2, "num_restarts": 1, "raw_samples": 8,
    "maxiter": 5, "mc_samples": 8, "ppo_minibatch": 2, "K": 2, "n_lv": 2, "timestep_fraction": 0.5}


def _argv(method: str, out) -> list[str]:
    from sqdf_bbo.agents import resolve_method

    cfg = resolve_method(method).default_config
    argv = ["--task", "levy", "--method", method, "--out", str(out), *TINY]
    for k, v in EXTRA.items():
        if k in cfg:
            argv += ["--set", f"{k}={v}"]
    return argv


class Killed(Exception):
    pass


def assert_same_run(run_a, run_b) -> None:
    """final.json (timings aside) and queries.csv of two run folders agree."""
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (run_a, run_b))
    for d in (fa, fb):
        for k in TIMING_KEYS:
            d.pop(k, None)
    assert json.dumps(fa, sort_keys=True) == json.dumps(fb, sort_keys=True)
    pd.testing.assert_frame_equal(pd.read_csv(run_a / "queries.csv"), pd.read_csv(run_b / "queries.csv"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_to_the_same_result(tmp_path, monkeypatch, method):
    assert main(_argv(method, tmp_path / "a")) == 0

    def kill(code):
        raise Killed(code)

    monkeypatch.setattr(os, "_exit", kill)
    with pytest.raises(Killed):
        main(_argv(method, tmp_path / "b") + ["--fault", "crash_after_round=1"])
    run_b = next((tmp_path / "b").iterdir())
    assert not list(run_b.rglob("*.pt"))  # no pickle anywhere in the run folder
    assert main(_argv(method, tmp_path / "b") + ["--resume"]) == 0
    assert_same_run(next((tmp_path / "a").iterdir()), run_b)


def test_resume_refuses_state_of_other_code(tmp_path, monkeypatch, capsys):
    """A checkpoint whose agent state names an attribute the current agent lacks (or lacks one it has)."""
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    with pytest.raises(Killed):
        main(_argv("best-of-n", tmp_path) + ["--fault", "crash_after_round=1"])
    folder = next(tmp_path.iterdir()) / "checkpoint"
    agent_json = next(folder.glob("agent_rank0_ckpt*.json"))
    rec = json.loads(agent_json.read_text())
    rec["tree"]["agent"]["v"].pop("round")
    agent_json.write_text(json.dumps(rec))
    assert main(_argv("best-of-n", tmp_path) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint lacks agent state ['round']" in err[0]


@pytest.mark.parametrize("method", ["sqdf", "seiko", "raft", "turbo"])
@pytest.mark.parametrize("kill_at", [2, 4, 7])
def test_kill_right_after_any_checkpoint_resumes_exactly(tmp_path, monkeypatch, method, kill_at):
    """Checkpoints come after round 0's evaluation, after each query phase and every optimizer step here
    (run.checkpoint_every=1); a kill after any of them resumes to the uninterrupted result."""
    extra = ["--set", "run.checkpoint_every=1"]
    if method in ("sqdf", "seiko"):
        extra += ["--set", "updates_per_round=3"]
    assert main(_argv(method, tmp_path / "a") + extra) == 0
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    with pytest.raises(Killed):
        main(_argv(method, tmp_path / "b") + extra + ["--fault", f"crash_after_checkpoint={kill_at}"])
    assert main(_argv(method, tmp_path / "b") + extra + ["--resume"]) == 0
    run_a, run_b = next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir())
    assert_same_run(run_a, run_b)
    ra = [json.loads(x) for x in (run_a / "rounds.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (run_b / "rounds.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if "wall" not in k and k != "train"}  # noqa: E731
    assert [strip(r) for r in ra] == [strip(r) for r in rb]
    assert [{k: v for k, v in r["train"].items() if not k.endswith("_s")} for r in ra] == \
        [{k: v for k, v in r["train"].items() if not k.endswith("_s")} for r in rb]


def test_kill_9_at_random_moments_then_resume_is_byte_identical(tmp_path):
    """Property test (issue 16): SIGKILL a real process at seeded random moments, resume each time, until
    the run finishes; queries.csv and the final metrics equal an uninterrupted run's, and the oracle was
    never asked twice (every query index appears once in the journal)."""
    import signal
    import subprocess
    import sys
    import time

    argv = _argv("sqdf", tmp_path / "a") + ["--set", "run.checkpoint_every=1", "--set", "updates_per_round=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # both runs in fresh processes with the same threads (floats)
    t0 = time.monotonic()
    assert subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *argv], env=env, capture_output=True).returncode == 0
    whole = time.monotonic() - t0  # the uninterrupted run's wall time, start-up included
    out_b = tmp_path / "b"
    argv_b = _argv("sqdf", out_b) + ["--set", "run.checkpoint_every=1", "--set", "updates_per_round=4"]
    rng = random.Random(0)
    kills = 0
    for attempt in range(8):
        cmd = [sys.executable, "-m", "sqdf_bbo.run", *argv_b] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        if attempt < 3:
            time.sleep(rng.uniform(0.3, 0.9) * whole)  # somewhere inside the run, whatever this machine's speed
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    assert kills >= 1
    run_a, run_b = next((tmp_path / "a").iterdir()), next(out_b.iterdir())
    assert_same_run(run_a, run_b)
    assert (run_a / "queries.csv").read_bytes() == (run_b / "queries.csv").read_bytes()
    entries = [json.loads(x) for x in (run_b / "journal.jsonl").read_text().splitlines() if x.strip()]
    starts = [e["start"] for e in entries]
    assert len(starts) == len(set(starts)) and sum(e["n"] for e in entries) == 24  # each query bought once


@pytest.mark.parametrize("item,pattern", [
    ("run.checkpoint_every=-1", r"run.checkpoint_every=-1 is out of range: must be >= 0"),
    ("run.tracker=mlflow", r"run.tracker='mlflow' must be one of 'none', 'tensorboard', 'wandb'"),
    ("run.oracle_retry_wait_s=1e9", r"run.oracle_retry_wait_s=1000000000.0 is out of range"),
    ("run.n_eval=abc", r"run.n_eval='abc' must be int or None"),
])
def test_run_settings_are_typed_and_checked_before_anything(tmp_path, capsys, item, pattern):
    import re

    from benchmarks.run.sweep import SweepError, validate

    assert main(["--task", "levy", "--method", "random", "--budget", "8", "--out", str(tmp_path / "o"),
                 "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(pattern, err[0]), err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SweepError, match=pattern):  # the sweep refuses it before launching any run
        validate(["levy"], ["random"], [8], [item], {})


def test_time_based_mid_round_checkpoints(tmp_path, monkeypatch):
    """run.checkpoint_every_s: with the step count off, optimizer steps that end after the interval save
    mid-round checkpoints (a fake clock advances 1 s per reading), and the results do not depend on them."""
    import sqdf_bbo.run as run_mod

    saves = []
    real_save = run_mod.Run.save_checkpoint

    def counting_save(self, st, agent):
        saves.append(self.args.out)
        return real_save(self, st, agent)

    monkeypatch.setattr(run_mod.Run, "save_checkpoint", counting_save)
    clock = iter(range(10**6))
    monkeypatch.setattr(run_mod.time, "monotonic", lambda: float(next(clock)))
    common = ["--set", "updates_per_round=6", "--set", "run.checkpoint_every=0"]
    assert main(_argv("sqdf", tmp_path / "a") + common + ["--set", "run.checkpoint_every_s=0"]) == 0
    assert main(_argv("sqdf", tmp_path / "b") + common + ["--set", "run.checkpoint_every_s=2.5"]) == 0
    n_a, n_b = saves.count(str(tmp_path / "a")), saves.count(str(tmp_path / "b"))
    n_rounds = len(json.loads(next((tmp_path / "a").iterdir()).joinpath("config.json").read_text())["round_sizes"])
    assert n_a == 1 + 2 * n_rounds  # round 0, then per round: after its query phase and at its end
    assert n_b >= n_a + n_rounds  # at least one mid-round checkpoint per round
    assert_same_run(next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir()))


def test_kill_while_proposing_a_round_resumes_exactly(tmp_path, monkeypatch, capsys):
    """A long query-phase proposal is drawn in sample_batch chunks with time-based checkpoints between
    them (a fake clock: 1 s per reading, run.checkpoint_every_s=2.5); a kill right after one of those
    resumes with the saved designs and generator and ends as the uninterrupted run."""
    import sqdf_bbo.run as run_mod

    proposing_ids = []
    real_save = run_mod.Run.save_checkpoint

    def recording_save(self, st, agent):
        real_save(self, st, agent)
        if st.proposing is not None and self.args.out == str(tmp_path / "a"):
            proposing_ids.append(st.ckpt_id)

    monkeypatch.setattr(run_mod.Run, "save_checkpoint", recording_save)
    clock = iter(range(10**6))
    monkeypatch.setattr(run_mod.time, "monotonic", lambda: float(next(clock)))
    extra = ["--set", "sample_batch=4", "--set", "run.checkpoint_every=0", "--set", "run.checkpoint_every_s=2.5",
             "--set", "updates_per_round=2"]
    assert main(_argv("sqdf", tmp_path / "a") + extra) == 0
    assert proposing_ids, "no checkpoint was written while proposing"
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    with pytest.raises(Killed):  # a kill inside the last round's proposal
        main(_argv("sqdf", tmp_path / "b") + extra + ["--fault", f"crash_after_checkpoint={proposing_ids[-1]}"])
    capsys.readouterr()
    assert main(_argv("sqdf", tmp_path / "b") + extra + ["--resume"]) == 0
    assert re.search(r"resuming round \d+'s proposal at [1-9]\d*/\d+ designs", capsys.readouterr().err)
    assert_same_run(next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir()))


def test_a_resumed_run_checkpoints_after_its_first_step(tmp_path, monkeypatch):
    """Kills in quick succession must not cost the same work twice: a run resumed from the checkpoint after
    a query phase saves again right after its first optimizer step, though neither the step count nor the
    (long) time interval asks for it; the result is still the uninterrupted run's."""
    import sqdf_bbo.run as run_mod

    extra = ["--set", "updates_per_round=3", "--set", "run.checkpoint_every=0", "--set", "run.checkpoint_every_s=1e6"]
    assert main(_argv("sqdf", tmp_path / "a") + extra) == 0
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    with pytest.raises(Killed):  # after checkpoint 2: round 0's, then round 1's query phase
        main(_argv("sqdf", tmp_path / "b") + extra + ["--fault", "crash_after_checkpoint=2"])
    steps_at_save = []
    real_save = run_mod.Run.save_checkpoint

    def recording_save(self, st, agent):
        progress = getattr(agent, "round_progress", None)
        steps_at_save.append((st.in_round is not None, progress["done"] if progress else None))
        return real_save(self, st, agent)

    monkeypatch.setattr(run_mod.Run, "save_checkpoint", recording_save)
    assert main(_argv("sqdf", tmp_path / "b") + extra + ["--resume"]) == 0
    assert steps_at_save[0] == (True, 1)  # mid-round, after the first step of the resumed round
    assert sum(1 for mid, done in steps_at_save if mid and done) == 1  # and no other mid-round save
    assert_same_run(next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir()))

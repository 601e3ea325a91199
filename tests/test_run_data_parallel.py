"""One run over 2 CPU processes through the production runner (spawned processes joined by gloo, as
accelerate's ``debug_launcher`` does: tests/cpu_launcher.py): process 0 alone spends the budget and writes
the folder, every process ends with the same weights and proxy, batches are split 1/2 per process,
kill-and-resume is exact, and a resume with another number of processes is refused."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch

torch.set_num_threads(1)

SMALL = ["--budget", "48", "--seed", "3", "--no-progress",
         "--set", "run.rounds=2", "--set", "run.n_eval=16", "--set", "run.batch_size=16", "--set", "num_steps=6",
         "--set", "updates_per_round=3", "--set", "proxy_epochs=5", "--set", "train_batch=8"]
SQDF = ["--method", "sqdf", "--set", "on_policy_batch=4", "--set", "buffer_size=32", "--set", "fill_every=1"]


def _launch(argv, crash_after=None, expect_rc=0):
    """Run sqdf_bbo.run.main(argv) in 2 spawned processes; returns None or the exit code that stopped them."""
    from cpu_launcher import launch_on_cpu
    from torch.multiprocessing import ProcessExitedException

    try:
        launch_on_cpu(_worker, args=(argv, crash_after, expect_rc), num_processes=2)
    except ProcessExitedException as e:
        return e.exit_code
    return None


def _worker(argv, crash_after, expect_rc):
    import torch

    torch.set_num_threads(1)
    faults = [] if crash_after is None else ["--fault", f"crash_after_round={crash_after}"]
    from sqdf_bbo.run import main

    rc = main(list(argv) + faults)
    assert rc == expect_rc, rc


def _agents(run_dir):
    """Each rank's agent rebuilt from its checkpoint (sqdf_bbo.run.load_agent), and the checkpoint files."""
    from sqdf_bbo.run import load_agent

    files = sorted((run_dir / "checkpoint").glob("agent_rank*_ckpt*.json"))
    return [load_agent(run_dir, rank) for rank in range(len(files))], files


@pytest.mark.parametrize("method_args", [SQDF, ["--method", "ddpo", "--set", "ppo_minibatch=4"]],
                         ids=["sqdf", "ddpo"])
def test_two_process_run(tmp_path, method_args):
    argv = ["--task", "ackley", *method_args, *SMALL, "--out", str(tmp_path)]
    assert _launch(argv) is None
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["world_size"] == 2 and final["queries_used"] == 48
    assert len(pd.read_csv(run_dir / "queries.csv")) == 48  # one oracle, not one per process
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]

    agents, files = _agents(run_dir)
    assert [f.name.split("_ckpt")[0] for f in files] == ["agent_rank0", "agent_rank1"]  # older ones removed
    a0, a1 = agents
    assert (a0.dp_rank, a1.dp_rank) == (0, 1)
    assert a0.config["train_batch"] == a1.config["train_batch"] == 4  # 8 split over 2 processes
    # same weights everywhere after synchronised steps; they moved away from the pretrained ones
    p0, p1 = a0.trainable_parameters(), a1.trainable_parameters()
    for x, y in zip(p0, p1):
        assert torch.equal(x, y)
    for x, y in zip(a0.optimistic.model.state_dict().values(), a1.optimistic.model.state_dict().values()):
        assert torch.equal(x, y)
    assert a0.global_step == 2 * 3 * (1 if method_args[1] == "sqdf" else 2)
    lora_b = [v for k, v in a0.policy.named_parameters() if "lora_B" in k]  # zero at initialisation
    assert lora_b and any(float(v.detach().abs().max()) > 0 for v in lora_b)
    # the processes sampled different noise: their observed datasets agree, their generators do not
    assert torch.equal(torch.cat(a0.optimistic.values), torch.cat(a1.optimistic.values))
    assert not torch.equal(a0.generator.get_state(), a1.generator.get_state())


def test_two_process_kill_and_resume_is_exact(tmp_path):
    argv = ["--task", "levy", *SQDF, *SMALL]
    assert _launch(argv + ["--out", str(tmp_path / "a")]) is None
    assert _launch(argv + ["--out", str(tmp_path / "b")], crash_after=1) == 17
    (run_b,) = list((tmp_path / "b").iterdir())
    assert not (run_b / "final.json").exists()
    assert len(pd.read_csv(run_b / "queries.csv")) == 16  # round 1 of 16 + 32
    assert _launch(argv + ["--out", str(tmp_path / "b"), "--resume"]) is None
    (run_a,) = list((tmp_path / "a").iterdir())
    pd.testing.assert_frame_equal(pd.read_csv(run_a / "queries.csv"), pd.read_csv(run_b / "queries.csv"))
    fa, fb = (json.loads((d / "final.json").read_text()) for d in (run_a, run_b))
    for key in ("eval_reward", "path_kl", "vendi", "best_so_far", "queries_used"):
        assert fa[key] == fb[key], key

    # a one-process resume of the two-process folder is refused with a clear message
    from sqdf_bbo.run import main

    (run_a / "final.json").unlink()
    assert main(argv + ["--out", str(tmp_path / "a"), "--resume"]) == 2


def test_plugin_without_data_parallel_is_refused(tmp_path, capfd):
    argv = ["--task", "ackley", "--method", "test_run_data_parallel:_NoDP", "--budget", "8",
            "--no-progress", "--set", "run.rounds=1", "--set", "run.batch_size=8", "--out", str(tmp_path)]
    # a plug-in runs isolated by default, and an isolated agent lives in one child process: refused first
    assert _launch(argv, expect_rc=2) is None
    assert "run.isolate=true runs the agent in one child process" in capfd.readouterr().err
    # in process (run.isolate=false) the agent itself must declare data-parallel support
    assert _launch(argv + ["--set", "run.isolate=false"], expect_rc=2) is None
    assert "does not support several processes" in capfd.readouterr().err


from sqdf_bbo.agents import Agent  # noqa: E402


class _NoDP(Agent):
    """A plug-in agent without data-parallel support (sqdf_bbo.distributed.supports is False)."""

    def propose(self, n, generator):
        return torch.zeros(n, *self.task.design_shape)


def test_two_process_stable_diffusion_round(tmp_path):
    """The SD tier (tiny random weights through the production loaders): SQDF with LoRA and the LCM
    consistency model, one round over 2 processes; both end with the same LoRA, which moved."""
    from sqdf_bbo.backbones.sd_random import save_random_weights

    w = save_random_weights(str(tmp_path / "weights"), size="tiny", seed=0)
    task_sets = {"sd_path": w["sd_path"], "clip_path": w["clip_path"], "head_path": w["head_path"],
                 "lcm_lora_path": w["lcm_lora_path"], "num_steps": 3, "n_eval": 4, "batch_size": 4,
                 "device": "cpu"}
    agent_sets = {"lora_rank": 2, "train_batch": 4, "updates_per_round": 1, "proxy_epochs": 2,
                  "proxy_heads": 2, "proxy_batch": 8, "sample_batch": 4, "on_policy_batch": 2,
                  "buffer_size": 8}
    argv = ["--task", "aesthetic-sd", "--method", "sqdf", "--budget", "8", "--no-progress",
            "--set", "run.rounds=1", "--out", str(tmp_path / "runs")]
    for k, v in task_sets.items():
        argv += ["--set", f"task.{k}={v}"]
    for k, v in agent_sets.items():
        argv += ["--set", f"{k}={v}"]
    assert _launch(argv) is None
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "final.json").read_text())["queries_used"] == 8
    assert (run_dir / "samples.png").stat().st_size > 0 and (run_dir / "samples_round1.png").exists()
    (a0, a1), _ = _agents(run_dir)
    assert a0.q_estimator_used == "cm"
    l0, l1 = a0.policy.lora_state_dict(), a1.policy.lora_state_dict()
    assert l0.keys() == l1.keys()
    for k in l0:
        assert torch.equal(l0[k], l1[k]), k
    assert any(float(v.abs().max()) > 0 for k, v in l0.items() if "lora_B" in k)

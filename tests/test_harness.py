"""The harness package (sqdf_bbo/harness/): one RunConfig whether a run is built from the command line or from
run_experiment's keyword arguments, the sqdf-bbo console script's table of commands, the phase callbacks, the
agent's declared evaluation sampler and step callback, and the task's typed defaults (protocol ids unchanged)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ---- one RunConfig from argv and from keyword arguments ---------------------------------------------
def _config_of_run_experiment(monkeypatch, **kw):
    """The RunConfig run_experiment builds (the run itself is not made)."""
    from sqdf_bbo.harness import loop

    seen = []

    class Capture:
        def __init__(self, config, callbacks=None):
            seen.append(config)

        def execute(self):
            return {}

    monkeypatch.setattr(loop, "Run", Capture)
    loop.run_experiment(**kw)
    return seen[0]


def test_run_config_is_the_same_from_argv_and_from_keyword_arguments(monkeypatch):
    from sqdf_bbo.harness.cli import config_from_argv
    from sqdf_bbo.harness.config import FaultInjection, RunConfig

    argv = ["--task", "levy", "--method", "sqdf", "--budget", "40", "--seed", "3", "--out", "o", "--resume",
            "--set", "beta=0.1", "--set", "lr=1e-3", "--set", "proxy=ucb", "--set", "task.noise_std=0.5",
            "--set", "run.rounds=2", "--set", "run.round_sizes=[10, 30]", "--set", "run.checkpoint_every=5",
            "--fault", "crash_after_round=1"]
    from_argv = config_from_argv(argv)
    from_kwargs = _config_of_run_experiment(
        monkeypatch, task="levy", method="sqdf", budget=40, seed=3, out="o", resume=True, progress=True,
        beta=0.1, lr=1e-3, proxy="ucb", task_settings={"noise_std": 0.5},
        run_settings={"rounds": 2, "round_sizes": [10, 30], "checkpoint_every": 5},
        faults=FaultInjection(crash_after_round=1))
    assert isinstance(from_argv, RunConfig) and from_argv == from_kwargs
    assert dict(from_argv.agent_overrides) == {"beta": 0.1, "lr": 1e-3, "proxy": "ucb"}
    assert from_argv.command.startswith("python -m sqdf_bbo.run --task levy") and from_kwargs.command is None
    # values arrive as given, not through repr() and a parser: a float subclass stays a number
    import numpy as np

    cfg = _config_of_run_experiment(monkeypatch, task="levy", budget=8, beta=np.float64(0.25))
    assert cfg.agent_overrides["beta"] == 0.25
    with pytest.raises(TypeError):
        cfg.agent_overrides["beta"] = 1.0  # frozen: read-only overrides


@pytest.mark.parametrize("kw, message", [
    ({"budget": 0}, "budget must be a positive integer"),
    ({"seed": -1}, "seed must be an integer"),
    ({"run_settings": {"bogus": 1}}, "unknown run setting 'bogus'"),
])
def test_run_experiment_refuses_bad_values_before_any_work(tmp_path, kw, message):
    from sqdf_bbo.run import run_experiment

    with pytest.raises(ValueError, match=message):
        run_experiment("levy", "random", **{"budget": 8, "out": str(tmp_path), **kw})
    assert not any(tmp_path.iterdir())


def test_the_run_module_re_exports_what_code_imports_from_it():
    import sqdf_bbo.run as R

    names = ("run_experiment main load_agent Run RunState RunConfig FaultInjection RunCallbacks build_parser "
             "settings_help evaluate_policy curve_summary parse_sets resolve_run_settings round_sizes CLIError "
             "TIMING_KEYS run_folder_name _versions _parse_value check_designs agent_call AgentEscape").split()
    assert [n for n in names if not hasattr(R, n)] == []
    assert R.RunState.__module__ == "sqdf_bbo.run"  # the name checkpoints record


# ---- the console script --------------------------------------------------------------------------------
def test_every_console_command_names_an_importable_main():
    import inspect

    from sqdf_bbo.harness import console

    assert set(console.COMMANDS) == {"run", "sweep", "frontier", "leaderboard", "compare", "report"}
    for name in console.COMMANDS:
        fn = console.resolve(name)
        assert callable(fn) and "argv" in inspect.signature(fn).parameters, name
    from sqdf_bbo.run import main

    assert console.resolve("run") is main
    text = (ROOT / "pyproject.toml").read_text()
    assert 'sqdf-bbo = "sqdf_bbo.harness.console:main"' in text


def test_sqdf_bbo_help_lists_the_commands_one_per_line_and_imports_no_torch():
    from sqdf_bbo.harness import console

    code = ("import sys\nfrom sqdf_bbo.harness.console import main\nrc = main(['--help'])\n"
            "assert 'torch' not in sys.modules, 'the help imported torch'\nsys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for name, (_, text) in console.COMMANDS.items():
        assert sum(1 for x in lines if x.split()[:1] == [name] and text in x) == 1, name
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.harness.console", "run", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0 and "--budget" in p.stdout and "--set KEY=VALUE" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "sqdf_bbo.harness.console", "nonsense"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and "unknown command 'nonsense'" in p.stderr


# ---- phase callbacks -------------------------------------------------------------------------------
@pytest.mark.slow
def test_phase_callbacks_fire_for_every_phase_nested_with_non_negative_times(tmp_path):
    from sqdf_bbo.run import PHASES, RunCallbacks, run_experiment

    events = []

    class Record(RunCallbacks):
        def on_phase_start(self, name):
            events.append(("start", name, None))

        def on_phase_end(self, name, seconds):
            events.append(("end", name, seconds))

    final = run_experiment("levy", "sqdf", budget=24, out=str(tmp_path), callbacks=Record(), num_steps=3,
                           updates_per_round=2, proxy_epochs=2,
                           run_settings={"rounds": 2, "n_eval": 8, "checkpoint_every": 1})
    assert final["queries_used"] == 24
    stack, inside = [], set()
    for kind, name, seconds in events:
        if kind == "start":
            inside.add((stack[-1] if stack else None, name))
            stack.append(name)
        else:
            assert stack.pop() == name and seconds >= 0
    assert not stack
    seen = {name for _, name, _ in events}
    assert seen == set(PHASES), seen ^ set(PHASES)
    assert ("improve", "checkpoint") in inside  # mid-round checkpoints (run.checkpoint_every=1)
    assert sum(1 for kind, name, _ in events if kind == "end" and name == "evaluate") == 3  # rounds 0, 1, 2


# ---- the agent's side: step callback and evaluation sampler ----------------------------------------------
def test_round_steps_report_each_step_to_the_step_callback():
    from sqdf_bbo.agents.sqdf import SQDFAgent
    from sqdf_bbo.harness.callbacks import StepCallback
    from sqdf_bbo.tasks import make_task

    agent = SQDFAgent(make_task("levy").info, {"updates_per_round": 3, "num_steps": 3}, seed=0)
    agent.round_progress = {"stats": {}, "sums": {}, "done": 0}
    seen = []
    agent.step_callback = StepCallback(seen.append)
    assert list(agent.round_steps()) == [0, 1, 2] and seen == [1, 2, 3]
    assert "step_callback" not in agent.state_tree()  # the runner's object is never saved
    agent.step_callback = None
    assert StepCallback.of(None) is None


def test_the_evaluation_sampler_is_declared_by_the_agent():
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.agents.base import EvaluationSampler
    from sqdf_bbo.tasks import make_task

    info = make_task("levy").info
    sqdf = resolve_method("sqdf")(info, {"num_steps": 4}, seed=0)
    s = sqdf.evaluation_sampler()
    assert isinstance(s, EvaluationSampler) and (s.num_steps, s.eta, s.batch) == (4, 1.0, 256)
    assert s.policy is not sqdf.policy  # the merged LoRA copy (sampling_policy)
    own = sqdf.evaluation_sampler({"num_steps": 7, "eta": 0.0, "sample_batch": 8})  # the harness's copy
    assert (own.num_steps, own.eta, own.batch) == (7, 0.0, 8)
    assert resolve_method("best-of-n")(info, {"num_steps": 4}, seed=0).evaluation_sampler() is None  # steers
    assert resolve_method("random")(info, {}, seed=0).evaluation_sampler() is None  # no diffusion policy


# ---- typed task defaults ---------------------------------------------------------------------------
def test_task_defaults_are_typed_and_the_former_dict_is_still_read_and_accepted():
    import torch

    from sqdf_bbo.protocol import task_defaults
    from sqdf_bbo.tasks import RunDefaults, TaskInfo, make_task

    info = make_task("levy", num_steps=20).info
    assert info.run_defaults == RunDefaults(n_eval=256, batch_size=64)
    assert info.agent_defaults == {"num_steps": 20} and info.num_steps == 20
    assert task_defaults(info) == info.defaults_dict() == {"num_steps": 20, "n_eval": 256, "batch_size": 64,
                                                           "agent": {"num_steps": 20}}
    image = make_task("aesthetic").info
    assert callable(image.make_consistency_model) and task_defaults(image) == image.defaults_dict()
    with pytest.raises(TypeError, match="defaults"):  # the former untyped dict is gone: typed fields only
        TaskInfo(name="t", tier="vector", design_shape=(2,), make_backbone=None, features=None, feature_dim=2,
                 defaults={"n_eval": 64})


def test_the_task_part_of_committed_protocol_ids_is_unchanged():
    """Recompute the task inputs of the protocol id of committed run records from the current tasks."""
    from sqdf_bbo import protocol
    from sqdf_bbo.tasks import make_task

    records = sorted((ROOT / "results" / "run_records").glob("*/*/*/config.json"))
    by_task = {}
    for path in records:
        cfg = json.loads(path.read_text())
        if cfg.get("protocol_inputs") and not cfg.get("task_overrides"):
            by_task.setdefault(cfg["task"], cfg)
    assert by_task, "no committed run record with a protocol id"
    for name, cfg in by_task.items():
        task = make_task(name)
        now = protocol.canonical({"name": name, "version": protocol._version(task),
                                  **protocol.task_settings(task, {})})
        assert now == cfg["protocol_inputs"]["task"], name
        assert protocol.task_protocol_of(cfg) == protocol.protocol_id(
            {**{k: cfg["protocol_inputs"][k] for k in ("protocol_version", "assets")}, "task": now})

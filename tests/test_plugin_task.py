"""Plug-in tasks: the "Your own task" code block of docs/extending.md (the README links to it), run as a
user would, from the CLI (``--task mytasks:make_task``), through an installed entry point (``--task branin``),
in a sweep and through ``gymnasium.make``; and the one-line errors of a misbehaving task."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    m = re.search(r"```python\n(# mytasks\.py\n.*?)```", text, re.S)
    assert m, "docs/extending.md has no '# mytasks.py' example"
    return m.group(1)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A folder on PYTHONPATH holding the docs' module and an installed-looking distribution whose
    entry point registers it as task 'branin'; also a module with a broken factory."""
    d = tmp_path_factory.mktemp("plugin")
    (d / "mytasks.py").write_text(readme_example())
    (d / "badtasks.py").write_text("def make_task(**kw):\n    raise RuntimeError('oracle offline')\n"
                                   "def not_a_task(**kw):\n    return 42\n")
    info = d / "mytasks_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mytasks-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sqdf_bbo.tasks]\nbranin = mytasks:make_task\n")
    return d


def run(args: list[str], plugin_path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_path), str(ROOT)]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_readme_task_runs_from_the_cli(plugin_path, tmp_path):
    p = run(["-m", "sqdf_bbo.run", "--task", "mytasks:make_task", "--method", "random", "--budget", "48",
             "--out", str(tmp_path), "--no-progress", "--set", "task.noise_std=0.1"], plugin_path, tmp_path)
    assert p.returncode == 0, p.stderr
    folder = tmp_path / "mytasks.make_task__random__b48__s0"
    final = json.loads((folder / "final.json").read_text())
    q = pd.read_csv(folder / "queries.csv")
    assert len(q) == 48 and {"x0", "x1"} <= set(q.columns)  # 2-D designs logged as columns
    assert -310 < final["best_so_far"] <= -0.397887 + 1e-6  # -Branin on its box: in [-308.1, -0.398]
    assert final["n_valid"] == 64 and json.loads((folder / "config.json").read_text())["task_overrides"] == {"noise_std": 0.1}


def test_entry_point_task_in_cli_sweep_and_gymnasium(plugin_path, tmp_path):
    p = run(["-c", "from sqdf_bbo.tasks import list_tasks; print('branin' in list_tasks())"], plugin_path, tmp_path)
    assert p.stdout.strip() == "True", p.stderr
    p = run(["-m", "benchmarks.run.sweep", "--tasks", "branin,mytasks:make_task", "--methods", "random", "--seeds", "0-1",
             "--budget", "32", "--out", str(tmp_path / "sweep"), "--workers", "1", "--no-progress"], plugin_path, tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    assert len(list((tmp_path / "sweep").glob("*/final.json"))) == 4
    code = ("import gymnasium, numpy as np, sqdf_bbo.envs\n"
            "from gymnasium.utils.env_checker import check_env\n"
            "env = gymnasium.make('sqdf_bbo/branin-v0', budget=40)\n"
            "check_env(env.unwrapped)\n"
            "env.reset(seed=0)\n"
            "_, r, _, _, info = env.step(np.zeros((16, 2), dtype=np.float32) + np.array([9.42478, 2.475], dtype=np.float32))\n"
            "print(len(info['values']), round(float(np.mean(info['values'])), 1))\n")
    p = run(["-c", code], plugin_path, tmp_path)
    assert p.returncode == 0, p.stderr
    n, mean = p.stdout.split()
    assert n == "16" and abs(float(mean) + 0.4) < 0.6  # at a Branin minimiser, noise std 0.5


@pytest.mark.parametrize("task, method, message", [
    ("mytasks:make_task", "sqdf", "has no pretrained diffusion backbone"),
    ("badtasks:make_task", "random", "task 'badtasks:make_task': the factory raised RuntimeError: oracle offline"),
    ("badtasks:not_a_task", "random", "the factory returned int, not a sqdf_bbo.tasks.Task"),
    ("badtasks:nothing", "random", "module 'badtasks' has no callable 'nothing'"),
    ("nomodule:make_task", "random", "cannot import 'nomodule'"),
])
def test_misbehaving_tasks_give_one_line_errors(plugin_path, tmp_path, task, method, message):
    p = run(["-m", "sqdf_bbo.run", "--task", task, "--method", method, "--budget", "16", "--out", str(tmp_path / "o")],
            plugin_path, tmp_path)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "o").exists()


def test_misbehaving_plugin_agent_gives_one_line(plugin_path, tmp_path):
    (plugin_path / "badagents.py").write_text(
        "import torch\nfrom sqdf_bbo.agents import Agent\n"
        "class Raises(Agent):\n    def propose(self, n, generator):\n        raise RuntimeError('my bug')\n")
    p = run(["-m", "sqdf_bbo.run", "--task", "levy", "--method", "badagents:Raises", "--budget", "16",
             "--out", str(tmp_path / "o")], plugin_path, tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "method 'badagents:Raises' raised RuntimeError: my bug" in p.stderr


def test_readme_task_runs_the_bo_agents(plugin_path, tmp_path):
    """A task with its own prior and no backbone of ours runs TuRBO-1 and qLogNEI (issue 17 item 1)."""
    for method, extra in (("turbo", ["--set", "n_candidates=200"]),
                          ("qlognei", ["--set", "q_chunk=4", "--set", "num_restarts=2", "--set", "raw_samples=32",
                                       "--set", "maxiter=20", "--set", "mc_samples=32"])):
        p = run(["-m", "sqdf_bbo.run", "--task", "mytasks:make_task", "--method", method, "--budget", "40",
                 "--out", str(tmp_path), "--no-progress", "--set", "run.n_eval=8", "--set", "run.rounds=3", *extra],
                plugin_path, tmp_path)
        assert p.returncode == 0, p.stderr
        final = json.loads((tmp_path / f"mytasks.make_task__{method}__b40__s0" / "final.json").read_text())
        assert final["queries_used"] == 40 and -310 < final["best_so_far"] <= -0.397887 + 1e-6

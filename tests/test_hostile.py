"""Hostile plug-in agents, edited run folders and bad input (tests/hostile_agents.py): each attack either
changes nothing the harness reports or ends in one 'error: ...' line before any oracle query is charged."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from pathlib import Path

import pytest
import torch

from sqdf_bbo.run import main

LEVY = ["--task", "levy", "--budget", "40", "--no-progress", "--set", "run.n_eval=16", "--set", "run.rounds=2",
        "--set", "run.batch_size=8"]
SMALL = ["--set", "num_steps=4"]


class Killed(Exception):
    pass


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [x for x in err if not x.startswith("resuming")]
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def _rounds(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "rounds.jsonl").read_text().splitlines()]


def _killed_at(monkeypatch, fault: str) -> list[str]:
    """The options of a run killed at ``fault`` (sqdf_bbo.harness.config.FaultInjection, e.g.
    ``crash_after_round=1``); the kill's os._exit raises Killed here instead of ending pytest."""
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    return ["--fault", fault]


# ---- A: nothing the agent receives is shared with the harness ---------------------------------------
def test_an_agent_that_overwrites_every_tensor_it_gets_changes_no_evaluation(tmp_path):
    assert main([*LEVY, *SMALL, "--method", "pretrained", "--out", str(tmp_path / "honest")]) == 0
    assert main([*LEVY, *SMALL, "--method", "hostile_agents:Vandal", "--out", str(tmp_path / "vandal")]) == 0
    honest = _rounds(next((tmp_path / "honest").iterdir()))
    vandal = _rounds(next((tmp_path / "vandal").iterdir()))
    assert [r["eval_reward"] for r in vandal] == [r["eval_reward"] for r in honest]
    assert [r["path_kl"] for r in vandal] == [r["path_kl"] for r in honest] == [0.0] * 3
    assert honest[0]["eval_reward"] < -1  # the shrunk box would score ~0 (levy's optimum)


def test_the_agents_task_info_is_a_copy():
    from hostile_agents import vandalise

    from sqdf_bbo.tasks import make_task

    task = make_task("levy")
    lo, hi = (b.clone() for b in task.info.bounds)
    ref_before = task.harness_reference().decode(torch.zeros(2, 8))
    copy = task.info.agent_copy()
    assert vandalise(copy) >= 4  # bounds, feature buffers and the backbone factory's arguments
    assert torch.equal(task.info.bounds[0], lo) and torch.equal(task.info.bounds[1], hi)
    assert torch.equal(task.harness_reference().decode(torch.zeros(2, 8)), ref_before)
    assert task.info.run_defaults.n_eval == 256 and task.info.agent_defaults == {"num_steps": 50}


# ---- B: every design the agent returns is checked, in proposals and in evaluation ---------------------
@pytest.mark.parametrize("mode", ["too_many", "too_few", "shape", "int", "nan", "list"])
@pytest.mark.parametrize("when", ["eval", "query"])
def test_bad_designs_are_refused_in_one_line(tmp_path, capsys, mode, when):
    code = main([*LEVY, "--method", "hostile_agents:BadOutput", "--out", str(tmp_path), "--set", f"mode={mode}",
                 "--set", f"when={when}"])
    line = _one_line(capsys)
    assert code == 2
    assert "hostile_agents:BadOutput" in line
    assert ("during evaluation" in line) == (when == "eval") and ("in propose" in line) == (when == "query")
    folder = next(tmp_path.iterdir())
    assert not (folder / "final.json").exists()
    journal = (folder / "journal.jsonl").read_text().splitlines() if (folder / "journal.jsonl").exists() else []
    if when == "eval":  # round 0's evaluation comes before any query
        assert journal == [] and not (folder / "rounds.jsonl").exists()


# ---- C: a run folder's config.json cannot make load_agent import code ---------------------------------
def test_load_agent_refuses_to_import_what_a_folder_names(tmp_path):
    from sqdf_bbo.run import load_agent

    assert main([*LEVY, *SMALL, "--method", "pretrained", "--out", str(tmp_path)]) == 0
    folder = next(tmp_path.iterdir())
    assert load_agent(folder).config["num_steps"] == 4  # registered names load
    cfg = json.loads((folder / "config.json").read_text())
    marker = tmp_path / "MARKER"
    evil = dict(cfg, task="os:system", task_overrides={"command": f"touch {marker}"})
    (folder / "config.json").write_text(json.dumps(evil))
    with pytest.raises(ValueError, match=r"task 'os:system'.*allow_import=True"):
        load_agent(folder)
    assert not marker.exists()
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "config.json").write_text(json.dumps(dict(cfg, method="evil_mod:Agent")))
    with pytest.raises(ValueError, match=r"method 'evil_mod:Agent'.*allow_import=True"):
        load_agent(folder)
    assert not marker.exists()


def test_load_agent_imports_a_plugin_when_allowed(tmp_path):
    from sqdf_bbo.run import load_agent

    assert main([*LEVY, "--method", "hostile_agents:BadOutput", "--out", str(tmp_path)]) == 0
    folder = next(tmp_path.iterdir())
    with pytest.raises(ValueError, match="allow_import=True"):
        load_agent(folder)
    assert type(load_agent(folder, allow_import=True)).__name__ == "BadOutput"


# ---- D: one process per run folder --------------------------------------------------------------------
def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    from sqdf_bbo.run import run_folder_name

    folder = tmp_path / run_folder_name("levy", "random", 40, 0)
    folder.mkdir()
    with open(folder / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*LEVY, "--method", "random", "--out", str(tmp_path)]) == 2
        line = _one_line(capsys)
        assert "in use by another process" in line and str(folder) in line
        assert not (folder / "journal.jsonl").exists()
    assert main([*LEVY, "--method", "random", "--out", str(tmp_path)]) == 0  # released: it runs


def test_two_processes_on_one_folder(tmp_path):
    """A second real process started while the first holds the folder refuses; the oracle is paid once."""
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HOSTILE_SLOW_S="20")
    cmd = [sys.executable, "-m", "sqdf_bbo.run", *LEVY, "--method", "hostile_agents:Slow", "--out", str(tmp_path)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "levy__hostile_agents.Slow__b40__s0"
    for _ in range(600):
        if (folder / "journal.jsonl").exists() and (folder / "journal.jsonl").read_text():
            break
        time.sleep(0.1)
    second = subprocess.run(cmd + ["--resume"], env=dict(env, HOSTILE_SLOW_S="0"), capture_output=True, text=True,
                            timeout=300)
    first.kill()
    first.communicate()
    assert second.returncode == 2 and "in use by another process" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


# ---- E: --resume takes its settings from the run folder -----------------------------------------------
BON = [*LEVY, "--method", "best-of-n", *SMALL, "--set", "oversample=2"]


@pytest.fixture
def killed_bon(tmp_path, monkeypatch):
    """A best-of-n run killed after round 1, and the uninterrupted run's folder."""
    assert main([*BON, "--out", str(tmp_path / "a")]) == 0
    with pytest.raises(Killed):
        main([*BON, "--out", str(tmp_path / "b"), *_killed_at(monkeypatch, "crash_after_round=1")])
    return next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir())


@pytest.mark.parametrize("change, name", [
    (["--set", "run.rounds=3"], "run.rounds"),
    (["--set", "task.noise_std=50"], "task.noise_std"),
    (["--set", "oversample=64"], "oversample"),
    (["--set", "run.n_eval=17"], "run.n_eval"),
])
def test_resume_refuses_other_settings(killed_bon, capsys, change, name):
    a, b = killed_bon
    capsys.readouterr()
    assert main([*BON, "--out", str(b.parent), "--resume", *change]) == 2
    line = _one_line(capsys)
    assert name in line and "config.json" in line
    assert len(_rounds(b)) == 2  # nothing ran


def test_resume_without_the_sets_uses_the_folders_settings(killed_bon):
    a, b = killed_bon
    bare = ["--task", "levy", "--budget", "40", "--no-progress", "--method", "best-of-n"]
    assert main([*bare, "--out", str(b.parent), "--resume", "--set", "run.checkpoint_every=3",
                 "--set", "run.tracker=none"]) == 0
    fa, fb = (json.loads((d / "final.json").read_text()) for d in (a, b))
    for k in ("eval_reward", "best_so_far", "top10", "queries_used", "rounds"):
        assert fa[k] == fb[k], k


def test_a_checkpoint_of_another_run_is_refused(killed_bon, tmp_path, monkeypatch, capsys):
    import shutil

    a, b = killed_bon
    with pytest.raises(Killed):
        main([*BON, "--out", str(tmp_path / "s1"), "--seed", "1", *_killed_at(monkeypatch, "crash_after_round=1")])
    s1 = next((tmp_path / "s1").iterdir())
    shutil.rmtree(b / "checkpoint")
    shutil.copytree(s1 / "checkpoint", b / "checkpoint")
    capsys.readouterr()
    assert main([*BON, "--out", str(b.parent), "--resume"]) == 2
    line = _one_line(capsys)
    assert "seed" in line and "checkpoint" in line
    # a folder renamed for another method
    other = b.parent / b.name.replace("best-of-n", "pretrained")
    shutil.rmtree(b)
    shutil.copytree(s1, other)  # (seed 1's files under a seed-0 pretrained name)
    assert main([*LEVY, *SMALL, "--method", "pretrained", "--out", str(b.parent), "--resume"]) == 2
    line = _one_line(capsys)
    assert "config.json" in line and ("best-of-n" in line or "seed" in line)


# ---- F: the journal is a hash chain -------------------------------------------------------------------
def _journal(tmp_path, n=3):
    import numpy as np

    from sqdf_bbo.journal import QueryJournal

    j = QueryJournal(tmp_path / "journal.jsonl")
    j.reset()
    for b in range(n):
        j.append(1, b, 2 * b, torch.full((2, 3), float(b)), np.array([1.0, 2.0]), np.array([1.5, 2.5]), {"q": 2 * b + 2})
    return tmp_path / "journal.jsonl"


def test_journal_edits_and_deletions_are_refused(tmp_path):
    from sqdf_bbo.journal import JournalError, QueryJournal

    path = _journal(tmp_path)
    assert set(QueryJournal(path).entries) == {(1, 0), (1, 1), (1, 2)}
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["true"] = [0.0, 0.0]
    path.write_text("\n".join([lines[0], json.dumps(edited), lines[2]]) + "\n")
    with pytest.raises(JournalError, match=r"journal\.jsonl was edited at line 2 "):
        QueryJournal(path)
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a missing entry
    with pytest.raises(JournalError, match=r"journal\.jsonl is broken at line 2: .*removed"):
        QueryJournal(path)
    path.write_text("")  # emptied
    with pytest.raises(JournalError, match=r"journal.jsonl .*3 entries"):
        QueryJournal(path)
    path.write_text("\n".join(lines[:2]) + "\n")  # the last entry removed
    with pytest.raises(JournalError, match=r"journal.jsonl .*3 entries"):
        QueryJournal(path)


@pytest.mark.parametrize("bad, why", [(b"not json", "JSON"), (b"\xff\xfe{}", "UTF-8"), (b'{"round": 1}', "lacks")])
def test_a_corrupt_middle_line_names_the_file_and_line(tmp_path, bad, why):
    from sqdf_bbo.journal import JournalError, QueryJournal

    path = _journal(tmp_path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join([lines[0], bad, *lines[1:]]))
    with pytest.raises(JournalError, match=rf"journal\.jsonl is corrupt at line 2 .*{why}"):
        QueryJournal(path)


def test_only_a_torn_last_line_is_dropped(tmp_path):
    from sqdf_bbo.journal import QueryJournal

    path = _journal(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"round": 1, "batch": 3, "st\xe2')  # torn mid-write, even inside a UTF-8 character
    j = QueryJournal(path)
    assert set(j.entries) == {(1, 0), (1, 1), (1, 2)}
    import numpy as np

    j.append(1, 3, 6, torch.zeros(2, 3), np.zeros(2), np.zeros(2), {"q": 8})
    assert set(QueryJournal(path).entries) == {(1, 0), (1, 1), (1, 2), (1, 3)}


def test_a_journal_from_before_the_chain_is_refused(tmp_path):
    from sqdf_bbo.journal import JournalError, QueryJournal

    path = tmp_path / "journal.jsonl"
    path.write_text(json.dumps({"round": 1, "batch": 0, "start": 0, "n": 2, "designs_sha256": "0" * 64,
                                "observed": [1, 2], "true": [1, 2], "env_state": {}}) + "\n")
    with pytest.raises(JournalError, match="predates the hash chain"):
        QueryJournal(path)


def test_an_edited_journal_is_refused_on_resume_not_blamed_on_the_agent(tmp_path, monkeypatch, capsys):
    argv = [*LEVY, "--method", "hostile_agents:BadOutput", "--out", str(tmp_path)]
    with pytest.raises(Killed):
        main([*argv, *_killed_at(monkeypatch, "crash_after_queries=12")])  # inside round 2 (sizes 13, 27)
    journal = next(tmp_path.iterdir()) / "journal.jsonl"
    lines = journal.read_text().splitlines()
    e = json.loads(lines[-1])
    e["true"] = [0.0] * len(e["true"])
    journal.write_text("\n".join(lines[:-1] + [json.dumps(e)]) + "\n")
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    line = _one_line(capsys)
    assert f"journal.jsonl was edited at line {len(lines)} " in line and "raised" not in line


# ---- G: bad input ends in one line before anything is written ------------------------------------------
@pytest.mark.parametrize("extra, pattern", [
    (["--seed", str(2**32)], r"seed must be .*2\*\*32.*4294967296"),
    (["--budget", "1_000"], r"budget must be a positive integer.*'1_000'"),
    (["--budget", str(10**12)], r"budget 1000000000000 .*at most 10000000"),
    (["--set", "task.noise_std=nan"], r"noise_std.*nan"),
    (["--set", "task.noise_std=inf"], r"noise_std.*inf"),
    (["--set", "task.noise_std=[1,2]"], r"noise_std.*\[1, 2\]"),
    (["--set", "run.round_sizes=5"], r"run.round_sizes=5 must be a list"),
    (["--set", "run.round_sizes=[[100]]"], r"run.round_sizes.*\[\[100\]\]"),
    (["--set", "run.round_sizes=[20.5,20.5]"], r"run.round_sizes.*20.5"),
    (["--set", "run.round_sizes=[True,39]"], r"run.round_sizes.*True"),
])
def test_bad_values_are_one_line_and_leave_no_folder(tmp_path, capsys, extra, pattern):
    out = tmp_path / "o"
    argv = [*LEVY, "--method", "random", "--out", str(out)]
    if extra[0] == "--budget":
        argv[argv.index("--budget") + 1] = extra[1]
        extra = []
    try:
        code = main(argv + extra)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    line = _one_line(capsys)
    assert re.search(pattern, line), line
    assert not out.exists()


def test_a_full_disk_stops_in_one_line_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    import sqdf_bbo.journal as journal_mod

    argv = [*LEVY, "--method", "hostile_agents:BadOutput"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    real_append = journal_mod.QueryJournal.append
    calls = []

    def full(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, *a, **k)

    monkeypatch.setattr(journal_mod.QueryJournal, "append", full)
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "b")]) != 0
    line = _one_line(capsys)
    assert "No space left on device" in line and "--resume" in line
    monkeypatch.undo()
    assert main(argv + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir())
    assert (a / "queries.csv").read_bytes() == (b / "queries.csv").read_bytes()
    assert _rounds(a)[-1]["eval_reward"] == _rounds(b)[-1]["eval_reward"]


def test_gymnasium_make_shrinks_the_batch_and_hides_true_values():
    import gymnasium
    import numpy as np

    import sqdf_bbo.envs  # noqa: F401 - registers the ids

    env = gymnasium.make("sqdf_bbo/levy-v0", budget=2)
    assert env.unwrapped.batch_size == 2 and env.action_space.shape == (2, 8)
    env.reset(seed=0)
    info = env.step(np.zeros((2, 8), np.float32))[4]
    assert "true_values" not in info and env.unwrapped.report_true is False


# ---- H: an agent's sys.exit / KeyboardInterrupt ------------------------------------------------------
@pytest.mark.parametrize("call", ["init", "propose", "observe", "improve", "evaluation"])
def test_an_agent_exit_is_a_failure_naming_the_call_and_the_folder_resumes(tmp_path, monkeypatch, capsys, call):
    argv = [*LEVY, "--method", "hostile_agents:Exits", "--out", str(tmp_path)]
    monkeypatch.setenv("HOSTILE_EXIT", call)
    code = main(argv)
    assert code != 0
    line = _one_line(capsys)
    assert "hostile_agents:Exits" in line and "called sys.exit(0) in " + ("__init__" if call == "init" else call) in line
    monkeypatch.delenv("HOSTILE_EXIT")
    folder = next(tmp_path.iterdir())
    assert main(argv + (["--resume"] if (folder / "checkpoint" / "state.json").exists() else [])) == 0
    assert (folder / "final.json").exists()


def test_an_agent_keyboard_interrupt_is_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOSTILE_EXIT", "improve")
    monkeypatch.setenv("HOSTILE_EXIT_HOW", "interrupt")
    assert main([*LEVY, "--method", "hostile_agents:Exits", "--out", str(tmp_path)]) not in (0, None)
    line = _one_line(capsys)
    assert "KeyboardInterrupt" in line and "improve" in line

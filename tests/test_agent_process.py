"""Plug-in agents run in their own process (sqdf_bbo/agent_process.py): an agent that hunts the harness's
objects in its memory, or the run folder in its command line, environment and working directory, finds
nothing; a crash, exit, signal or hang ends the run with one line and a folder that --resume finishes
exactly; an honest plug-in gives the same numbers isolated and in-process."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sqdf_bbo.run import TIMING_KEYS, main

pytestmark = pytest.mark.slow  # whole runs, several processes

LEVY = ["--task", "levy", "--budget", "40", "--no-progress", "--set", "run.n_eval=16", "--set", "run.rounds=2",
        "--set", "run.batch_size=8"]
SQDF = ["--set", "num_steps=4", "--set", "updates_per_round=3", "--set", "proxy_epochs=3", "--set", "on_policy_batch=8",
        "--set", "train_batch=16", "--set", "sample_batch=16"]


class Killed(Exception):
    pass


def _one_line(capsys) -> str:
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("resuming")]
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    return err[0]


def _final(folder: Path) -> dict:
    d = json.loads((folder / "final.json").read_text())
    for k in (*TIMING_KEYS, "run_dir"):
        d.pop(k, None)
    return d


def _journal_queries(folder: Path) -> int:
    return sum(json.loads(x)["n"] for x in (folder / "journal.jsonl").read_text().splitlines())


@pytest.fixture
def honest(tmp_path):
    """The folder of an uninterrupted run of hostile_agents:Faulty without a fault (uniform designs)."""
    assert main([*LEVY, "--method", "hostile_agents:Faulty", "--out", str(tmp_path / "honest")]) == 0
    return next((tmp_path / "honest").iterdir())


# ---- nothing of the harness is in the agent's process ------------------------------------------------
def test_an_agent_hunting_the_gc_and_frames_finds_nothing_and_the_accounting_is_exact(tmp_path, monkeypatch, honest):
    report = tmp_path / "found.json"
    monkeypatch.setenv("HOSTILE_REPORT", str(report))
    # in-process (run.isolate=false, the user vouching for the code) the same agent finds the env and the run
    with pytest.raises(ValueError):  # ... and wrecks it: it emptied the run's query records
        main([*LEVY, "--method", "hostile_agents:GcHunter", "--out", str(tmp_path / "inproc"),
              "--set", "run.isolate=false"])
    found = json.loads(report.read_text())["found"]
    assert "BudgetedOracleEnv" in found and "Run" in found, found
    report.unlink()
    assert main([*LEVY, "--method", "hostile_agents:GcHunter", "--out", str(tmp_path / "iso")]) == 0
    assert json.loads(report.read_text())["found"] == []
    folder = next((tmp_path / "iso").iterdir())
    final = _final(folder)
    assert final["queries_used"] == 40 and _journal_queries(folder) == 40
    assert (folder / "queries.csv").read_bytes() == (honest / "queries.csv").read_bytes()
    expected = _final(honest)
    assert {k: v for k, v in final.items() if k != "method"} == {k: v for k, v in expected.items() if k != "method"}


def test_the_agent_process_is_not_told_the_run_folder(tmp_path, monkeypatch):
    report = tmp_path / "seen.json"
    monkeypatch.setenv("HOSTILE_REPORT", str(report))
    monkeypatch.setenv("MY_RUNS", str(tmp_path / "out"))  # a variable naming --out is not passed on
    out = tmp_path / "out"
    assert main([*LEVY, "--method", "hostile_agents:Snoop", "--out", str(out)]) == 0
    folder = next(out.iterdir())
    seen = json.loads(report.read_text())
    assert seen["cwd"] != os.getcwd() and "sqdf_bbo_agent_" in seen["cwd"]
    for where, text in seen.items():
        assert folder.name not in text and str(out) not in text, (where, text)
    assert "sqdf_bbo.agent_process" in seen["cmdline"]
    assert not Path(seen["cwd"]).exists()  # its temporary folder is removed with it


def test_the_plugin_module_is_imported_only_in_the_agent_process(tmp_path, monkeypatch):
    marker = tmp_path / "imported_by"
    (tmp_path / "sideeffect_agent.py").write_text(
        "import os\n"
        f"open({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "from hostile_agents import Faulty as Agent\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main([*LEVY, "--method", "sideeffect_agent:Agent", "--out", str(tmp_path / "o")]) == 0
    pids = marker.read_text().split()
    assert pids and str(os.getpid()) not in pids


# ---- faults end the run in one line; --resume finishes it exactly ----------------------------------------
@pytest.mark.parametrize("fault, extra, pattern", [
    ("exit3", [], r"process of method .* exited with status 3 in propose"),
    ("segv", [], r"process of method .* was killed by signal SIGSEGV in improve"),
    ("sleep", ["--set", "run.agent_timeout_s=3"], r"did not return from propose within 3 s \(run.agent_timeout_s\)"),
    ("raise", [], r"raised ValueError: observe is broken \(in observe;"),
])
def test_a_crash_exit_or_hang_is_one_line_and_the_folder_resumes_exactly(tmp_path, monkeypatch, capsys, honest,
                                                                           fault, extra, pattern):
    import re
    import time

    argv = [*LEVY, "--method", "hostile_agents:Faulty", "--out", str(tmp_path / "o"), *extra]
    monkeypatch.setenv("HOSTILE_FAULT", fault)
    capsys.readouterr()
    t0 = time.monotonic()
    code = main(argv)
    assert code == 2
    line = _one_line(capsys)
    assert "hostile_agents:Faulty" in line and re.search(pattern, line), line
    assert time.monotonic() - t0 < 120
    folder = next((tmp_path / "o").iterdir())
    assert not (folder / "final.json").exists() and (folder / "checkpoint" / "state.json").exists()
    monkeypatch.delenv("HOSTILE_FAULT")
    assert main(argv + ["--resume"]) == 0
    assert _final(folder) == _final(honest)
    assert (folder / "queries.csv").read_bytes() == (honest / "queries.csv").read_bytes()
    assert _journal_queries(folder) == 40


def _agent_processes() -> list[int]:
    """Pids of live sqdf_bbo.agent_process children of this process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"sqdf_bbo.agent_process" in cmd:
            out.append(int(d.name))
    return out


def test_a_thread_left_running_does_not_keep_the_run_alive(tmp_path, monkeypatch, honest):
    import time

    monkeypatch.setenv("HOSTILE_FAULT", "thread")
    t0 = time.monotonic()
    assert main([*LEVY, "--method", "hostile_agents:Faulty", "--out", str(tmp_path / "o")]) == 0
    assert time.monotonic() - t0 < 120
    assert _agent_processes() == []
    assert _final(next((tmp_path / "o").iterdir())) == _final(honest)


# ---- an honest agent: the same numbers isolated and in-process; a killed harness resumes exactly ---------
def test_an_honest_plugin_gives_the_same_numbers_isolated_and_in_process(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child must compute with the harness's thread count, not its default
    try:
        _honest_plugin_isolated_and_in_process(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _honest_plugin_isolated_and_in_process(tmp_path):
    argv = [*LEVY, "--method", "hostile_agents:PlainSQDF", *SQDF]
    assert main(argv + ["--out", str(tmp_path / "iso")]) == 0
    assert main(argv + ["--out", str(tmp_path / "inproc"), "--set", "run.isolate=false"]) == 0
    a, b = (next((tmp_path / d).iterdir()) for d in ("iso", "inproc"))
    assert _final(a) == _final(b)
    assert (a / "queries.csv").read_bytes() == (b / "queries.csv").read_bytes()
    ra, rb = ([json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()] for d in (a, b))
    for x, y in zip(ra, rb):
        for k in ("eval_reward", "path_kl", "vendi"):
            assert x[k] == y[k], k
        timeless = [{k: v for k, v in r["train"].items() if not k.endswith("_s")} for r in (x, y)]  # not times
        assert timeless[0] == timeless[1] and len(timeless[0]) > (5 if x["round"] else -1)


def test_a_killed_harness_resumes_an_isolated_agent_mid_round_exactly(tmp_path, monkeypatch):
    argv = [*LEVY, "--method", "hostile_agents:PlainSQDF", *SQDF, "--set", "run.checkpoint_every=1"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    # checkpoint 1 after round 0, 2 after round 1's queries, 3-5 after its 3 steps: 4 is mid-round
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(Killed(code)))
    with pytest.raises(Killed):  # a simulated kill (FaultInjection): os._exit raises here
        main(argv + ["--out", str(tmp_path / "b"), "--fault", "crash_after_checkpoint=4"])
    monkeypatch.undo()
    assert _agent_processes() == []
    assert main(argv + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (next((tmp_path / d).iterdir()) for d in ("a", "b"))
    assert _final(a) == _final(b)
    assert (a / "queries.csv").read_bytes() == (b / "queries.csv").read_bytes()


def test_a_policy_that_does_not_fit_the_backbone_is_evaluated_step_by_step_with_the_same_numbers(tmp_path):
    argv = [*LEVY, "--method", "hostile_agents:WrappedPolicy", "--set", "num_steps=4"]
    assert main(argv + ["--out", str(tmp_path / "iso")]) == 0
    assert main(argv + ["--out", str(tmp_path / "inproc"), "--set", "run.isolate=false"]) == 0
    a, b = (next((tmp_path / d).iterdir()) for d in ("iso", "inproc"))
    assert _final(a) == _final(b)
    assert _final(a)["path_kl"] == 0.0

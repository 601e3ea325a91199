"""benchmarks/run/compare.py: a new method against committed per-run records, without re-running them.

The committed records are a tiny fixture made here by the real pipeline (``benchmarks.run.frontier`` into grid
folders, then ``benchmarks.report.run_records``) under a tiny suite: levy, budget 16, 2 rounds, 16 eval draws,
seeds 0-2; methods the pretrained model (4 DDIM steps; the canary) and a fake weak plug-in
(``compare_agents:Weak``, beta = 1, 10). Made in the test, not committed, because its protocol ids hash
the embedded weights of this checkout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.perf import perf_compare
from benchmarks.report import leaderboard, run_records as rr
from benchmarks.run import compare, frontier

TINY = compare.Suite("tiny", "", "tests/test_compare.py", ("run.n_eval=16", "run.rounds=2"), {"num_steps": 4})
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """The fixture's committed per-run records CSV (read-only: tests copy it before editing)."""
    root = tmp_path_factory.mktemp("committed")
    rc = frontier.main(["--tasks", "levy", "--methods", "pretrained,compare_agents:Weak", "--budget", "16",
                        "--seeds", "0-2", "--out", str(root / "runs"), "--workers", "1", "--threads", "1",
                        "--no-progress", "--set", "run.n_eval=16", "--set", "run.rounds=2",
                        "--set-for", "pretrained", "num_steps=4", "--grid", "compare_agents:Weak=1,10",
                        "--csv", str(root / "points.csv"), "--plots", "", "--leaderboard", ""])
    assert rc == 0
    csv = root / "frontier_runs.csv"
    rr.write_records(rr.collect([root / "runs"]), csv)
    return csv


@pytest.fixture(autouse=True)
def tiny_suite(monkeypatch):
    monkeypatch.setitem(compare.SUITES, "tiny", TINY)


def _copy(committed: Path, tmp_path: Path, edit=None) -> Path:
    df = rr.read_records(committed)
    if edit is not None:
        df = edit(df)
    out = tmp_path / "committed.csv"
    rr.write_records(df, out)
    return out


def _compare(csv: Path, out: Path, *extra: str) -> int:
    return compare.main(["--method", "compare_agents:Good", "--grid", "0.1,1", "--suite", "tiny", "--runs-csv",
                         str(csv), "--out", str(out), "--no-progress", *extra])


def _finals(folder: Path) -> dict[str, float]:
    return {str(p.parent): p.stat().st_mtime_ns for p in folder.rglob("final.json")}


def test_a_clearly_better_method_is_above_the_weak_one_and_nothing_committed_is_rerun(committed, tmp_path, capsys):
    csv = _copy(committed, tmp_path)
    out = tmp_path / "cmp"
    assert _compare(csv, out) == 0
    err = capsys.readouterr().err
    assert "identical to the committed runs" in err
    # what benchmarks/perf/perf_compare.py records of it: the canary's verdict, not the line announcing it
    assert perf_compare.canary_verdict(err).endswith(": identical to the committed runs (same CPU model)")

    # only the canary cell (the pretrained model on the records' seeds) and the new method's grid ran
    ran = sorted(str(Path(d).relative_to(out)) for d in _finals(out))
    canary = [f"_canary/pretrained__default/levy__pretrained__b16__s{s}" for s in SEEDS]
    new = [f"compare_agents.Good__beta={v}/levy__compare_agents.Good__b16__s{s}" for v in ("0.1", "1") for s in SEEDS]
    assert ran == sorted(canary + new)
    config = json.loads((out / new[0] / "config.json").read_text())
    assert config["run"]["n_eval"] == 16 and config["run"]["rounds"] == 2 and config["agent"]["beta"] == 0.1
    # the protocol this checkout predicts for a run is the one the run records
    assert compare.checkout_protocol("levy", "compare_agents:Good", 16, ["run.n_eval=16", "run.rounds=2", "beta=0.1"]) \
        == (config["protocol"], rr.read_records(csv)["task_protocol"].iloc[0])

    # runs.csv: the committed rows unchanged (same numbers) plus the new method's, in the committed format
    runs, old = rr.read_records(out / "runs.csv"), rr.read_records(csv)
    assert list(runs.columns[:len(rr.FIRST)]) == rr.FIRST
    assert len(runs) == len(old) + 6 and set(runs["method"]) == {"pretrained", "compare_agents:Weak",
                                                                 "compare_agents:Good"}
    key = ["method", "knob", "value", "seed"]
    both = old.merge(runs, on=key, suffixes=("_old", "_new"))
    assert len(both) == len(old)
    for col in ("eval_reward", "path_kl", "normalised_score"):
        assert (both[f"{col}_old"] - both[f"{col}_new"]).abs().max() < 1e-12

    verdicts = pd.read_csv(out / "verdicts.csv")
    # no committed frontier reaches 10 nats (Weak's largest KL is 1): no verdict there, and the report says so
    assert set(verdicts["metric"]) == {"auf", "score_at_kl1"}
    assert set(verdicts["reference"]) == {"pretrained", "compare_agents:Weak"}
    weak = verdicts[verdicts["reference"] == "compare_agents:Weak"].set_index("metric")
    assert (weak.loc[["auf", "score_at_kl1"], "verdict"] == "above").all()
    assert (weak["effect"] > 0.5).all() and (weak["low"] > 0).all() and (weak["n_seeds"] == 3).all()
    assert (verdicts["p_holm"] >= verdicts["p_value"]).all()
    assert verdicts.set_index(["reference", "metric"]).loc[("pretrained", "auf"), "verdict"] == "above"

    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "compare_agents:Good" in md and "above" in md and "plots/frontier_levy_b16.png" in md
    assert "no committed method has a score_at_kl10" in md
    assert page.count("data:image/png;base64,") == 1 and "src='plots/" not in page and "Naturalness" in page


def test_a_protocol_mismatch_is_refused_before_any_run(committed, tmp_path, capsys):
    csv = _copy(committed, tmp_path, lambda df: df.assign(task_protocol="v1-000000000000"))
    out = tmp_path / "cmp"
    assert _compare(csv, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol mismatch on task levy" in err[0] and "v1-000000000000" in err[0]
    assert not _finals(out)


def test_settings_that_differ_from_the_records_are_refused(committed, tmp_path, capsys, monkeypatch):
    """The canary cell's full protocol hashes the suite's settings: another n_eval gives another id."""
    monkeypatch.setitem(compare.SUITES, "tiny", compare.Suite("tiny", "", "x.sh", ("run.n_eval=32", "run.rounds=2"),
                                                              {"num_steps": 4}))
    out = tmp_path / "cmp"
    assert _compare(_copy(committed, tmp_path), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol mismatch on the canary cell" in err[0]
    assert not _finals(out)


def _perturb_canary(df: pd.DataFrame, shift: float, cpu: str | None = None) -> pd.DataFrame:
    df = df.copy()
    pre = df["method"] == "pretrained"
    df.loc[pre, "eval_reward"] = df.loc[pre, "eval_reward"] + shift
    if cpu is not None:
        df.loc[pre, "cpu_model"] = cpu
    return df


def test_a_failing_canary_stops_before_the_new_method_runs(committed, tmp_path, capsys):
    csv = _copy(committed, tmp_path, lambda df: _perturb_canary(df, 1e-3))
    out = tmp_path / "cmp"
    assert _compare(csv, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: canary failed: levy × pretrained (default)") and "same CPU model" in err[-1]
    assert all("/_canary/" in d for d in _finals(out)) and len(_finals(out)) == 3


def test_on_another_cpu_the_canary_needs_the_committed_interval(committed, tmp_path, capsys):
    """Another CPU model: a small difference passes (inside the t-interval), a large one fails."""
    out = tmp_path / "cmp"
    small = _copy(committed, tmp_path, lambda df: _perturb_canary(df, 1e-3, "Other CPU"))
    assert _compare(small, out, "--max-runs", "0") == 2  # canary passed; no new run finished: one-line refusal
    err = capsys.readouterr().err
    assert "inside the committed 95% t-intervals" in err and "no run of compare_agents:Good finished" in err
    large = _copy(committed, tmp_path, lambda df: _perturb_canary(df, 50.0, "Other CPU"))
    assert _compare(large, out, "--max-runs", "0") == 2  # the canary runs are reused (finished), judged again
    assert "outside the committed 95% t-interval" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_interrupted_comparison_resumes_without_rerunning_finished_runs(committed, tmp_path):
    csv = _copy(committed, tmp_path)
    out = tmp_path / "cmp"
    assert _compare(csv, out, "--no-canary", "--max-runs", "2") == 0
    first = _finals(out)
    assert len(first) == 2 and not (out / compare.CANARY_DIR).exists()
    assert len(rr.read_records(out / "runs.csv")) == len(rr.read_records(csv)) + 2
    assert "incomplete" in (out / "report.md").read_text() and "skipped (--no-canary)" in (out / "report.md").read_text()
    assert _compare(csv, out, "--no-canary") == 0
    second = _finals(out)
    assert len(second) == 6 and all(second[d] == t for d, t in first.items())  # not re-run
    assert len(pd.read_csv(out / "verdicts.csv"))


def test_leaderboard_add_merges_after_the_protocol_check(committed, tmp_path, capsys):
    csv = _copy(committed, tmp_path)
    out = tmp_path / "cmp"
    assert _compare(csv, out, "--no-canary") == 0
    before = rr.read_records(csv)

    # a folder whose runs carry another task protocol is refused, the records untouched
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(out / compare.META_FILE, bad / compare.META_FILE)
    runs = rr.read_records(out / "runs.csv")
    rr.write_records(runs.assign(task_protocol=runs["task_protocol"].where(runs["method"] != "compare_agents:Good",
                                                                           "v1-ffffffffffff")), bad / "runs.csv")
    assert leaderboard.main(["--add", str(bad)]) == 2
    assert "v1-ffffffffffff" in capsys.readouterr().err
    assert rr.read_records(csv).equals(before)

    assert leaderboard.main(["--add", str(out)]) == 0
    after = rr.read_records(csv)
    assert len(after) == len(before) + 6 and "compare_agents:Good" in set(after["method"])
    assert leaderboard.main(["--add", str(out)]) == 0  # adding again adds nothing
    assert len(rr.read_records(csv)) == len(after)
    # the new method is now committed: comparing it again is refused
    assert _compare(csv, tmp_path / "again", "--no-canary") == 2
    assert "already has committed runs" in capsys.readouterr().err


def test_missing_records_are_one_line(tmp_path, capsys):
    assert _compare(tmp_path / "nope.csv", tmp_path / "cmp") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist yet" in err[0] and "run_records" in err[0]


def test_the_suites_settings_are_the_reproduce_scripts(tmp_path):
    """Every setting of the synthetic and image suites is given by their reproduce scripts, and the
    where-present rule gives every built-in method the script's per-method keys."""
    from sqdf_bbo.agents import resolve_method

    for suite in (compare.SUITES["synthetic"], compare.SUITES["image"]):
        text = Path(suite.script).read_text()
        assert suite.runs_root in text  # where the script leaves its run folders
        for item in suite.run_sets:
            assert f"--set {item}" in text
        for key, value in suite.where_present.items():
            assert f"{key}={value}" in text
        for method, items in suite.per_method.items():
            assert all(f"--set-for {method} {i}" in text for i in items)
    syn = compare.SUITES["synthetic"]
    assert syn.sets_for("pretrained", resolve_method("pretrained")) == ["run.n_eval=128", "num_steps=10"]
    assert syn.sets_for("best-of-n", resolve_method("best-of-n")) == ["run.n_eval=128", "num_steps=10", "proxy_epochs=30"]
    assert set(syn.sets_for("sqdf", resolve_method("sqdf"))) == {"run.n_eval=128", "num_steps=10",
                                                                  "updates_per_round=20", "proxy_epochs=30"}
    assert syn.sets_for("random", resolve_method("random")) == ["run.n_eval=128"]

"""``python -m benchmarks.run.frontier --until-decided REFERENCE``: add seeds to the methods whose paired AUF verdict
against the reference is still undecided, until decided or capped. The sequential rule's false-positive rate
is simulated on numbers alone; the loop is driven by a fake runner that writes fake run folders (no model is
trained). In the fake runs seiko is given sqdf's parameters (equal means: it must run to the cap) and
alignprop is clearly below sqdf (it must stop early and get no more seeds)."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fake_runs as fake
from benchmarks.run import frontier as fr

TASKS = ["ackley", "levy-manifold"]
GRID_ARGS = ["sqdf=0.1,1", "seiko=0.1,1", "alignprop=0.0001,0.001"]
METHODS = ["pretrained", "sqdf", "seiko", "alignprop"]


# ---- the decision rule on simulated numbers ------------------------------------------------------
def _false_positive_rate(reps: int, n_methods: int, alpha_look=None, seed: int = 0) -> float:
    """Share of simulated sweeps (every method equal to the reference, normal per-seed values) in which the
    rule calls any method above or below the reference: 5 first seeds, cap 10 (6 looks)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        x = rng.normal(size=(n_methods + 1, 10))
        res = fr.simulate_until_decided(x[0], {f"m{i}": x[i + 1] for i in range(n_methods)}, n_first=5,
                                        max_seeds=10, alpha_look=alpha_look)
        hits += any(verdict != "undecided" for verdict, _ in res.values())
    return hits / reps


def test_bonferroni_over_looks_keeps_the_false_positive_rate_at_most_five_percent():
    assert fr.n_looks(5, 10) == 6 and fr.alpha_per_look(5, 10) == pytest.approx(0.05 / 6)
    assert fr.n_looks(5, 5) == 1 and fr.alpha_per_look(5, 5) == 0.05
    # one comparison: rate + 2 standard errors stays below 5 %
    rate = _false_positive_rate(1500, 1)
    assert rate + 2 * np.sqrt(rate * (1 - rate) / 1500) <= 0.05, rate
    # a family of three equal methods on one task (Holm at alpha / looks): any false call, same bound
    family = _false_positive_rate(400, 3, seed=1)
    assert family + 2 * np.sqrt(family * (1 - family) / 400) <= 0.05, family
    # testing at 0.05 at every look (no correction) does inflate the rate: the correction is needed
    naive = _false_positive_rate(600, 1, alpha_look=0.05, seed=2)
    assert naive > 0.08, naive


def test_a_clear_difference_stops_at_the_first_look_and_an_equal_method_runs_to_the_cap():
    rng = np.random.default_rng(3)
    ref, same, worse = rng.normal(size=10), rng.normal(size=10), rng.normal(size=10) - 10.0
    res = fr.simulate_until_decided(ref, {"same": same, "worse": worse}, n_first=5, max_seeds=10)
    assert res["worse"] == ("above", 5)  # the reference lies above it after the first 5 seeds
    assert res["same"] == ("undecided", 10)


# ---- the loop over fake runs ----------------------------------------------------------------------
class FakeRunner:
    """runner(specs): writes a fake run folder for every spec not finished yet, remembering what it wrote."""

    def __init__(self):
        self.written: list[tuple[str, str, int]] = []

    def __call__(self, specs) -> int:
        for s in specs:
            if s.status() == "done":
                continue
            point = fr._POINT_DIR.match(Path(s.out).name)
            knob = point.group("knob")
            value = float(point.group("value")) if knob else None
            fake.write_fake_run(Path(s.out), s.task, s.method, s.seed, s.budget, with_png=False,
                                agent={knob: value} if knob else None,
                                move=fake.FAKE_KNOBS[knob](value) if knob else 1.0)
            self.written.append((Path(s.out).name, s.task, s.seed))
        return 0


@pytest.fixture
def seiko_equals_sqdf(monkeypatch):
    monkeypatch.setitem(fake.FAKE_METHODS, "seiko", fake.FAKE_METHODS["sqdf"])


def _loop(out: Path, runner, **kw) -> int:
    plans = fr.plan_grid(METHODS, grid_args=GRID_ARGS)
    specs_for = partial(fr.build_specs, out=out, sets=[], method_sets={}, resume=False, threads=1)
    return fr.until_decided(out, plans, TASKS, [200], [0, 1, 2], "sqdf", runner, specs_for, max_seeds=6, **kw)


def _seeds_on_disk(out: Path, point: str, task: str) -> set[int]:
    return {int(d.name.rsplit("__s", 1)[1]) for d in (out / point).glob(f"{task}__*") if (d / "final.json").exists()}


def _state(out: Path) -> dict:
    return json.loads((out / fr.DECIDED_FILE).read_text())


def test_undecided_methods_get_seeds_up_to_the_cap_and_decided_ones_none(tmp_path, seiko_equals_sqdf):
    out, runner = tmp_path / "runs", FakeRunner()
    assert _loop(out, runner) == 0
    assert len(runner.written) == len(set(runner.written))  # no run written twice
    state = _state(out)
    assert state["finished"] and state["metric"] == "auf" and state["alpha_per_look"] == pytest.approx(0.05 / 4)
    # alignprop is below sqdf: decided at the first look on ackley, after one added seed on levy-manifold
    assert state["stopped"] == {"ackley/b200": {"alignprop": {"verdict": "above", "n_seeds": 3, "look": 0}},
                                "levy-manifold/b200": {"alignprop": {"verdict": "above", "n_seeds": 4, "look": 1}}}
    for point in ("alignprop__lr=0.0001", "alignprop__lr=0.001"):  # every grid point alike: seeds stay paired
        assert _seeds_on_disk(out, point, "ackley") == {0, 1, 2}
        assert _seeds_on_disk(out, point, "levy-manifold") == {0, 1, 2, 3}
    # seiko equals sqdf: undecided to the cap of 6 seeds, the reference run beside it on every added seed
    for point in ("seiko__beta=0.1", "seiko__beta=1", "sqdf__beta=0.1", "sqdf__beta=1"):
        for task in TASKS:
            assert _seeds_on_disk(out, point, task) == set(range(6)), (point, task)
    for task in TASKS:  # single points get no added seed
        assert _seeds_on_disk(out, "pretrained__default", task) == {0, 1, 2}
    # the plan: one seed per round, to the undecided methods and the reference
    assert [a["runs"]["ackley/b200"] for a in state["added"]] == [
        {"seed": s, "methods": ["seiko", "sqdf"]} for s in (3, 4, 5)]
    assert state["added"][0]["runs"]["levy-manifold/b200"] == {"seed": 3, "methods": ["alignprop", "seiko", "sqdf"]}
    last = pd.DataFrame(state["looks"][-1]["verdicts"]).set_index(["task", "method"])
    assert len(state["looks"]) == 4 and state["looks"][-1]["seeds"] == {"ackley/b200": 6, "levy-manifold/b200": 6}
    assert (last.loc[(slice(None), "seiko"), "status"] == "capped").all()
    assert (last.loc[(slice(None), "seiko"), "verdict"] == "undecided").all()
    assert (last.loc[(slice(None), "seiko"), "n_seeds"] == 6).all()
    assert (last.loc[(slice(None), "alignprop"), "status"] == "stopped").all()
    # a finished loop run again runs nothing and records no new look
    again = FakeRunner()
    assert _loop(out, again) == 0 and again.written == [] and len(_state(out)["looks"]) == 4


def test_a_killed_loop_resumes_from_the_finished_runs(tmp_path, seiko_equals_sqdf):
    full = tmp_path / "full"
    assert _loop(full, FakeRunner()) == 0
    out, first = tmp_path / "runs", FakeRunner()
    assert _loop(out, first, max_rounds=1) == 0  # "killed" after running the first added seed, before its look
    state = _state(out)
    assert not state["finished"] and len(state["added"]) == 1 and len(state["looks"]) == 1
    assert _seeds_on_disk(out, "seiko__beta=1", "ackley") == {0, 1, 2, 3}
    # ...and one run of that seed was cut short (no final.json): it is run again, nothing else
    cut = out / "sqdf__beta=1" / "ackley__sqdf__b200__s3"
    (cut / "final.json").unlink()
    second = FakeRunner()
    assert _loop(out, second) == 0
    assert second.written[0] == ("sqdf__beta=1", "ackley", 3)
    assert not set(second.written) & (set(first.written) - {("sqdf__beta=1", "ackley", 3)})
    assert all(seed >= 4 for _, _, seed in second.written[1:])
    resumed, whole = _state(out), _state(full)
    for key in ("added", "stopped", "finished"):
        assert resumed[key] == whole[key], key
    assert [lk["seeds"] for lk in resumed["looks"]] == [lk["seeds"] for lk in whole["looks"]]
    assert resumed["looks"][-1]["verdicts"] == whole["looks"][-1]["verdicts"]
    # the same folder with other settings is refused instead of mixing two plans
    plans = fr.plan_grid(METHODS, grid_args=GRID_ARGS)
    with pytest.raises(fr.SweepError, match="max_seeds=6"):
        fr.until_decided(out, plans, TASKS, [200], [0, 1, 2], "sqdf", FakeRunner(), None, max_seeds=8)


def test_cli_until_decided_with_an_injected_runner_then_reports(tmp_path, seiko_equals_sqdf, capsys):
    out = tmp_path / "runs"
    argv = ["--tasks", "ackley", "--methods", ",".join(METHODS), "--budget", "200", "--seeds", "0-2",
            "--out", str(out), "--no-progress", *sum((["--grid", g] for g in GRID_ARGS), []),
            "--until-decided", "sqdf", "--max-seeds", "5", "--csv", str(tmp_path / "f.csv"), "--plots", "",
            "--leaderboard", str(tmp_path / "l.csv"), "--runs-csv", str(tmp_path / "runs.csv")]
    assert fr.main(argv, runner=FakeRunner()) == 0
    err = capsys.readouterr().err
    assert "then seeds 3, 4, ... for the methods still undecided against sqdf, up to 5 seeds" in err
    assert "sqdf vs alignprop: above" in err and "-> capped" in err
    assert _state(out)["max_seeds"] == 5 and json.loads((out / fr.PLAN_FILE).read_text())["methods"]["seiko"]
    runs = pd.read_csv(tmp_path / "runs.csv")
    seeds = runs.groupby("method")["seed"].agg(lambda s: sorted(set(s)))
    assert seeds["seiko"] == seeds["sqdf"] == [0, 1, 2, 3, 4] and seeds["alignprop"] == [0, 1, 2]
    pts = pd.read_csv(tmp_path / "f.csv").set_index("method")
    assert (pts.loc["seiko", "n_seeds"] == 5).all() and (pts.loc["alignprop", "n_seeds"] == 3).all()


@pytest.mark.parametrize("extra, message", [
    (["--until-decided", "nope"], "--until-decided nope: the reference must be one of --methods"),
    (["--until-decided", "pretrained"], "--until-decided pretrained: the reference must be one of --methods"),
    (["--until-decided", "sqdf", "--max-seeds", "2"], "--max-seeds 2 is below the 3 seeds of --seeds"),
    (["--max-seeds", "6"], "--max-seeds only applies with --until-decided"),
    (["--until-decided", "sqdf", "--report-only"], "does not go with --report-only or --from-runs"),
    (["--report-only", "--from-runs", "x.csv"], "not both"),
])
def test_until_decided_argument_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    argv = ["--tasks", "ackley", "--methods", "pretrained,sqdf", "--budget", "200", "--seeds", "0-2",
            "--out", str(out), "--no-progress", *extra]
    assert fr.main(argv, runner=FakeRunner()) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()

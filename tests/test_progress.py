"""The progress bar's cost model (sqdf_bbo/progress.py): predicted remaining time in seconds of work."""
import io
import json
import math
import random

import pytest
from tqdm import tqdm

from sqdf_bbo.progress import CostModel, RoundState, RunProgress
from sqdf_bbo.run import main

SIZES = [10, 20, 40, 80]


def record(rnd: int, size: int, propose: float, query: float, improve: float, evaluate: float, checkpoint: float,
           fit: float | None = None) -> dict:
    """A round record as rounds.jsonl holds it (round_wall_s: the phases plus the checkpoints)."""
    phases = {"propose": propose, "query": query, "improve": improve, "evaluate": evaluate, "checkpoint": checkpoint}
    return {"round": rnd, "round_size": size, "phase_wall_s": phases, "round_wall_s": sum(phases.values()),
            "train": {} if fit is None else {"proxy_fit_s": fit}}


def test_cost_model_predicts_the_hand_computed_remaining_time():
    m = CostModel(SIZES, steps=5, n_eval=10, refit_batch=16)
    # round 1: 0.2 s per design, 0.1 s per query, refit 1 s for ceil(10/16) = 1 mini-batch, 5 steps of 3 s,
    # evaluation 4 s plus 0.5 s of checkpoints
    m.learn_record(record(1, 10, propose=2.0, query=1.0, improve=16.0, evaluate=4.0, checkpoint=0.5, fit=1.0))
    assert m.unit_s("propose") == pytest.approx(0.2) and m.unit_s("query") == pytest.approx(0.1)
    assert m.unit_s("step") == pytest.approx(3.0) and m.unit_s("refit") == pytest.approx(1.0)
    assert m.unit_s("evaluate") == pytest.approx(4.5)
    # round 2: 20 designs 4 + 20 queries 2 + refit ceil(30/16) = 2 + 5 steps 15 + evaluation 4.5 = 27.5
    # round 3: 8 + 4 + ceil(70/16) = 5 + 15 + 4.5 = 36.5; round 4: 16 + 8 + ceil(150/16) = 10 + 15 + 4.5 = 53.5
    assert m.round_work(1) == pytest.approx({"propose": 4.0, "query": 2.0, "train": 17.0, "evaluate": 4.5})
    assert m.remaining_s(1) == pytest.approx(27.5 + 36.5 + 53.5)
    # round 2 with its query phase and 2 steps done: 4 + 2 + 2 + 6 = 14 s of it are done
    assert m.remaining_s(1, {"propose": 4.0, "query": 2.0, "train": 8.0}) == pytest.approx(13.5 + 36.5 + 53.5)

    # a second round replaces the first's costs (here twice as slow per design, 3 s per step again, a 2 s
    # refit of ceil(30/16) = 2 mini-batches)
    m.learn_record(record(2, 20, propose=8.0, query=2.0, improve=17.0, evaluate=5.0, checkpoint=0.0, fit=2.0))
    assert m.unit_s("propose") == pytest.approx(0.4) and m.unit_s("query") == pytest.approx(0.1)
    assert m.unit_s("refit") == pytest.approx(1.0) and m.unit_s("step") == pytest.approx(3.0)
    assert m.unit_s("evaluate") == pytest.approx(5.0)
    # round 3: 16 + 4 + (5 + 15) + 5 = 45; round 4: 32 + 8 + (10 + 15) + 5 = 70
    assert m.remaining_s(2) == pytest.approx(45.0 + 70.0)


def test_prior_before_any_measurement_then_each_phase_replaces_it():
    m = CostModel(SIZES, steps=5, n_eval=10)
    m.learn_pretrained({"round": 0, "round_wall_s": 30.0})
    # crude prior scaled by round 0's evaluation E = 30: E/(3 n_eval) per design, a tenth of it per query,
    # E/10 per step, E per evaluation, no refit
    assert m.round_work(0) == pytest.approx({"propose": 10.0, "query": 1.0, "train": 15.0, "evaluate": 30.0})
    assert not m.measured("propose")
    m.learn_record({"round": 1, "round_size": 10, "phase_wall_s": {"propose": 5.0, "query": 0.5}},
                   phases=("propose", "query"))
    assert m.measured("propose") and m.measured("query") and not m.measured("step")
    assert m.round_work(1) == pytest.approx({"propose": 10.0, "query": 1.0, "train": 15.0, "evaluate": 30.0})


def test_unknown_steps_are_counted_in_the_first_round_and_a_constant_refit_without_a_batch_size():
    m = CostModel(SIZES, steps=None, n_eval=10)
    m.learn_pretrained({"round": 0, "round_wall_s": 10.0})
    clock = FakeClock()
    p = RunProgress(m, 0, desc="t", file=io.StringIO(), clock=clock)
    p.advance("propose", 10)
    p.query_phase_done({"round": 1, "round_size": 10, "phase_wall_s": {"propose": 1.0, "query": 0.0}})
    for k in range(1, 8):
        p.step(k)
    p.train_done()
    p.end_round(record(1, 10, propose=1.0, query=0.0, improve=15.0, evaluate=2.0, checkpoint=0.0, fit=1.0))
    assert m.steps == 7 and m.unit_s("step") == pytest.approx(2.0) and m.unit_s("refit") == pytest.approx(1.0)
    assert m.train_s(3) == pytest.approx(1.0 + 14.0)  # the same refit every round
    p.close()


def test_resumed_model_learns_the_same_costs_as_the_live_one():
    recs = [record(1, 10, 2.0, 1.0, 16.0, 4.0, 0.5, fit=1.0), record(2, 20, 5.0, 1.5, 18.0, 4.2, 0.3, fit=2.0)]
    live = CostModel(SIZES, steps=5, n_eval=10, refit_batch=16)
    p = RunProgress(live, 0, desc="t", file=io.StringIO(), clock=FakeClock())
    for rec in recs:
        p.advance("propose", rec["round_size"])
        p.advance("query", rec["round_size"])
        p.query_phase_done(rec)
        for k in range(1, 6):
            p.step(k)
        p.train_done()
        p.end_round(rec)
    resumed = CostModel(SIZES, steps=5, n_eval=10, refit_batch=16)
    for rec in recs:
        resumed.learn_record(rec)
    for key in CostModel.KEYS:
        assert resumed.unit_s(key) == pytest.approx(live.unit_s(key)), key
    assert resumed.remaining_s(2) == pytest.approx(live.remaining_s(2))
    p.close()


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def simulate(sizes, steps_per_round, per_design, per_query, per_step, per_batch, batch, evaluate, checkpoint,
             noise, seed, extra_steps=0, declared_steps=True):
    """Drive a RunProgress as Run.run_round does, on a fake clock where every phase takes a known time (the
    per-unit costs times the units, each phase's time scaled by a random factor in [1 - noise, 1 + noise]).
    Returns [(round, time, bar's ETA, done, total)] after every update, the end time and the bar."""
    rng = random.Random(seed)
    clock = FakeClock()
    model = CostModel(sizes, steps_per_round if declared_steps else None, n_eval=64, refit_batch=batch)
    model.learn_pretrained({"round": 0, "round_wall_s": evaluate * 1.5})
    out = io.StringIO()
    bar = RunProgress(model, 0, desc="sim", file=out, clock=clock)
    bar.bar._time = clock  # tqdm's own ETA on the same clock (checked against eta_s below)
    bar.bar.start_t = bar.start_t
    samples = []

    def spend(seconds):
        clock.t += seconds * rng.uniform(1 - noise, 1 + noise)

    def sample(r):
        d = bar.bar.format_dict
        samples.append((r, clock.t, bar.eta_s(), bar.bar.n, bar.bar.total, tqdm.format_meter(**d)))

    cum = 0
    for r, n in enumerate(sizes):
        t0 = clock.t
        bar.set_postfix_str(f"round {r + 1}: sampling")
        spend(per_design * n)
        bar.advance("propose", n)
        sample(r)
        t_query = clock.t
        for i in range(0, n, 64):
            spend(per_query * min(64, n - i))
            bar.advance("query", min(64, n - i))
            sample(r)
        phases = {"propose": t_query - t0, "query": clock.t - t_query}
        spend(checkpoint / 2)  # after the query phase
        bar.query_phase_done({"round": r + 1, "round_size": n, "phase_wall_s": phases})
        cum += n
        t_improve = clock.t
        spend(per_batch * math.ceil(cum / batch))
        fit = clock.t - t_improve
        for k in range(1, steps_per_round + extra_steps + 1):
            spend(per_step)
            bar.step(k)
            sample(r)
        phases["improve"] = clock.t - t_improve
        bar.train_done()
        sample(r)
        t_eval = clock.t
        spend(evaluate)
        phases["evaluate"] = clock.t - t_eval
        spend(checkpoint / 2)
        phases["checkpoint"] = checkpoint
        rec = {"round": r + 1, "round_size": n, "phase_wall_s": phases, "round_wall_s": clock.t - t0,
               "train": {"proxy_fit_s": fit}}
        bar.end_round(rec)
        sample(r + 1)
    bar.close()
    return samples, clock.t, out.getvalue()


# the default aesthetic run on a 2-core CPU: 1:2:4:8 rounds of 5000 queries, 40 steps of ~1.5 s, a 512-batch
# proxy refit, 20 s evaluations
AESTHETIC = dict(sizes=[333, 666, 1333, 2668], steps_per_round=40, per_design=0.025, per_query=0.0003,
                 per_step=1.5, per_batch=2.0, batch=512, evaluate=20.0, checkpoint=0.8)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("declared_steps", [True, False])
def test_eta_from_round_2_on_is_within_25_percent_of_the_true_remaining_time(seed, declared_steps):
    samples, t_end, _ = simulate(**AESTHETIC, noise=0.15, seed=seed, declared_steps=declared_steps)
    checked = 0
    for r, t, eta, n, total, line in samples:
        true = t_end - t
        if r >= 1 and true > 0:  # from round 2 on
            assert eta is not None and abs(eta - true) <= 0.25 * true, (r, t, eta, true)
            checked += 1
        # what tqdm prints is this ETA
        if eta is not None:
            assert f"<{tqdm.format_interval(eta)}" in line, (line, eta)
    assert checked > 100


def test_round_1_steps_replace_the_prior_and_round_2_starts_exact_without_noise():
    # from round 1's second step on, the seconds between steps replace the prior's E/10 = 3 s per step
    model = CostModel(SIZES, steps=5, n_eval=10)
    model.learn_pretrained({"round": 0, "round_wall_s": 30.0})
    clock = FakeClock()
    p = RunProgress(model, 0, desc="t", file=io.StringIO(), clock=clock)
    for k in (1, 2, 3):
        clock.t += 1.25
        p.step(k)
    assert model.unit_s("step") == pytest.approx(1.25) and not model.measured("step")
    p.close()
    # with exact costs and no noise, every ETA from round 2 on is the true remaining time (up to the round's
    # checkpoint time, which the model counts with its evaluation: 0.8 s)
    samples, t_end, _ = simulate(**AESTHETIC, noise=0.0, seed=0)
    late = [(t, eta) for r, t, eta, *_ in samples if r >= 1]
    assert late and all(eta == pytest.approx(t_end - t, abs=0.8) for t, eta in late)


@pytest.mark.parametrize("extra_steps", [0, 25])
def test_bar_never_exceeds_its_total(extra_steps):
    """Not even when the agent runs more optimizer steps than its updates_per_round declares."""
    samples, _, text = simulate(**AESTHETIC, noise=0.3, seed=3, extra_steps=extra_steps)
    for r, t, eta, n, total, line in samples:
        assert 0 <= n <= total + 1e-9, (r, n, total)
    assert samples[-1][3] == pytest.approx(samples[-1][4])  # 100 % at the end
    assert "100%|" in text.replace("\r", "\n").splitlines()[-1]


def test_resumed_round_starts_with_its_done_work_and_counts_rate_from_here():
    m = CostModel(SIZES, steps=5, n_eval=10, refit_batch=16)
    m.learn_pretrained({"round": 0, "round_wall_s": 4.0})
    m.learn_record(record(1, 10, 2.0, 1.0, 16.0, 4.0, 0.5, fit=1.0))
    clock = FakeClock()
    state = RoundState(propose=20, query=20, steps=3)
    p = RunProgress(m, 1, state, spent_s=40.0, desc="t", file=io.StringIO(), clock=clock)
    spent, total, before = p.totals()
    # round 2 left: 27.5 s less its proposal 4, queries 2, refit 2 and 3 steps 9; then rounds 3 and 4
    assert spent == before == 40.0 and p.eta_s() == pytest.approx(27.5 - 17 + 36.5 + 53.5)
    assert total == pytest.approx(40.0 + p.eta_s())
    clock.t += 7.0
    p.step(4)
    p.step(5)
    assert p.eta_s() == pytest.approx(27.5 - 23 + 36.5 + 53.5)
    assert p.totals()[0] == pytest.approx(47.0)
    p.close()


def test_eta_log_lines(tmp_path, monkeypatch):
    log = tmp_path / "eta.jsonl"
    monkeypatch.setenv("SQDF_BBO_ETA_LOG", str(log))
    simulate(**{**AESTHETIC, "sizes": [64, 128]}, noise=0.0, seed=0)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["phase"] == "end" and lines[-1]["remaining_s"] == 0
    assert {"t", "elapsed_s", "round", "phase", "remaining_s", "eta_s", "measured"} <= set(lines[0])
    assert [x["round"] for x in lines] == sorted(x["round"] for x in lines)


def test_perf_eta_scores_the_lines_from_round_2_on_with_enough_time_left():
    from benchmarks.perf.perf_eta import analyse

    def line(t, r, eta, phase="train"):
        return {"t": t, "round": r, "phase": phase, "eta_s": eta}

    # the run ends at t = 100; round 1 lines are not scored (but reported), nor lines with < 10 s left
    lines = [line(0, 1, 50.0), line(40, 2, 66.0), line(70, 3, 27.0), line(95, 4, 20.0),
             line(100, 5, 0.0, phase="end")]
    out = analyse(lines, min_remaining_s=10.0)
    assert out["samples_r2"] == 2
    assert out["max_rel_err_r2"] == pytest.approx(0.1) and out["median_rel_err_r2"] == pytest.approx(0.1)
    assert out["max_abs_err_s_r2"] == pytest.approx(6.0)
    assert out["max_rel_err_r1"] == pytest.approx(0.5)
    assert out["eta_at_round_starts"] == "r2: 66s vs 60s; r3: 27s vs 30s; r4: 20s vs 5s"


# ---- a real run --------------------------------------------------------------------------------
TINY = ["--task", "levy", "--method", "sqdf", "--budget", "8", "--set", "run.rounds=2", "--set", "run.n_eval=8",
        "--set", "updates_per_round=2", "--set", "proxy_epochs=2", "--set", "num_steps=5",
        "--set", "q_estimator=tweedie", "--set", "on_policy_batch=4", "--set", "train_batch=8"]


def test_a_tiny_run_shows_the_bar_and_no_progress_hides_it(tmp_path, capfd):
    assert main([*TINY, "--out", str(tmp_path / "bar")]) == 0
    out, err = capfd.readouterr()
    bars = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("levy/sqdf:")]
    assert any("round 2/2: fine-tuning" in x for x in bars) and "100%|" in bars[-1]
    assert any(x.startswith('{"eval_reward"') for x in out.splitlines())  # the final lines as before
    quiet = ["--task", "levy", "--method", "random", "--budget", "4", "--set", "run.rounds=1", "--set",
             "run.n_eval=8", "--out", str(tmp_path / "quiet"), "--no-progress"]
    assert main(quiet) == 0
    out, err = capfd.readouterr()
    assert "levy/random:" not in err and "%|" not in err
    assert any(x.startswith('{"eval_reward"') for x in out.splitlines())


def test_a_resumed_run_predicts_from_its_recorded_rounds(tmp_path):
    """Killed after round 1, the resumed run's bar starts with round 1's measured costs (rounds.jsonl's
    phase_wall_s), not the prior: its first ETA log line is measured and counts round 1 as done."""
    import os
    import subprocess
    import sys

    out = str(tmp_path / "runs")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    killed = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *TINY, "--out", out, "--no-progress",
                             "--fault", "crash_after_round=1"], env=env, capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr
    log = tmp_path / "eta.jsonl"
    env = dict(os.environ, SQDF_BBO_ETA_LOG=str(log), HF_HUB_OFFLINE="1")
    resumed = subprocess.run([sys.executable, "-m", "sqdf_bbo.run", *TINY, "--out", out, "--resume"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    run = next(tmp_path.glob("runs/*"))
    rounds = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    first = lines[0]
    assert first["round"] == 2 and first["measured"]
    sizes = json.loads((run / "config.json").read_text())["round_sizes"]
    model = CostModel(sizes, steps=2, n_eval=8, refit_batch=512)
    model.learn_pretrained(rounds[0])
    model.learn_record(rounds[1])
    assert first["spent_s"] == pytest.approx(rounds[1]["round_wall_s"], abs=0.05)
    assert first["remaining_s"] == pytest.approx(sum(model.round_work(1).values()))
    assert lines[-1]["phase"] == "end" and lines[-1]["remaining_s"] == 0

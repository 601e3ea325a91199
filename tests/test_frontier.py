"""Tests of benchmarks/report/frontier_stats.py (hand-computed frontiers) and benchmarks/run/frontier.py (grid rule,
argument checks, dry run, and --report-only over fake run folders). Nothing here trains a model."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.report import frontier_stats as fs
from benchmarks.run import frontier as fr
from fake_runs import write_fake_frontier
from sqdf_bbo.agents import Agent, resolve_method

# ---- the frontier math against hand-computed examples --------------------------------------------
# Grid points (mean KL in nats, mean reward):
#   A (0.5, 1.0), B (2, 3), C (4, 2.5), D (20, 5), E (2, 2)
# Pretrained r_pre = 0. Upper concave envelope in linear KL: slopes from the start A 2, B 1.5 -> A;
# from A: B 1.33, C 0.43, D 0.21 -> B; from B: C -0.25, D 0.11 -> D. C is below the chord B-D,
# E has B's KL and a lower reward.
KL = [0.5, 2.0, 4.0, 20.0, 2.0]
REWARD = [1.0, 3.0, 2.5, 5.0, 2.0]


def test_envelope_drops_points_below_it():
    xs, ys, src = fs.envelope(KL, REWARD, r_pre=0.0)
    assert xs.tolist() == [0.0, 0.5, 2.0, 20.0]  # the pretrained start, then A, B, D by KL
    assert ys.tolist() == [0.0, 1.0, 3.0, 5.0] and src.tolist() == [-1, 0, 1, 3]
    # of two identical points one is a vertex
    assert fs.envelope([1.0, 1.0], [2.0, 2.0], 0.0)[2].tolist() == [-1, 0]
    # a KL-0 grid point is not on the frontier: the start stands for it
    xs0, ys0, _ = fs.envelope([0.0, 1.0], [9.0, 2.0], r_pre=0.0)
    assert xs0.tolist() == [0.0, 1.0] and ys0.tolist() == [0.0, 2.0]


def test_envelope_at_matched_kl_is_linear_in_kl():
    xs, ys, _ = fs.envelope(KL, REWARD, r_pre=0.0)
    got = fs.envelope_at(xs, ys, [0.0, 0.25, 1.0, 10.0, 20.0, 100.0])
    # KL 0    : the pretrained start, 0
    # KL 0.25 : start..A: 0 + (1 - 0) * 0.25 / 0.5 = 0.5
    # KL 1    : A..B: 1 + (3 - 1) * (1 - 0.5) / 1.5 = 1.666667 (a 2/3 : 1/3 mixture of A and B)
    # KL 10   : B..D: 3 + (5 - 3) * (10 - 2) / 18 = 3.888889
    # KL 20   : D itself, 5 (reached: the largest KL)
    # KL 100  : beyond the largest KL 20 -> not reached (NaN)
    assert got[:5] == pytest.approx([0.0, 0.5, 5 / 3, 35 / 9, 5.0], abs=1e-9)
    assert math.isnan(got[5])


def test_a_point_below_the_pretrained_model_is_beaten_by_a_mixture():
    # (1, -0.2) lies below the chord from the start (0, 0) to (10, 0.4): mixing the pretrained model with the
    # KL-10 policy gives 0.04 * k at KL k, so f(0.5) = 0.02, f(1) = 0.04, f(2) = 0.08
    xs, ys, _ = fs.envelope([1.0, 10.0], [-0.2, 0.4], r_pre=0.0)
    assert fs.envelope_at(xs, ys, [0.5, 1.0])[0] == pytest.approx(0.02)
    assert fs.best_up_to(xs, ys, [0.5, 1.0, 2.0]).tolist() == pytest.approx([0.02, 0.04, 0.08])
    assert fs.best_up_to(xs, ys, [10 ** 0.5])[0] == pytest.approx(0.04 * 10 ** 0.5)
    # ...and R(k), the best score reachable at KL <= k, never drops below the pretrained 0
    xs, ys, _ = fs.envelope([1.0, 10.0], [-0.5, -0.1], 0.0)
    assert fs.best_up_to(xs, ys, [0.5, 5.0, 50.0]).tolist() == [0.0, 0.0, 0.0]


def test_area_under_frontier_hand_computed():
    ln10 = math.log(10)
    # 1) points (0.1, 0.2), (1, 0.5), (10, 0.6) in score units, cap 100, low 0.1 -> u = log10 KL in [-1, 2];
    #    all three are vertices (slopes 2, 0.33, 0.011). The envelope is linear in KL, so with
    #    int 10^u du = (k_b - k_a) / ln 10 on each piece:
    #    u in [-1, 0]: 0.2 + (0.3 / 0.9) * ((1 - 0.1) / ln 10 - 0.1) = 0.296955
    #    u in [0, 1]:  0.5 + (0.1 / 9) * ((10 - 1) / ln 10 - 1) = 0.532318
    #    u in [1, 2]:  beyond the last point the best reachable stays 0.6.  AUF = 1.429273 / 3 = 0.476424
    xs, ys, _ = fs.envelope([0.1, 1.0, 10.0], [0.2, 0.5, 0.6], 0.0)
    assert 0.2 + (0.3 / 0.9) * (0.9 / ln10 - 0.1) == pytest.approx(0.296955, abs=1e-6)
    assert fs.area_under_frontier(xs, ys, cap=100, low=0.1) == pytest.approx(0.476424, abs=1e-6)
    # 2) one point (1, 0.3), cap 10: on u in [-1, 0] the start segment R = 0.3 * 10^u (linear in KL), so
    #    integral = 0.3 * (10^0 - 10^-1) / ln 10 = 0.27 / 2.302585 = 0.117260; on u in [0, 1]: 0.3.
    #    AUF = (0.117260 + 0.3) / 2 = 0.208630
    xs, ys, _ = fs.envelope([1.0], [0.3], 0.0)
    assert fs.area_under_frontier(xs, ys, cap=10, low=0.1) == pytest.approx(0.208630, abs=1e-6)
    # 3) first point below the pretrained model: (1, -0.2), (10, 0.4), cap 100. The envelope skips (1, -0.2):
    #    u in [-1, 1]: R = 0.04 k, integral 0.04 * (10 - 0.1) / ln 10 = 0.171984; u in [1, 2]: 0.4.
    #    AUF = (0.171984 + 0.4) / 3 = 0.190661
    xs, ys, _ = fs.envelope([1.0, 10.0], [-0.2, 0.4], 0.0)
    assert fs.area_under_frontier(xs, ys, cap=100, low=0.1) == pytest.approx(0.190661, abs=1e-6)
    # 4) never better than pretrained -> 0; the pretrained model alone -> 0
    xs, ys, _ = fs.envelope([1.0, 10.0], [-0.5, -0.1], 0.0)
    assert fs.area_under_frontier(xs, ys) == 0.0
    assert fs.area_under_frontier(np.array([0.0]), np.array([0.0])) == 0.0
    with pytest.raises(ValueError, match="0 < low < cap"):
        fs.area_under_frontier(xs, ys, cap=0.1, low=0.1)


def test_summary_with_seeds_normalises_and_flags_not_reached():
    # grid points A, B, D of the example with seeds 0 and 1: A's KL (0.4, 0.6) -> mean 0.5, reward (0.5, 1.5)
    # -> 1.0; B and D without spread. Normalisation low = 0 (pretrained), high = 10 -> score = reward / 10.
    kl = [np.array([0.4, 0.6]), np.array([2.0, 2.0]), np.array([20.0, 20.0])]
    rw = [np.array([0.5, 1.5]), np.array([3.0, 3.0]), np.array([5.0, 5.0])]
    s = fs.frontier_summary(kl, rw, r_pre=0.0, norm_low=0.0, norm_high=10.0, seed_runs=[[0, 1]] * 3)
    assert s["reward_at_kl1"] == pytest.approx(5 / 3) and s["score_at_kl1"] == pytest.approx(1 / 6)
    assert s["reward_at_kl10"] == pytest.approx(35 / 9)
    assert s["not_reached_kl100"] and math.isnan(s["reward_at_kl100"]) and math.isnan(s["score_at_kl100_ci_low"])
    assert not s["not_reached_kl1"] and s["kl_max"] == 20.0 and s["n_frontier"] == 3
    # KL 1 = 2/3 A + 1/3 B per seed: (1/3 + 1, 1 + 1) = (1.333333, 2); t(1, 0.975) = 12.706205,
    # sd 0.471405, half width 12.706205 * 0.471405 / sqrt 2 = 4.235402
    assert (s["reward_at_kl1_ci_low"], s["reward_at_kl1_ci_high"]) == pytest.approx((5 / 3 - 4.235402, 5 / 3 + 4.235402), abs=1e-5)
    assert s["score_at_kl1_ci_low"] == pytest.approx(s["reward_at_kl1_ci_low"] / 10)
    xs, ys, _ = fs.envelope([0.5, 2.0, 20.0], [1.0, 3.0, 5.0], 0.0)
    assert s["auf"] == pytest.approx(fs.area_under_frontier(xs, ys / 10.0))
    assert s["auf_ci_low"] < s["auf"] < s["auf_ci_high"]
    # no spread at all -> the CI collapses onto the point
    s0 = fs.frontier_summary([np.array([1.0, 1.0])], [np.array([2.0, 2.0])], 0.0, 0.0, 10.0, targets=[1.0])
    assert s0["reward_at_kl1_ci_low"] == s0["reward_at_kl1"] == s0["reward_at_kl1_ci_high"] == 2.0


# ---- the grid rule -----------------------------------------------------------------------------
class BetaAgent(Agent):
    """A future KL-regularised agent: it has a beta key, so it sweeps beta."""

    default_config = {"beta": 1.0, "lr": 0.5}


class LrAgent(Agent):
    default_config = {"lr": 0.2}


class NoKnobAgent(Agent):
    default_config = {"width": 3}


class DeclaredKnobAgent(Agent):
    """Declares its own knob: it wins over the beta and lr keys."""

    default_config = {"beta": 1.0, "lr": 0.5, "keep": 0.2}
    frontier_knob = ("keep", (0.5, 0.05, 0.2))


class BadKnobAgent(Agent):
    default_config = {"lr": 0.5}
    frontier_knob = ("keep", (0.1,))


def test_grid_rule_same_beta_grid_and_lr_times_factors():
    kl = ["sqdf", "seiko", "adjoint-matching", f"{__name__}:BetaAgent"]
    plain = ["alignprop", "draft", "draft-k", "draft-1", "draft-lv", "ddpo", "ddpo-sf", f"{__name__}:LrAgent"]
    plans = fr.plan_grid(["pretrained", *kl, *plain])
    assert plans["pretrained"].knob is None and plans["pretrained"].folder(math.nan) == "pretrained__default"
    for m in kl:
        assert plans[m].knob == "beta" and plans[m].values == [0.01, 0.1, 1.0, 10.0] == list(fr.BETA_GRID), m
    for m in plain:
        lr = resolve_method(m).default_config["lr"]
        assert plans[m].knob == "lr", m
        assert plans[m].values == pytest.approx([lr * f for f in (0.01, 0.1, 1, 10)], rel=1e-9), m
        assert plans[m].source == "rule"
    assert plans["alignprop"].folder(1e-05) == "alignprop__lr=1e-05"
    assert plans[f"{__name__}:BetaAgent"].folder(0.1) == f"{__name__.replace(':', '.')}.BetaAgent__beta=0.1"
    over = fr.plan_grid(["alignprop", "sqdf"], grid_args=["sqdf=3,0.3"])
    assert over["sqdf"].values == [0.3, 3.0] and over["sqdf"].source == "--grid"
    assert over["alignprop"].source == "rule"
    with pytest.raises(fr.SweepError, match="give its values with --grid alignprop"):
        fr.plan_grid(["alignprop"], knob_args=["alignprop=max_grad_norm"])
    with pytest.raises(fr.SweepError, match="neither a beta nor an lr"):
        fr.plan_grid([f"{__name__}:NoKnobAgent"])
    assert fr.plan_grid(["alignprop"], ["alignprop=5,10"], ["alignprop=updates_per_round"])["alignprop"].values == [5, 10]


# ---- the CLI: argument errors and the dry run ------------------------------------------------------
BASE = ["--tasks", "levy", "--budget", "100", "--seeds", "0-1", "--no-progress"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "sqdf,nope"], "unknown method 'nope'"),
    (["--methods", "sqdf", "--grid", "alignprop=0.1"], "--grid names method 'alignprop' that is not in --methods"),
    (["--methods", "sqdf", "--grid", "sqdf=0.1,abc"], "setting beta='abc' must be float"),
    (["--methods", "sqdf", "--grid", "sqdf=0.1,a b"], "--grid sqdf: 'a b' is neither a number nor a plain word"),
    (["--methods", "sqdf", "--grid", "sqdf=-1"], "must be finite and >= 0"),
    (["--methods", "sqdf", "--grid", "sqdf"], "--grid expects METHOD=..."),
    (["--methods", "sqdf", "--grid", "sqdf=1", "--grid", "sqdf=2"], "--grid is given twice"),
    (["--methods", "pretrained", "--grid", "pretrained=1"], "'pretrained' is a single point"),
    (["--methods", "alignprop", "--knob", "alignprop=bogus"], "AlignPropAgent has no setting 'bogus'"),
    (["--methods", "sqdf", "--set", "beta=1"], "'beta' is the swept knob of sqdf"),
    (["--methods", "pretrained", "--set", "updates_per_round=20"], "unknown setting(s) 'updates_per_round'"),
    (["--methods", "sqdf", "--set-for", "ddpo", "lr=1"], "--set-for names method(s) ddpo"),
    (["--methods", "sqdf", "--kl-targets", "1,x"], "--kl-targets must be"),
    (["--methods", "sqdf", "--confidence", "1.5"], "--confidence must be in (0, 1)"),
])
def test_bad_arguments_are_one_line_errors_before_anything_runs(tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    assert fr.main([*BASE, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_dry_run_lists_the_grid_folders(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = [*BASE, "--methods", "pretrained,sqdf,alignprop", "--out", str(out), "--grid", "sqdf=0.1,10",
            "--set", "num_steps=5", "--set-for", "sqdf", "updates_per_round=2", "--dry-run"]
    assert fr.main(argv) == 0
    cap = capsys.readouterr()
    listed = {line.split()[1] for line in cap.out.splitlines()}
    points = ["pretrained__default", "sqdf__beta=0.1", "sqdf__beta=10", "alignprop__lr=1e-05",
              "alignprop__lr=0.0001", "alignprop__lr=0.001", "alignprop__lr=0.01"]
    method = {p: p.split("__")[0] for p in points}
    expected = {str(out / p / f"levy__{method[p]}__b100__s{s}") for p in points for s in (0, 1)}
    assert listed == expected
    assert all(line.startswith("new ") for line in cap.out.splitlines())
    assert "sqdf: beta = 0.1, 10 [--grid]" in cap.err and "alignprop: lr = 1e-05, 0.0001, 0.001, 0.01 [rule]" in cap.err
    assert not out.exists()  # a dry run writes nothing
    specs = fr.build_specs(fr.plan_grid(["sqdf"], ["sqdf=0.1"]), ["levy"], [0], [100], out, ["num_steps=5"], {}, False, 1)
    assert specs[0].argv()[-4:] == ["--set", "num_steps=5", "--set", "beta=0.1"]


# ---- --report-only over fake run folders ---------------------------------------------------------
GRID = {"pretrained": None, "sqdf": ("beta", [0.01, 0.1, 1.0, 10.0]), "seiko": ("beta", [0.01, 0.1, 1.0, 10.0]),
        "alignprop": ("lr", [1e-5, 1e-4, 1e-3, 1e-2])}


@pytest.fixture(scope="module")
def fake_frontier(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontier")
    write_fake_frontier(root / "runs", GRID, tasks=("ackley", "levy-manifold"), seeds=range(3))
    return root


def test_report_only_writes_csv_png_and_leaderboard(fake_frontier, tmp_path, capsys):
    runs = fake_frontier / "runs"
    csv, board, md = tmp_path / "frontier.csv", tmp_path / "fl.csv", tmp_path / "fl.md"
    argv = ["--report-only", "--out", str(runs), "--csv", str(csv), "--plots", str(tmp_path), "--leaderboard",
            str(board), "--md", str(md)]
    assert fr.main(argv) == 0
    pts = pd.read_csv(csv)
    assert len(pts) == 2 * (1 + 4 + 4 + 4)  # tasks x grid points
    assert set(pts["knob"].dropna()) == {"beta", "lr"} and (pts["n_seeds"] == 3).all()
    for col in ("eval_reward_mean", "eval_reward_ci_low", "eval_reward_ci_high", "path_kl_mean", "path_kl_ci_high",
                "normalised_score_mean", "invalid_frac_mean", "prior_logpdf_ci_low", "vendi_mean",
                "wall_time_s_mean", "on_frontier", "eval_reward_median", "eval_reward_iqm",
                "normalised_score_median", "normalised_score_iqm", "failed_frac"):
        assert col in pts, col
    # the CSV's mean is the mean over the seeds' final.json
    row = pts[(pts["task"] == "ackley") & (pts["method"] == "sqdf") & (pts["value"] == 0.1)].iloc[0]
    vals = [json.loads((runs / "sqdf__beta=0.1" / f"ackley__sqdf__b200__s{s}" / "final.json").read_text())["eval_reward"]
            for s in range(3)]
    assert row["eval_reward_mean"] == pytest.approx(np.mean(vals), rel=1e-5)
    assert row["eval_reward_ci_low"] <= row["eval_reward_mean"] <= row["eval_reward_ci_high"]
    # the 95% Student-t interval of the three seeds: mean +- t(2, 0.975) sd / sqrt 3, t = 4.302653
    half = 4.302653 * np.std(vals, ddof=1) / math.sqrt(3)
    assert (row["eval_reward_ci_low"], row["eval_reward_ci_high"]) == pytest.approx(
        (np.mean(vals) - half, np.mean(vals) + half), rel=1e-5)
    assert row["eval_reward_median"] == pytest.approx(np.median(vals), rel=1e-5)
    for task in ("ackley", "levy-manifold"):
        png = tmp_path / f"frontier_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    lead = pd.read_csv(board)
    assert len(lead) == 2 * 4 and {"score_at_kl1", "reward_at_kl10_ci_low", "not_reached_kl100", "auf",
                                   "auf_ci_high", "best_score_manifold", "failed_runs",
                                   "failed_frac_frontier"} <= set(lead.columns)
    # the leaderboard's AUF is the hand-checked function applied to the CSV's point means
    r = lead[(lead["task"] == "ackley") & (lead["method"] == "alignprop")].iloc[0]
    g = pts[(pts["task"] == "ackley") & (pts["method"] == "alignprop")]
    xs, ys, _ = fs.envelope(g["path_kl_mean"], g["normalised_score_mean"], 0.0)
    assert r["auf"] == pytest.approx(fs.area_under_frontier(xs, ys), abs=1e-4)
    assert r["failed_runs"] == pts.loc[(pts["task"] == "ackley") & (pts["method"] == "alignprop"), "n_failed"].sum()
    # best score only on -manifold tasks
    assert lead.loc[lead["task"] == "ackley", "best_score_manifold"].isna().all()
    assert lead.loc[lead["task"] == "levy-manifold", "best_score_manifold"].notna().all()
    text = md.read_text()
    assert "| levy-manifold | sqdf |" in text and "beta = 0.01, 0.1, 1, 10" in text
    assert not list(tmp_path.glob("*_samples.png"))  # no run rendered samples: no sample figure


def test_sample_figure_takes_each_methods_point_nearest_the_matched_kl(tmp_path):
    """Image-tier report: per method, seed 0's samples of the grid point whose mean path KL is nearest
    10 nats in log10 (checked against the fake runs' final.json by hand), the pretrained panel first."""
    from PIL import Image

    write_fake_frontier(tmp_path / "runs", GRID, tasks=("aesthetic",), seeds=range(2), with_png=True)
    runs, _ = fr.load_frontier_runs(tmp_path / "runs")
    pts = fr.point_table(runs)
    picks = fr.samples_at_kl_picks(pts, runs, "aesthetic", 200)
    assert picks[0][0].startswith("pretrained") and picks[0][2] == "right" and picks[0][1] == picks[1][1]
    got = {label.split(" ")[0]: png for label, png, _ in picks[1:]}
    for method, folders in (("sqdf", "sqdf__beta=*"), ("alignprop", "alignprop__lr=*")):
        kl = {}
        for d in (tmp_path / "runs").glob(folders):
            vals = [json.loads(f.read_text())["path_kl"] for f in d.glob("*/final.json")]
            kl[d] = sum(vals) / len(vals)
        nearest = min(kl, key=lambda d: abs(math.log10(kl[d]) - 1.0))
        assert got[method] == nearest / "aesthetic__{}__b200__s0".format(method) / "samples.png"
    assert "pretrained" not in got  # KL 0: drawn once, as the reference panel
    im = Image.open(fr.plot_samples_at_kl(pts, runs, "aesthetic", 200, tmp_path / "s.png"))
    assert im.mode == "P" and im.size[0] > 600  # 256-colour palette, four panels wide
    assert fr.plot_samples_at_kl(pts, runs.assign(run_dir="/nonexistent"), "aesthetic", 200, tmp_path / "n.png") is None


def test_report_only_with_empty_paths_writes_only_the_runs_csv(fake_frontier, tmp_path, monkeypatch):
    """--csv '' --plots '' --leaderboard '' write none of the tables (the default paths are the committed
    synthetic tables, which a rebuild of another folder's runs CSV must not touch): only --runs-csv."""
    monkeypatch.chdir(tmp_path)  # any default path would land here
    runs_csv = tmp_path / "out" / "runs.csv"
    assert fr.main(["--report-only", "--out", str(fake_frontier / "runs"), "--csv", "", "--plots", "",
                    "--leaderboard", "", "--runs-csv", str(runs_csv)]) == 0
    assert len(pd.read_csv(runs_csv)) == 2 * (1 + 4 + 4 + 4) * 3  # tasks x grid points x seeds
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == ["out/runs.csv"]


def test_report_only_filters_and_checks_the_knob_in_config(fake_frontier, tmp_path, capsys):
    runs = fake_frontier / "runs"
    assert fr.main(["--report-only", "--out", str(runs), "--methods", "sqdf,pretrained", "--tasks", "ackley",
                    "--csv", str(tmp_path / "f.csv"), "--plots", "", "--leaderboard", ""]) == 0
    pts = pd.read_csv(tmp_path / "f.csv")
    assert set(pts["method"]) == {"sqdf", "pretrained"} and set(pts["task"]) == {"ackley"}
    assert not list(tmp_path.glob("*.png"))
    bad = tmp_path / "bad"
    write_fake_frontier(bad, {"sqdf": ("beta", [0.1])}, tasks=("ackley",), seeds=[0])
    (bad / "sqdf__beta=0.1").rename(bad / "sqdf__beta=1")  # folder and config.json disagree
    assert fr.main(["--report-only", "--out", str(bad), "--csv", str(tmp_path / "x.csv"), "--plots", ""]) == 2
    assert "its folder says beta=1 but config.json has agent.beta=0.1" in capsys.readouterr().err
    assert fr.main(["--report-only", "--out", str(tmp_path / "none"), "--csv", str(tmp_path / "x.csv")]) == 2


def test_declared_knob_wins_and_peer_fine_tuners_sweep_their_own_knob():
    """raft sweeps keep_fraction, diffusion-nft nft_beta (their declared frontier_knob), not lr; the other
    methods' plans are unchanged; --knob / --grid still override the declaration."""
    plug = f"{__name__}:DeclaredKnobAgent"
    plans = fr.plan_grid(["raft", "diffusion-nft", "sqdf", "alignprop", "best-of-n", plug])
    assert (plans["raft"].knob, plans["raft"].values) == ("keep_fraction", [0.03, 0.1, 0.25, 0.5])
    assert (plans["diffusion-nft"].knob, plans["diffusion-nft"].values) == ("nft_beta", [0.1, 1.0, 10.0, 100.0])
    assert (plans[plug].knob, plans[plug].values, plans[plug].source) == ("keep", [0.05, 0.2, 0.5], "rule")
    assert (plans["sqdf"].knob, plans["sqdf"].values) == ("beta", list(fr.BETA_GRID))
    assert (plans["alignprop"].knob, plans["alignprop"].values) == ("lr", [1e-05, 0.0001, 0.001, 0.01])
    assert (plans["best-of-n"].knob, plans["best-of-n"].values) == ("oversample", list(fr.COUNT_GRID))
    over = fr.plan_grid(["raft", "diffusion-nft"], grid_args=["raft=0.2,0.4"], knob_args=["diffusion-nft=lr"])
    assert (over["raft"].knob, over["raft"].values, over["raft"].source) == ("keep_fraction", [0.2, 0.4], "--grid")
    assert over["diffusion-nft"].knob == "lr" and over["diffusion-nft"].source == "--knob"
    assert over["diffusion-nft"].values == pytest.approx([3e-6, 3e-5, 3e-4, 3e-3], rel=1e-9)
    assert fr.plan_grid(["alignprop"], knob_args=["alignprop=lr"])["alignprop"].values == plans["alignprop"].values
    with pytest.raises(fr.SweepError, match="frontier_knob .* must name one of its settings"):
        fr.plan_grid([f"{__name__}:BadKnobAgent"])


def test_best_of_n_sweeps_its_oversample_grid():
    from baselines.best_of_n import BestOfNAgent
    from benchmarks.run import frontier as fr

    assert fr.default_knob("best-of-n", BestOfNAgent) == "oversample"
    assert fr.rule_values("best-of-n", BestOfNAgent, "oversample") == [2, 4, 16, 64]


def test_prior_free_methods_neither_set_the_pretrained_reward_nor_get_a_frontier():
    """Random search's round 0 (its own designs, path KL NaN) must not move norm_low; a method whose runs have
    no path KL (random, BO, FK steering) gets no AUF or matched-KL score, only its -manifold best score."""
    import numpy as np
    import pandas as pd

    from benchmarks.report import frontier_stats as fs
    from benchmarks.report.run_folders import normalisation_bounds

    finals = pd.DataFrame({"task": ["t-manifold"] * 4, "budget": [100] * 4, "seed": [0, 1, 0, 1],
                           "method": ["sqdf", "sqdf", "random", "random"],
                           "round0_eval_reward": [-10.0, -12.0, -90.0, -95.0],
                           "round0_path_kl": [0.0, 0.0, np.nan, np.nan], "optimal_value": [0.0] * 4})
    rounds = pd.DataFrame({"task": ["t-manifold"], "eval_reward": [-1.0]})
    b = normalisation_bounds(finals, rounds)
    assert b["norm_low"].iloc[0] == -11.0  # the mean over the prior-sampling runs' seeds only

    runs = pd.DataFrame({"task": "t-manifold", "method": ["sqdf"] * 2 + ["random"] * 2, "budget": 100,
                         "knob": ["beta"] * 2 + [""] * 2, "value": [1.0, 1.0, np.nan, np.nan], "seed": [0, 1, 0, 1],
                         "path_kl": [2.0, 3.0, np.nan, np.nan], "eval_reward": [-8.0, -9.0, -20.0, -30.0],
                         "normalised_score": [0.3, 0.2, -0.8, -1.7], "norm_low": -11.0, "norm_high": 0.0,
                         "norm_high_source": "optimum"})
    board = fs.frontier_leaderboard(runs).set_index("method")
    assert board.loc["sqdf", "kl_measured"] and np.isfinite(board.loc["sqdf", "auf"])
    assert not board.loc["random", "kl_measured"] and np.isnan(board.loc["random", "auf"])
    assert board.loc["random", "best_score_manifold"] == -1.25
    assert "no path KL" in fs.frontier_markdown(board.reset_index())


def test_verdicts_compare_confidence_intervals_by_hand():
    """Where one method's frontier lies against another's: above / below when the 95 % CIs separate, on when
    they overlap, only X when one frontier does not reach that KL (docs/results.md, 'What the frontier says')."""
    from benchmarks.report import frontier_readme as fr_md

    def row(method, auf, at1, at10, kl_measured=True):
        r = {"task": "t", "method": method, "kl_measured": kl_measured}
        for key, (p, lo, hi) in {"auf": auf, "score_at_kl1": at1, "score_at_kl10": at10,
                                 "score_at_kl100": (np.nan,) * 3}.items():
            r[key], r[key + "_ci_low"], r[key + "_ci_high"] = p, lo, hi
        return r

    nan3 = (np.nan,) * 3
    board = pd.DataFrame([
        row("ref", (0.30, 0.28, 0.32), (0.20, 0.18, 0.24), (0.45, 0.43, 0.50)),
        row("weak", (0.20, 0.17, 0.27), (0.10, 0.08, 0.13), nan3),
        row("close", (0.25, 0.20, 0.29), (0.30, 0.25, 0.35), (0.40, 0.30, 0.44)),
        row("strong", (0.40, 0.33, 0.45), (0.21, 0.19, 0.23), nan3),
        row("pretrained", (0.0, 0.0, 0.0), nan3, nan3),
        row("bo", nan3, nan3, nan3, kl_measured=False),
    ])
    ref = board.iloc[0]
    assert fr_md.verdict(ref, board.iloc[1], "auf", "ref", "weak") == "above"     # 0.28 > 0.27
    assert fr_md.verdict(ref, board.iloc[2], "auf", "ref", "close") == "on"       # 0.28 < 0.29
    assert fr_md.verdict(ref, board.iloc[2], "score_at_kl1", "ref", "close") == "below"  # 0.24 < 0.25
    assert fr_md.verdict(ref, board.iloc[3], "auf", "ref", "strong") == "below"   # 0.32 < 0.33
    assert fr_md.verdict(ref, board.iloc[1], "score_at_kl10", "ref", "weak") == "only ref"
    assert fr_md.verdict(board.iloc[1], ref, "score_at_kl10", "weak", "ref") == "only ref"
    assert fr_md.verdict(ref, board.iloc[1], "score_at_kl100", "ref", "weak") == "neither"
    text = fr_md.verdicts(board, "ref")
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    # sorted by AUF, the reference, the pretrained model and methods without path KL left out
    assert lines == ["| strong | below | on | only ref | neither |",
                     "| close | on | below | on | neither |",
                     "| weak | above | above | only ref | neither |"]
    one = board.iloc[1].copy()
    one["seeds_per_point"] = 1  # a point "CI" from one seed says nothing
    assert fr_md.verdict(ref, one, "auf", "ref", "weak") == "one seed"
    assert fr_md.verdict(ref, one, "score_at_kl10", "ref", "weak") == "only ref"
    with pytest.raises(SystemExit, match="no task"):
        fr_md.verdicts(board, "missing")
    with pytest.raises(SystemExit, match="cannot read the frontier table"):
        fr_md.main(["/nonexistent/board.csv", "--verdicts", "ref"])


def test_near_kl_picks_each_methods_grid_point_nearest_on_a_log_scale(tmp_path, capsys):
    """Naturalness at matched KL: per method the grid point whose path KL is nearest the target in log
    distance (3 nats: 2 beats 5, since |log 2/3| = 0.41 < |log 5/3| = 0.51), 'none within' beyond the factor."""
    from benchmarks.report import frontier_readme as fr_md

    def pt(method, knob, value, kl, reward, fd):
        return {"task": "t", "method": method, "knob": knob, "value": value, "n_seeds": 3, "path_kl_mean": kl,
                "eval_reward_mean": reward, "fd_phi_mean": fd}

    points = pd.DataFrame([pt("pretrained", "", np.nan, 0.0, -1.0, 100.0),
                           pt("a", "beta", 1.0, 0.5, -0.5, 101.0), pt("a", "beta", 0.1, 2.0, 0.5, 102.0),
                           pt("a", "beta", 0.01, 5.0, 1.5, 103.0),
                           pt("b", "lr", 1e-3, 0.2, 0.0, 104.0), pt("b", "lr", 1e-2, 40.0, 2.0, 105.0),
                           pt("bo", "", np.nan, np.nan, 3.0, 106.0)])
    text = fr_md.near_kl(points, 3.0)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert rows == ["| pretrained | – | 3 | -1 | 0 | 100 |",
                    "| a | beta = 0.1 | 3 | 0.5 | 2 | 102 |",
                    "| b | – | – | – | none within | – |"]  # 0.2 and 40 are both more than ×3 from 3; bo has no KL
    assert "| b | lr = 0.01 | 3 | 2 | 40 | 105 |" in fr_md.near_kl(points, 20.0)
    csv = tmp_path / "points.csv"
    points.to_csv(csv, index=False)
    fr_md.main([str(csv), "--near-kl", "4"])  # log distance: |log 5/4| = 0.22 < |log 2/4| = 0.69
    assert "| a | beta = 0.01 | 3 | 1.5 | 5 | 103 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="must be > 0"):
        fr_md.main([str(csv), "--near-kl", "0"])
    points.drop(columns="path_kl_mean").to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="lacks path_kl_mean"):
        fr_md.main([str(csv), "--near-kl", "3"])


# ---- one row per run: the runs CSV rebuilds every table and plot ------------------------------------
def _tables(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = fr.canonical_runs(runs)
    return fr.point_table(runs), fs.frontier_leaderboard(runs)


def _same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:  # column by column, exactly (NaN = NaN)
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True, obj=col)


def test_runs_csv_rebuilds_the_tables_and_plots_without_the_run_folders(fake_frontier, tmp_path, capsys):
    runs_dir, runs_csv = fake_frontier / "runs", tmp_path / "frontier_runs.csv"
    a, b = tmp_path / "folders", tmp_path / "csv"

    def report(source, where):
        return [*source, "--csv", str(where / "frontier.csv"), "--plots", str(where), "--leaderboard",
                str(where / "board.csv"), "--md", str(where / "board.md")]

    assert fr.main(report(["--report-only", "--out", str(runs_dir), "--runs-csv", str(runs_csv)], a)) == 0
    assert fr.main(report(["--from-runs", str(runs_csv)], b)) == 0
    folder_runs, _ = fr.load_frontier_runs(runs_dir)
    csv_runs = fr.load_runs_csv(runs_csv)
    for x, y in zip(_tables(folder_runs), _tables(csv_runs)):
        _same_frames(x, y)
    for name in ("frontier.csv", "board.csv", "board.md"):
        assert (a / name).read_text() == (b / name).read_text(), name
    for task in ("ackley", "levy-manifold"):
        png = b / f"frontier_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # the runs CSV: one row per run, with what the tables, the plots and the failure rule read
    rec = pd.read_csv(runs_csv)
    assert len(rec) == 2 * 13 * 3 and not rec.duplicated(["task", "method", "value", "budget", "seed"]).any()
    for col in (*fr.RUNS_CSV_COLUMNS, "invalid_frac", "n_eval", "vendi",
                "round0_eval_reward", "round0_path_kl", "best_round_eval_reward", "protocol", "task_protocol",
                "commit", "cpu_model", "wall_time_s"):
        assert col in rec, col
    assert not rec["run_dir"].str.startswith("/").any()  # relative to --out: the CSV is committed, the runs not
    assert "sqdf__beta=0.1/ackley__sqdf__b200__s0" in set(rec["run_dir"])
    assert list(rec.columns[:6]) == ["task", "method", "knob", "value", "seed", "budget"]
    # the per-seed frontier verdicts read the same file
    from benchmarks.report import frontier_readme as fr_md

    capsys.readouterr()
    fr_md.main([str(runs_csv), "--run-verdicts", "sqdf", "--frontier", "auf"])
    assert "| alignprop |" in capsys.readouterr().out


def test_runs_csv_filters_renormalise_and_sample_figures_need_the_folders(tmp_path, capsys):
    """Filtered by method, the score's top (best eval reward seen: the image task has no optimum) is
    re-computed over the runs kept, as from the folders; the sample figure is drawn from the folders only."""
    grid = {"pretrained": None, "sqdf": ("beta", [0.1, 1.0]), "alignprop": ("lr", [1e-4, 1e-3])}
    write_fake_frontier(tmp_path / "runs", grid, tasks=("aesthetic",), seeds=range(2), with_png=True)
    runs_csv = tmp_path / "runs.csv"
    assert fr.main(["--report-only", "--out", str(tmp_path / "runs"), "--runs-csv", str(runs_csv), "--csv",
                    str(tmp_path / "a.csv"), "--plots", str(tmp_path / "a"), "--leaderboard", ""]) == 0
    assert (tmp_path / "a" / "frontier_aesthetic_samples.png").exists()
    assert fr.main(["--from-runs", str(runs_csv), "--csv", str(tmp_path / "b.csv"), "--plots", str(tmp_path / "b"),
                    "--leaderboard", ""]) == 0
    assert (tmp_path / "b" / "frontier_aesthetic.png").exists()
    assert not (tmp_path / "b" / "frontier_aesthetic_samples.png").exists()
    assert "sample figures (frontier_<task>_samples.png) need the run folders" in capsys.readouterr().err
    keep = ["pretrained", "alignprop"]
    folder_runs, _ = fr.load_frontier_runs(tmp_path / "runs", methods=keep)
    csv_runs = fr.load_runs_csv(runs_csv, methods=keep)
    assert csv_runs["norm_high"].iloc[0] < pd.read_csv(runs_csv)["norm_high"].iloc[0]  # sqdf's best is gone
    for x, y in zip(_tables(folder_runs), _tables(csv_runs)):
        _same_frames(x, y)
    pd.read_csv(runs_csv).drop(columns="norm_low").to_csv(tmp_path / "bad.csv", index=False)
    assert fr.main(["--from-runs", str(tmp_path / "bad.csv"), "--csv", str(tmp_path / "x.csv"), "--plots", ""]) == 2
    assert "lacks norm_low; write it with python -m benchmarks.run.frontier --runs-csv" in capsys.readouterr().err
    assert fr.main(["--from-runs", str(tmp_path / "none.csv"), "--csv", str(tmp_path / "x.csv")]) == 2


def test_near_kl_from_one_row_per_run_averages_each_grid_point_over_its_seeds(tmp_path, capsys):
    """--near-kl on a --runs-csv table: a grid point's columns are the means over its seeds, the seed count
    is its number of distinct seeds, the pretrained model (empty knob) keeps its own row."""
    from benchmarks.report import frontier_readme as fr_md

    def run(method, knob, value, seed, kl, reward, fd):
        return {"task": "t", "method": method, "knob": knob, "value": value, "seed": seed, "path_kl": kl,
                "eval_reward": reward, "fd_phi": fd}

    runs = pd.DataFrame([run("pretrained", np.nan, np.nan, 0, 0.0, -1.0, 100.0),
                         run("pretrained", np.nan, np.nan, 1, 0.0, -3.0, 110.0),
                         run("a", "beta", 0.1, 0, 1.0, 0.0, 120.0), run("a", "beta", 0.1, 1, 3.0, 1.0, 140.0),
                         run("a", "beta", 0.01, 0, 20.0, 4.0, 500.0), run("a", "beta", 0.01, 1, 40.0, 6.0, 700.0)])
    points = fr_md.points_from_runs(runs)
    a = points[(points["method"] == "a") & (points["value"] == 0.1)].iloc[0]
    assert (a["n_seeds"], a["path_kl_mean"], a["eval_reward_mean"], a["fd_phi_mean"]) == (2, 2.0, 0.5, 130.0)
    csv = tmp_path / "runs.csv"
    runs.to_csv(csv, index=False)
    fr_md.main([str(csv), "--near-kl", "3"])  # mean KLs 2 and 30: |log 2/3| < |log 30/3|
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    assert rows == ["| pretrained | – | 2 | -2 | 0 | 105 |", "| a | beta = 0.1 | 2 | 0.5 | 2 | 130 |"]
    runs.drop(columns="path_kl").to_csv(csv, index=False)
    with pytest.raises(SystemExit, match="lacks path_kl"):
        fr_md.main([str(csv), "--near-kl", "3"])


def test_adding_a_method_leaves_the_normalisation_bounds_and_verdicts_of_the_others_unchanged():
    """norm_low comes from the ``pretrained`` runs when present, so a method whose round 0 uses another
    sampler (RLCM's consistency model) cannot move it; a method that beats every earlier round raises the
    best-seen norm_high, which rescales the scores but leaves each paired verdict's p-value and direction."""
    import numpy as np
    import pandas as pd

    from benchmarks.report import frontier_stats as fs
    from benchmarks.report.run_folders import add_normalised, normalisation_bounds
    from benchmarks.report.stats import verdict_table

    rng = np.random.default_rng(0)
    seeds = np.arange(5)
    pre = -0.7 + 0.1 * rng.standard_normal(5)

    def method(name, r0, kl, rew, value=1.0):
        return pd.DataFrame({"task": "img-manifold", "budget": 100, "method": name, "seed": seeds,
                             "knob": "beta", "value": value, "round0_eval_reward": r0, "round0_path_kl": 0.0,
                             "optimal_value": np.nan, "path_kl": kl, "eval_reward": rew})

    base = pd.concat([method("pretrained", pre, 0.0, pre, np.nan),
                      method("sqdf", pre, 2.0 + rng.random(5), 1.0 + 0.2 * rng.standard_normal(5)),
                      method("seiko", pre, 3.0 + rng.random(5), 0.8 + 0.2 * rng.standard_normal(5))], ignore_index=True)
    rounds = base[["task", "eval_reward"]]
    b0 = normalisation_bounds(base, rounds)
    assert b0["norm_low"].iloc[0] == pytest.approx(pre.mean())
    assert b0["norm_high_source"].iloc[0] == "best_seen"

    # a method whose round 0 is another sampler, with a lower reward than any round so far: nothing moves
    low_r0 = method("rlcm", pre - 0.3, 1.0 + rng.random(5), 0.0 + 0.1 * rng.standard_normal(5))
    b1 = normalisation_bounds(pd.concat([base, low_r0], ignore_index=True),
                              pd.concat([rounds, low_r0[["task", "eval_reward"]]], ignore_index=True))
    pd.testing.assert_frame_equal(b0, b1)
    # the previous rule (every path-KL-0 round 0) would have moved it
    no_pre = pd.concat([base[base["method"] != "pretrained"], low_r0], ignore_index=True)
    assert normalisation_bounds(no_pre, rounds)["norm_low"].iloc[0] == pytest.approx(pre.mean() - 0.1)

    # a method above every earlier round raises norm_high: verdicts keep their p-values and directions
    high = method("hacker", pre, 50.0 + rng.random(5), 9.0 + rng.standard_normal(5))
    b2 = normalisation_bounds(pd.concat([base, high], ignore_index=True),
                              pd.concat([rounds, high[["task", "eval_reward"]]], ignore_index=True))
    assert b2["norm_low"].iloc[0] == b0["norm_low"].iloc[0] and b2["norm_high"].iloc[0] > b0["norm_high"].iloc[0]

    def verdicts(bounds):
        runs = add_normalised(base.drop(columns="optimal_value"), bounds)
        per_seed = {m: fs.per_seed_frontier(runs[runs["method"] == m])["auf"] for m in ("sqdf", "seiko")}
        return verdict_table(per_seed["sqdf"], {"seiko": per_seed["seiko"]})[0]

    v0, v2 = verdicts(b0), verdicts(b2)
    assert v0.verdict == v2.verdict and v0.p_value == pytest.approx(v2.p_value, rel=1e-9)
    scale = (b0["norm_high"] - b0["norm_low"]).iloc[0] / (b2["norm_high"] - b2["norm_low"]).iloc[0]
    assert v2.effect == pytest.approx(v0.effect * scale, rel=1e-9)

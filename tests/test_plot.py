"""Tests of benchmarks/report/plot.py: every figure renders from a tiny fake sweep as a valid, non-blank PNG."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.report import plot
from fake_runs import write_fake_run, write_fake_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_fake_sweep(root, tasks=("ackley", "aesthetic"), methods=("pretrained", "sqdf", "ddpo"), seeds=range(3))
    return root


def _check_png(path, min_w=400, min_h=250):
    assert path.exists(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = Image.open(path)
    img.verify()
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    h, w, _ = arr.shape
    assert w >= min_w and h >= min_h, (path, arr.shape)
    # non-trivial content: not blank, several colours (lines, bands, text)
    assert arr.std() > 10, path
    assert len(np.unique(arr.reshape(-1, 3)[::7], axis=0)) > 20, path


def test_all_figures_render(fake_runs, tmp_path):
    written = plot.make_all([fake_runs], tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["curves.png", "diversity.png", "naturalness.png", "samples_aesthetic.png", "tradeoff.png"]
    for p in written:
        _check_png(p)
    # --budget-suffix: one budget's figures named as in a multi-budget folder (to replace just those)
    named = plot.make_all([fake_runs], tmp_path / "b", budget_suffix=True)
    budget = json.loads(next(fake_runs.glob("*/final.json")).read_text())["budget"]
    assert sorted(p.name for p in named) == sorted(n if n.startswith("samples") else n.replace(".png", f"_b{budget}.png")
                                                   for n in names)


def test_curve_stats_round0_at_zero_queries_and_ci(fake_runs):
    from benchmarks.report.run_folders import load_runs

    _, rounds = load_runs([fake_runs])
    cs = plot.curve_stats(rounds, "eval_reward", reps=200)
    sq = cs[(cs.task == "ackley") & (cs.method == "sqdf")].sort_values("round")
    assert sq.iloc[0]["queries"] == 0 and sq.iloc[-1]["queries"] == 200
    assert (sq["ci_low"] <= sq["mean"]).all() and (sq["mean"] <= sq["ci_high"]).all()
    assert set(sq["n"]) == {3}
    vals = rounds[(rounds.task == "ackley") & (rounds.method == "sqdf") & (rounds["round"] == 2)]["eval_reward"]
    assert sq[sq["round"] == 2]["mean"].item() == pytest.approx(vals.mean())


def test_cli_two_budgets_and_all_samples(tmp_path, capsys):
    root = tmp_path / "runs"
    for b in (100, 200):
        for s in range(2):
            write_fake_run(root, "ackley", "sqdf", s, budget=b, with_png=(b == 200))
    assert plot.main([str(root), "--out", str(tmp_path / "res"), "--all-samples"]) == 0
    out = capsys.readouterr().out
    for name in ("curves_b100.png", "curves_b200.png", "tradeoff_b200.png", "samples_ackley.png"):
        assert name in out
        _check_png(tmp_path / "res" / name, min_w=250)


def test_cli_error_on_empty_folder_and_min_seeds(fake_runs, tmp_path, capsys):
    assert plot.main([str(tmp_path), "--out", str(tmp_path / "res")]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert plot.main([str(fake_runs), "--out", str(tmp_path / "res"), "--min-seeds", "4"]) == 2
    assert "no (task, method, budget) has 4 finished seeds" in capsys.readouterr().err


def test_every_registered_method_has_its_own_colour():
    from benchmarks.report.plot import METHOD_COLOURS
    from sqdf_bbo.agents import available_methods

    assert set(available_methods()) == set(METHOD_COLOURS)  # a method dropped from the registry fails here
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)


def test_a_broken_builtin_method_fails_loudly(monkeypatch):
    from sqdf_bbo.agents import METHODS, available_methods

    monkeypatch.setitem(METHODS, "ghost", "baselines.ghost:GhostAgent")
    with pytest.raises(ImportError, match="registered method 'ghost'"):
        available_methods()


def test_other_methods_never_take_a_drawn_builtin_methods_colour():
    """Plug-ins and ablation variants ('sqdf gamma=1', ...) get colours distinct from each other and from the
    built-in methods in the same figure (tab10's red is SQDF's)."""
    from benchmarks.report.plot import colour

    drawn = ["pretrained", "sqdf", "seiko", *(f"sqdf v{i}" for i in range(6))]
    colours = [colour(m, drawn) for m in drawn]
    assert len(set(colours)) == len(drawn)

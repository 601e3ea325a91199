"""The end-of-run summary (sqdf_bbo/summary.py): the collapse rule at its boundaries, the summary's text from
hand-made round records, the embedded frontier suggestions against results/frontier_image.csv, and tiny real
runs whose final.json / rounds.jsonl carry the invalid-budget share and the collapsed rounds."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from sqdf_bbo import summary as S
from sqdf_bbo.agents import resolve_method
from sqdf_bbo.run import main
from sqdf_bbo.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def image_round(rnd: int, reward: float, kl: float, n_valid: int, fd: float, **extra) -> dict:
    return {"round": rnd, "queries_used": 0 if rnd == 0 else 1000 * rnd, "eval_reward": reward, "path_kl": kl,
            "n_valid": n_valid, "fd_phi": fd, "vendi": 7.5 - rnd, "vendi_valid": 7.0 - rnd, **extra}


ROUND0 = image_round(0, -0.8, 0.0, 127, 140.0)


# ---- the collapse rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("n_valid, fd, expected", [
    (64, 140.0, False),   # exactly half valid: not "most invalid"
    (63, 140.0, True),    # one fewer: most are invalid
    (128, 420.0, False),  # FD exactly 3x round 0's
    (128, 420.01, True),  # just over
    (0, 100.0, True),
    (128, 10.0, False),
])
def test_collapse_rule_boundaries(n_valid, fd, expected):
    rec = image_round(1, 1.0, 1.0, n_valid, fd)
    assert S.round_collapsed(rec, ROUND0, n_eval=128) is expected
    text = S.format_summary([ROUND0, rec], 128, "aesthetic", "sqdf")
    assert ("COLLAPSED" in text) is expected


def test_collapse_rule_odd_count_and_unmeasured():
    assert S.is_collapsed(64, None, 129, None) is True  # 64 < 64.5
    assert S.is_collapsed(65, None, 129, None) is False
    assert S.is_collapsed(None, 500.0, 128, 100.0) is True  # FD alone (no validity)
    assert S.is_collapsed(None, None, 128, None) is None  # neither measured: unknown
    assert S.is_collapsed(float("nan"), float("nan"), 128, 140.0) is None
    rounds = [{"round": 0, "eval_reward": 0.0, "path_kl": 0.0}, {"round": 1, "eval_reward": 1.0, "path_kl": 2.0}]
    text = S.format_summary(rounds, 64, "levy", "sqdf")
    assert "collapsed rounds: n/a" in text and "COLLAPSED" not in text


def test_collapsed_rounds_catch_alternation():
    """The aesthetic-manifold pattern: collapse and recovery alternate; the final round alone hides it."""
    r0 = image_round(0, -0.83, 0.0, 256, 130.0)
    rounds = [r0, image_round(1, -3.44, 50.0, 2, 900.0), image_round(2, 2.62, 20.0, 255, 160.0),
              image_round(3, -3.49, 80.0, 0, 1500.0), image_round(4, 3.62, 30.0, 253, 170.0)]
    assert S.collapsed_rounds(rounds, 256) == [1, 3]
    text = S.format_summary(rounds, 256, "aesthetic-manifold", "sqdf")
    assert "collapsed rounds: 1, 3 (" in text
    assert "COLLAPSED" not in text  # the final round recovered


# ---- the summary's text ---------------------------------------------------------------------------------
def test_summary_shows_round0_and_final_values():
    final = image_round(4, 9.43, 161.0, 2, 3295.0, invalid_queries=1234, invalid_budget_share=0.2468)
    text = S.format_summary([ROUND0, image_round(2, 3.0, 20.0, 120, 200.0), final], 128, "aesthetic", "sqdf",
                            samples="runs/x/samples.png")
    lines = text.splitlines()
    assert "pretrained (round 0)" in lines[0] and "final (round 4)" in lines[0]
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert "-0.8" in row["eval"] and "9.43" in row["eval"]
    assert "161" in row["path"]
    assert "127 of 128" in row["valid"] and "2 of 128" in row["valid"]
    assert "140" in row["FD"] and "3295" in row["FD"]
    assert "7.5" in text and "3.5" in text  # Vendi, round 0 and final
    assert "24.7% (1234 of 4000 queries)" in text
    assert "samples: runs/x/samples.png" in text
    assert "collapsed rounds: 4 (" in text
    [line] = [ln for ln in lines if ln.startswith("COLLAPSED")]
    assert "2 of 128 valid" in line and "23.5x round 0's" in line
    assert "--set beta=0.1" in line and "aesthetic-manifold" in line  # aesthetic uses its -manifold twin's frontier


def test_suggestion_only_where_a_frontier_covers_it():
    assert "--set beta=0.1" in S.suggestion_line("aesthetic-manifold", "sqdf")
    assert "no committed frontier covers levy-manifold / sqdf" in S.suggestion_line("levy-manifold", "sqdf")
    assert "no committed frontier covers compressibility / sqdf" in S.suggestion_line("compressibility", "sqdf")
    assert "no committed frontier covers aesthetic-manifold / turbo" in S.suggestion_line("aesthetic-manifold", "turbo")


# ---- the embedded suggestions cannot drift from the committed frontier ----------------------------------
def test_embedded_suggestions_recompute_from_the_committed_frontier():
    rows = pd.read_csv(ROOT / "results" / "frontier_image.csv")
    runs, best = S.frontier_suggestions(rows.to_dict("records"))
    assert runs == S.FRONTIER_RUNS
    assert best == S.FRONTIER_SUGGESTIONS
    # the rule applied by hand to SQDF: natural = at least half the eval designs valid and FD at most 3x the
    # pretrained model's; the best mean reward among those. Larger beta = a stronger KL penalty, so the
    # natural values are the larger ones and the best of them is the smallest natural beta.
    pre = rows[rows.method == "pretrained"].iloc[0]
    sqdf = rows[rows.method == "sqdf"]
    natural = sqdf[(sqdf.n_valid_mean >= sqdf.fd_n_mean / 2) & (sqdf.fd_phi_mean <= 3 * pre.fd_phi_mean)]
    chosen = natural.loc[natural.eval_reward_mean.idxmax()]
    assert S.FRONTIER_SUGGESTIONS[("aesthetic-manifold", "sqdf")]["value"] == chosen.value == natural.value.min()
    assert sqdf.path_kl_mean.is_monotonic_decreasing  # the sign convention: beta up, KL down
    assert set(sqdf.value) - set(natural.value) == {0.01}  # the weakest penalty collapsed


def test_embedded_knobs_are_settings_of_their_methods():
    for (task, method), s in S.FRONTIER_SUGGESTIONS.items():
        assert s["knob"] in resolve_method(method).default_config, (method, s["knob"])
        assert task in S.FRONTIER_RUNS
    script = (ROOT / "benchmarks" / "run" / "reproduce_image_frontier.sh").read_text()
    for setting in ("updates_per_round=10", "proxy_epochs=30", "--budget 1000", "SEEDS=${SEEDS:-0-4}", "run.n_eval=128"):
        assert setting in script
    assert "updates_per_round=10, proxy_epochs=30" in S.FRONTIER_SETTINGS["aesthetic-manifold"]
    assert S.FRONTIER_RUNS["aesthetic-manifold"] | {"fd_pretrained": 0} == {
        "budget": 1000, "n_seeds": 3, "n_eval": 128, "fd_pretrained": 0}


# ---- end to end ------------------------------------------------------------------------------------------
def _run(tmp_path, capsys, method: str, *sets: str) -> tuple[list[str], Path]:
    args = ["--task", "levy-manifold", "--method", method, "--budget", "64", "--out", str(tmp_path), "--no-progress",
            "--set", "run.rounds=2", "--set", "run.n_eval=32", *sum((["--set", s] for s in sets), [])]
    assert main(args) == 0
    return capsys.readouterr().out.splitlines(), tmp_path / f"levy-manifold__{method}__b64__s0"


def _check_gate_records(folder: Path) -> tuple[dict, list[dict]]:
    """final.json and rounds.jsonl agree with queries.csv, the task's gate recomputed from the coordinates."""
    task = make_task("levy-manifold")
    q = pd.read_csv(folder / "queries.csv")
    x = torch.tensor(q[[f"x{j}" for j in range(8)]].to_numpy())
    valid = task.valid_mask(x).numpy()
    assert (q["valid"].to_numpy() == valid.astype(int)).all()
    final = json.loads((folder / "final.json").read_text())
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    assert final["invalid_queries"] == int((~valid).sum())
    assert final["invalid_budget_share"] == pytest.approx((~valid).mean())
    for rec in rounds[1:]:
        upto, this = (q["round"] <= rec["round"]).to_numpy(), (q["round"] == rec["round"]).to_numpy()
        assert rec["invalid_queries"] == int((~valid[upto]).sum())
        assert rec["round_invalid_share"] == pytest.approx((~valid[this]).mean())
        assert rec["collapsed"] is (rec["n_valid"] < 16)  # n_eval 32, no FD on the synthetic tier
    assert final["collapsed_rounds"] == [r["round"] for r in rounds if r["n_valid"] < 16]
    assert "collapsed" not in final and "round_invalid_share" not in final
    return final, rounds


def test_tiny_sqdf_run_prints_the_summary(tmp_path, capsys):
    out, folder = _run(tmp_path, capsys, "sqdf", "updates_per_round=2", "proxy_epochs=5")
    first = json.loads(out[0])  # the JSON line and the run folder line come first, unchanged
    assert set(first) == {"eval_reward", "best_so_far", "path_kl", "vendi", "vendi_valid", "n_valid", "wall_time_s"}
    assert out[1] == f"run folder: {folder}"
    final, rounds = _check_gate_records(folder)
    text = "\n".join(out[2:])
    assert out[2].startswith("summary: levy-manifold / sqdf")
    assert f"{rounds[0]['eval_reward']:.4g}" in text and f"{final['eval_reward']:.4g}" in text
    assert f"{final['n_valid']} of 32" in text
    assert f"({final['invalid_queries']} of 64 queries)" in text
    assert f"samples: {folder / 'samples.png'}" in text


def test_tiny_random_run_reports_invalid_budget_and_collapse(tmp_path, capsys):
    """Uniform designs mostly fall off the prior: a large invalid share, every round collapsed, and no
    committed frontier covers the task."""
    out, folder = _run(tmp_path, capsys, "random")
    final, rounds = _check_gate_records(folder)
    assert final["invalid_budget_share"] > 0.5
    assert final["collapsed_rounds"] == [0, 1, 2]
    [line] = [ln for ln in out if ln.startswith("COLLAPSED")]
    assert f"{final['n_valid']} of 32 valid" in line
    assert "no committed frontier covers levy-manifold / random" in line
    assert "collapsed rounds: 0, 1, 2 (" in "\n".join(out)

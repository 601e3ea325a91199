"""benchmarks/perf/perf_methods.py: exclusive phase accounting (fake clock) and FLOP attribution (a known GEMM)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.perf import perf_methods as pm


def test_phase_time_is_exclusive(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(pm.time, "perf_counter", lambda: now[0])
    clock = pm.PhaseClock()
    now[0] = 1.0                      # 1 s of "other"
    with clock.phase("train_steps"):
        now[0] = 3.0                  # 2 s of training
        with clock.phase("proxy_fit"):
            now[0] = 7.0              # 4 s of proxy fit, not training
        now[0] = 8.0                  # 1 more s of training
    now[0] = 10.0                     # 2 more s of "other"
    clock.finish()
    assert clock.seconds["train_steps"] == 3.0 and clock.seconds["proxy_fit"] == 4.0 and clock.seconds["other"] == 3.0
    assert sum(clock.seconds.values()) == 10.0


def test_flops_go_to_the_phase_that_ran_them():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    counter = FlopCounterMode(display=False)
    with counter:
        clock = pm.PhaseClock(counter)
        rollout = clock.wrap(lambda: a @ b, "train_rollouts", only_inside="train_steps")
        with clock.phase("train_steps"):
            rollout()                 # inside training: a rollout
        rollout()                     # outside training: stays in "other"
        clock.finish()
    assert clock.flops["train_rollouts"] == 2 * 64 * 32 * 16
    assert clock.flops["other"] == 2 * 64 * 32 * 16 and clock.flops["train_steps"] == 0


def test_markdown_table_sums_evaluation_and_flags_the_target(tmp_path, capsys):
    import csv

    rows = []
    for method, total in (("fast", 12.0), ("slow", 40.0)):
        for phase in pm.PHASES + ("total",):
            sec = {"total": total, "evaluation": 1.5, "path_kl": 0.5, "train_steps": total - 2.0}.get(phase, 0.0)
            counted = phase == "total"
            rows.append({"task": "levy", "method": method, "phase": phase, "s_per_1k_queries": sec,
                         "gflop": 100.0 if counted else None, "gflops_per_s": 100.0 / total if counted else None,
                         "peak_ratio": 0.5 if counted else None})
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert pm.main(["--table", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    fast = next(x for x in lines if x.startswith("| fast "))
    slow = next(x for x in lines if x.startswith("| slow "))
    cells = [c.strip() for c in fast.strip("|").split("|")]
    assert cells[1] == "12.0" and cells[5] == "2.0" and cells[9] == "50 %" and cells[10] == "yes"
    assert slow.rstrip().endswith("| no |")


def test_matmul_flops_agree_with_flop_counter_mode_and_survive_autograd_grad():
    """The benchmark's counter gives FlopCounterMode's total on a forward + backward, and, unlike it, counts
    through torch.autograd.grad on a leaf input (Adjoint Matching's adjoint)."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    reference = FlopCounterMode(display=False)
    with reference:
        net(x).sum().backward()
    ours = pm.MatmulFlops()
    with ours:
        net(x).sum().backward()
    assert ours.get_total_flops() == reference.get_total_flops() > 0
    leaf = torch.randn(5, 8, requires_grad=True)
    ours = pm.MatmulFlops()
    with ours:
        (g,) = torch.autograd.grad(net(leaf).sum(), leaf)
    forward = 2 * 5 * (8 * 16 + 16 * 4)  # two GEMMs of 5 rows
    assert g.shape == leaf.shape and ours.get_total_flops() == 2 * forward  # + input gradients, no weight gradients


def test_perf_lora_times_the_five_ways_of_holding_the_policy(tmp_path):
    import csv

    from benchmarks.perf import perf_lora

    out = tmp_path / "lora.csv"
    assert perf_lora.main(["--rows", "2", "--calls", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["module"], r["pass"]) for r in rows] == [
        (m, p) for m in ("plain", "lora", "lora_peft", "lora_merged", "lora_merged_per_call")
        for p in ("forward", "forward+backward")]
    assert all(float(r["ms_per_call"]) > 0 for r in rows)


def test_the_merged_per_call_what_if_is_the_lora_function_up_to_rounding():
    """perf_lora's what-if x (W + s B A)^T: same outputs and LoRA gradients as the lean forward (float64)."""
    from benchmarks.perf.perf_lora import merged_per_call_copy
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.tasks import make_task

    task = make_task("levy")
    cls = resolve_method("draft-1")
    policy = cls(task.info, cls.resolve_config(task.info, {"lora_rank": 4}), seed=0).policy.double()
    with torch.no_grad():
        for n, w in policy.named_parameters():
            if "lora_B" in n:
                w.copy_(0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3), dtype=w.dtype))
    what_if = merged_per_call_copy(policy)
    x = torch.randn(6, *policy.latent_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.full((6,), 300, dtype=torch.long)
    y, y2 = policy(x, t), what_if(x, t)
    assert torch.allclose(y, y2, rtol=0, atol=1e-12) and not torch.equal(y.detach(), torch.zeros_like(y))
    lora = [n for n, w in policy.named_parameters() if w.requires_grad]
    g1 = torch.autograd.grad(y.square().sum(), [dict(policy.named_parameters())[n] for n in lora])
    g2 = torch.autograd.grad(y2.square().sum(), [dict(what_if.named_parameters())[n] for n in lora])
    assert lora and all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(g1, g2))


def test_repeats_interleave_the_methods_and_report_medians(tmp_path, monkeypatch, capsys):
    """--repeats 3: runs go A B A B A B (drift falls on both), each phase is the median of its three times,
    the total the median of the three totals, with their min and max."""
    import csv

    calls = []
    times = {"a": [[2.0, 1.0], [4.0, 1.0], [3.0, 5.0]], "b": [[1.0, 1.0], [1.0, 1.0], [7.0, 1.0]]}

    def fake_run(task, method, budget, extra, count_flops):
        calls.append(method)
        clock = pm.PhaseClock()
        if budget != 32:  # the warm-up run is not counted
            train, proxy = times[method][sum(c == method for c in calls[1:]) - 1]
            clock.seconds.update(train_steps=train, proxy_fit=proxy)
        return clock

    monkeypatch.setattr(pm, "run_method", fake_run)
    monkeypatch.setattr(pm, "matmul_peak_gflops", lambda: 100.0)
    out = tmp_path / "p.csv"
    assert pm.main(["--methods", "a,b", "--budget", "500", "--repeats", "3", "--out", str(out)]) == 0
    assert calls == ["a", "a", "b", "a", "b", "a", "b"]  # warm-up, then interleaved
    rows = {(r["method"], r["phase"]): r for r in csv.DictReader(out.open())}
    assert float(rows["a", "train_steps"]["seconds"]) == 3.0 and float(rows["a", "proxy_fit"]["seconds"]) == 1.0
    a_total = rows["a", "total"]  # totals 3, 5, 8 s: median 5 (not 3 + 1, the sum of the phase medians)
    assert float(a_total["seconds"]) == 5.0 and float(a_total["s_per_1k_queries"]) == 10.0
    assert (float(a_total["s_per_1k_min"]), float(a_total["s_per_1k_max"]), a_total["repeats"]) == (6.0, 16.0, "3")
    assert float(rows["b", "total"]["seconds"]) == 2.0 and float(rows["b", "train_steps"]["seconds"]) == 1.0
    capsys.readouterr()
    assert pm.main(["--table", str(out)]) == 0
    assert "| a | 10.0 (6.0–16.0) |" in capsys.readouterr().out


def test_bad_repeats_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pm, "run_method", lambda *a, **k: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit):
        pm.main(["--repeats", "0", "--out", str(tmp_path / "p.csv")])
    assert "--repeats must be >= 1, got 1000, 1 and 0" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_runner_phases_come_from_the_phase_callbacks():
    """A real (tiny) run: the runner's evaluate and checkpoint phases reach the clock through RunCallbacks."""
    clock = pm.run_method("levy", "best-of-n", 64, {}, count_flops=False)
    assert clock.seconds["evaluation"] > 0 and clock.seconds["checkpoints"] > 0
    assert clock.seconds["query_sampling"] > 0

"""benchmarks/perf_methods.py: exclusive phase accounting (fake clock) and FLOP attribution (a known GEMM)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import perf_methods as pm


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

"""One optimizer step of a fine-tuner's ``improve()``, for timing and for tests (not part of a run).

A benchmark wants the cost of one update at a realistic state (after a round), without the round's proxy
refit, new optimizer or start-of-round work; a test wants to iterate single updates. Both call
:func:`one_more_step`, which drives the round helpers of ``sqdf_bbo.agents.online.OnlineFinetuneAgent`` the
way a run resumed mid-round does.
"""
from __future__ import annotations

from typing import Any


def one_more_step(agent) -> dict[str, Any]:
    """Run one optimizer step of ``agent.improve()`` at the current state: the round is marked open with one
    step to go (as a mid-round checkpoint leaves it), so improve() neither refits the proxy nor starts a new
    AdamW nor redoes its start-of-round work. Returns improve()'s statistics, whose step means are over
    ``updates_per_round`` (so they are that step's own values when it is 1); ``agent.round`` is unchanged."""
    n = agent.cfg.updates_per_round
    agent.round_progress = {"stats": {}, "sums": {}, "done": max(n - 1, 0)}
    round_before = agent.round
    stats = agent.improve()
    agent.round = round_before
    return stats

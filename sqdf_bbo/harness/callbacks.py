"""What the runner tells others while it works: :class:`RunCallbacks` (the phases it times, for performance
scripts and dashboards) and :class:`StepCallback` (what it hands an agent for the length of ``improve()``).

Phases, in the order a round runs them: ``propose`` (the agent draws the round's designs), ``query`` (the
oracle through the journal), ``observe`` (the agent receives the answers), ``improve`` (the agent refits and
fine-tunes), ``evaluate`` (the harness's evaluation; round 0's too), ``render`` (sample grids), ``logs``
(queries.csv, rounds.jsonl) and ``checkpoint``. Phases nest: a ``checkpoint`` also happens inside
``propose`` (long proposals) and ``improve`` (mid-round checkpoints), and ``logs`` and ``render`` follow
``evaluate``; ``seconds`` is the phase's own wall time, nested phases included (perf_counter). A callback
runs inside the run: what it raises ends the run.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional

#: every phase name the runner reports
PHASES = ("propose", "query", "observe", "improve", "evaluate", "render", "logs", "checkpoint")


class RunCallbacks:
    """Subclass and override; every method is a no-op here. Pass an instance to ``Run(config,
    callbacks=...)`` or ``run_experiment(..., callbacks=...)``."""

    def on_phase_start(self, name: str) -> None:
        """Phase ``name`` (one of :data:`PHASES`) begins."""

    def on_phase_end(self, name: str, seconds: float) -> None:
        """Phase ``name`` ended (also when it raised) after ``seconds`` (>= 0) of wall time."""


class PhaseTimer:
    """The runner's side: ``with timer("query"): ...`` calls the callbacks around the block."""

    def __init__(self, callbacks: Optional[RunCallbacks] = None):
        self.callbacks = callbacks if callbacks is not None else RunCallbacks()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.callbacks.on_phase_start(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.callbacks.on_phase_end(name, max(0.0, time.perf_counter() - t0))


class StepCallback:
    """Set by the runner as ``agent.step_callback`` for the length of ``improve()`` (None outside it, and
    when nothing listens). An agent that can resume mid-improve calls :meth:`step_done` with the number of
    optimizer steps of the round done after each one (``OnlineFinetuneAgent.round_steps`` does:
    ``Agent.report_step``); the runner then counts the step on the progress bar and may write a mid-round
    checkpoint, which saves the agent's state as it is at that moment."""

    def __init__(self, *listeners: Callable[[int], None]):
        self.listeners = tuple(f for f in listeners if f is not None)

    @classmethod
    def of(cls, *listeners: Optional[Callable[[int], None]]) -> Optional["StepCallback"]:
        """A StepCallback of the listeners given, or None when there is none (the agent then reports nothing,
        and an isolated agent's process sends no per-step messages)."""
        cb = cls(*listeners)
        return cb if cb.listeners else None

    def step_done(self, done: int) -> None:
        for listener in self.listeners:
            listener(int(done))

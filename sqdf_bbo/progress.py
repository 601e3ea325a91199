"""The run's progress bar: the work of every round in predicted seconds, so that its ETA is meaningful.

A round's time goes to four phases, each with its own unit of work:

============  ===================================  =============================================
phase         unit                                 cost
============  ===================================  =============================================
``propose``   one sampled design                   seconds per design
``query``     one query (oracle call and observe)  seconds per query
``train``     one optimizer step (``improve()``)   seconds per step, plus the proxy refit: seconds
                                                   per mini-batch of the observations so far
``evaluate``  one round's evaluation               seconds per evaluation (with the round's
                                                   checkpoint time)
============  ===================================  =============================================

:class:`CostModel` learns the seconds per unit of each phase from the rounds' ``phase_wall_s`` records
(the same records rounds.jsonl holds, so a resumed run predicts from its earlier rounds too): the
seconds over the units of the latest round measured (the latest round runs under the machine's current
load, and a first round's one-time costs do not stay in the estimate). The proxy refit is
split off the ``train`` phase where the round record's ``train.proxy_fit_s`` reports it: the fine-tuners'
refit runs a fixed number of epochs of ceil(N / proxy_batch) mini-batches over the N observations so far,
so its cost per mini-batch is learned and multiplied by the next round's count (with no ``proxy_batch``
setting, one unit per round: a constant refit). The round sizes are known; the optimizer steps
per round come from the agent's ``updates_per_round`` setting, or are counted in the first round (the
agent's per-step reports, ``Agent.step_callback``); the evaluation (``n_eval`` samples) costs the same every round.

Before any measurement the model uses a crude prior scaled by the pretrained model's evaluation (round 0,
measured before the bar starts): E seconds per evaluation, E / (3 n_eval) per design, a tenth of that per
query and E / 10 per optimizer step (roughly the ratios of the default ``aesthetic`` run's phases in
results/perf_main.csv, 2 CPU cores; off by several times on other tasks and machines). Each phase's prior is replaced by its measurement as soon as that phase has run
once (``propose`` and ``query`` after round 1's query phase, the others at its end); within round 1 the
seconds between its optimizer steps already stand in for the cost per step.

:class:`RunProgress` drives a tqdm bar in seconds: its count is the seconds the rounds have taken so far,
its total that plus the predicted seconds of the work left (the current round's units not done yet times
their cost, then the later rounds), recomputed at every update. tqdm's ETA, (total - count) / rate with
the rate one second per second, is the predicted time left. With ``SQDF_BBO_ETA_LOG=<path>`` every
bar update appends a JSON line (wall time, elapsed, round, phase, predicted remaining, the bar's ETA) to
that file: ``benchmarks/perf_eta.py`` compares them with the true remaining time.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from typing import Any, Callable, Optional

PHASES = ("propose", "query", "train", "evaluate")
#: the environment variable naming the file that bar updates are logged to (one JSON line each)
ETA_LOG_ENV = "SQDF_BBO_ETA_LOG"
#: the bar's layout: percentage, bar, elapsed < ETA, then the phase (the postfix)
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"
#: evaluation seconds assumed when not even round 0 was measured
DEFAULT_EVAL_S = 60.0
#: seconds between two redraws of the bar (phase changes always redraw)
MIN_REDRAW_S = 0.1


class CostModel:
    """Seconds per unit of work of each phase, learned from the rounds' records; predicts a round's work.

    ``sizes``: the round sizes; ``steps``: optimizer steps per round (None: unknown, set from the first
    round measured); ``n_eval``: evaluation samples per round (scales the prior); ``refit_batch``: the
    agent's proxy mini-batch size (None: the refit costs the same every round)."""

    #: what is learned: seconds per design (propose), per query, per optimizer step, per mini-batch of the
    #: proxy refit, per round (improve without steps, evaluate)
    KEYS = ("propose", "query", "step", "refit", "improve", "evaluate")

    def __init__(self, sizes: list[int], steps: Optional[int] = None, n_eval: int = 256,
                 refit_batch: Optional[int] = None):
        self.sizes = [int(s) for s in sizes]
        self.cumulative = list(itertools.accumulate(self.sizes))
        self.steps = None if steps is None else max(int(steps), 0)
        self.refit_batch = None if not refit_batch else int(refit_batch)
        self.n_eval = max(int(n_eval), 1)
        self.pretrained_eval_s: Optional[float] = None
        self._latest: dict[str, float] = {}  # seconds per unit of the latest round measured
        self.provisional: dict[str, float] = {}  # a cost seen within the running round, until it is learned

    # -- learning --
    def learn(self, key: str, seconds: float, units: float) -> None:
        """A round's measurement: ``seconds`` spent on ``units`` units of ``key`` (replaces the earlier one)."""
        if units > 0 and math.isfinite(seconds):
            self._latest[key] = max(float(seconds), 0.0) / float(units)

    def learn_pretrained(self, record: dict) -> None:
        """Round 0's record (the pretrained model's evaluation): the evaluation cost until a round is measured."""
        s = _number(record.get("round_wall_s"))
        self.pretrained_eval_s = s if s is not None and s > 0 else None

    def learn_record(self, record: dict, steps: Optional[int] = None, phases: tuple = PHASES) -> None:
        """Learn the ``phases`` of a round record (rounds.jsonl: ``round``, ``round_size``, ``phase_wall_s``,
        ``round_wall_s``, ``train``); ``steps``: optimizer steps that round's improve() ran (default: the
        model's steps per round)."""
        ph = record.get("phase_wall_s") or {}
        r = int(record["round"]) - 1
        n = int(record.get("round_size", self.sizes[r]))
        for key in ("propose", "query"):
            if key in phases and _number(ph.get(key)) is not None:
                self.learn(key, ph[key], n)
        if "train" in phases and _number(ph.get("improve")) is not None:
            fit = _number((record.get("train") or {}).get("proxy_fit_s"))
            if fit is not None:
                self.learn("refit", fit, self.refit_units(r))
            rest = ph["improve"] - (fit or 0.0)
            steps = self.steps if steps is None else steps
            if steps:
                self.learn("step", rest, steps)
            else:
                self.learn("improve", rest, 1)
        if "evaluate" in phases and _number(ph.get("evaluate")) is not None:
            timed = sum(_number(ph.get(k)) or 0.0 for k in ("propose", "query", "improve", "evaluate"))
            other = (_number(record.get("round_wall_s")) or timed) - timed  # checkpoints, between the phases
            self.learn("evaluate", ph["evaluate"] + max(other, 0.0), 1)

    def measured(self, key: str) -> bool:
        return key in self._latest

    def unit_s(self, key: str) -> float:
        """Seconds per unit of ``key``: measured, else seen within the running round, else the prior."""
        if key in self._latest:
            return self._latest[key]
        return self.provisional.get(key, self.prior()[key])

    def prior(self) -> dict[str, float]:
        """The crude prior, scaled by the pretrained model's evaluation time (see the module's doc)."""
        e = self.pretrained_eval_s or DEFAULT_EVAL_S
        design = e / (3 * self.n_eval)
        return {"propose": design, "query": design / 10, "step": e / 10, "refit": 0.0, "improve": e / 10,
                "evaluate": e}

    # -- predicting --
    def refit_units(self, r: int) -> int:
        """Mini-batches per epoch of round index r's proxy refit (1 without a known mini-batch size)."""
        return math.ceil(self.cumulative[r] / self.refit_batch) if self.refit_batch else 1

    def train_s(self, r: int, steps: Optional[int] = None) -> float:
        """Predicted seconds of round index r's improve(): the refit over the observations so far plus its
        steps (``steps``, default the model's; with none known, one round's improve() as measured)."""
        steps = self.steps if steps is None else steps
        if steps and (self.measured("step") or not self.measured("improve")):
            per = steps * self.unit_s("step")
        else:  # no steps, or steps learned only now (resumed rounds recorded improve() as a whole)
            per = self.unit_s("improve")
        return self.unit_s("refit") * self.refit_units(r) + per

    def round_work(self, r: int) -> dict[str, float]:
        """Predicted seconds of each phase of round index r (0-based)."""
        n = self.sizes[r]
        return {"propose": n * self.unit_s("propose"), "query": n * self.unit_s("query"),
                "train": self.train_s(r), "evaluate": self.unit_s("evaluate")}

    def remaining_s(self, r: int, done: Optional[dict] = None) -> float:
        """Predicted seconds left from round index r on, given the seconds ``done`` of each phase of round r."""
        done = done or {}
        now = sum(max(w - done.get(k, 0.0), 0.0) for k, w in self.round_work(r).items())
        return now + sum(sum(self.round_work(i).values()) for i in range(r + 1, len(self.sizes)))


def _number(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class RoundState:
    """Units of work done in the current round: designs proposed, queries, optimizer steps, whether improve()
    is done (the evaluation is done when the round ends)."""

    def __init__(self, propose: int = 0, query: int = 0, steps: int = 0, trained: bool = False):
        self.propose, self.query, self.steps, self.trained = propose, query, steps, trained

    def copy(self) -> "RoundState":
        return RoundState(self.propose, self.query, self.steps, self.trained)


class RunProgress:
    """The run's tqdm bar in predicted seconds of work (see the module's doc).

    ``model``: the cost model (already taught the finished rounds); ``first_round``: index of the round
    the run continues with; ``state``: the units of that round already done (a resumed round);
    ``spent_s``: the seconds the run's rounds took before this process (a resumed run's);
    ``clock``: monotonic seconds (tests pass a fake one); ``log_path``: where each update is logged
    (default: ``$SQDF_BBO_ETA_LOG``, none when unset)."""

    def __init__(self, model: CostModel, first_round: int = 0, state: Optional[RoundState] = None, *,
                 spent_s: float = 0.0, desc: str = "", disable: bool = False, file=None,
                 clock: Callable[[], float] = time.monotonic, log_path: Optional[str] = None):
        from tqdm import tqdm

        self.model, self.round, self.clock = model, int(first_round), clock
        self.state = state.copy() if state is not None else RoundState()
        self._spent_before = float(spent_s)
        self._steps_before_improve = self.state.steps
        self._first_step: Optional[tuple[float, int]] = None  # (time, count) of the round's first step seen
        self.phase = "start"
        self.disable = bool(disable)
        self.start_t = clock()
        spent, total, _ = self.totals()
        self.bar = tqdm(total=total, initial=spent, desc=desc, disable=self.disable, bar_format=BAR_FORMAT,
                        smoothing=0, miniters=0, dynamic_ncols=True, file=file)
        self._last_draw = -math.inf
        path = log_path if log_path is not None else os.environ.get(ETA_LOG_ENV)
        self._log = open(path, "a") if path and not self.disable else None
        self._show(force=True)

    # -- the work, in predicted seconds --
    def _round_done(self, r: int, st: RoundState) -> dict[str, float]:
        """Predicted seconds of each phase of round index r done with units ``st``."""
        m = self.model
        train = 0.0
        if st.trained:
            train = self._round_total(r, st)["train"]
        elif st.steps > 0:  # the refit ran before the first step
            train = m.unit_s("refit") * m.refit_units(r) + st.steps * m.unit_s("step")
        return {"propose": st.propose * m.unit_s("propose"), "query": st.query * m.unit_s("query"),
                "train": train, "evaluate": 0.0}

    def _round_total(self, r: int, st: RoundState) -> dict[str, float]:
        """Predicted seconds of each phase of round index r, in progress with units ``st``: never less than
        what is done (an agent that runs more steps than expected raises the total)."""
        work = self.model.round_work(r)
        if st.steps and (st.trained or st.steps > (self.model.steps or 0)):
            work["train"] = self.model.train_s(r, st.steps)
        return work

    def remaining_s(self) -> float:
        """Predicted seconds left: what the current round's phases have not done yet, then the later rounds."""
        r, n_rounds = self.round, len(self.model.sizes)
        if r >= n_rounds:
            return 0.0
        total, done = self._round_total(r, self.state), self._round_done(r, self.state)
        later = sum(sum(self.model.round_work(i).values()) for i in range(r + 1, n_rounds))
        return sum(max(total[k] - done[k], 0.0) for k in total) + later

    def totals(self) -> tuple[float, float, float]:
        """(count, total, count before this process began) of the bar: seconds spent on the run's rounds,
        that plus the predicted seconds left, and the seconds spent before this process."""
        spent = self._spent_before + self.clock() - self.start_t
        return spent, spent + self.remaining_s(), self._spent_before

    def eta_s(self) -> float:
        """The bar's ETA: tqdm's (total - count) / rate, where the rate (count done in this process / elapsed)
        is one second per second: the predicted seconds left."""
        return self.remaining_s()

    def _show(self, force: bool = False, draw: bool = True) -> None:
        if self.disable:
            return
        spent, total, before = self.totals()
        self.bar.total, self.bar.n, self.bar.initial = total, spent, before
        now = self.clock()
        if draw and (force or now - self._last_draw >= MIN_REDRAW_S):
            self._last_draw = now
            self.bar.refresh()
        if self._log is not None:
            self._log.write(json.dumps({"t": time.time(), "elapsed_s": now - self.start_t, "round": self.round + 1,
                                        "phase": self.phase, "spent_s": spent, "total_s": total,
                                        "remaining_s": total - spent, "eta_s": self.eta_s(),
                                        "measured": all(self.model.measured(k) for k in ("propose", "evaluate"))})
                            + "\n")
            self._log.flush()

    # -- what the runner reports --
    def set_postfix_str(self, s: str) -> None:
        """The phase line after the bar (as the runner words it)."""
        if not self.disable:
            self.bar.set_postfix_str(s, refresh=False)
            self._show(force=True)

    def advance(self, phase: str, units: int) -> None:
        """``units`` more designs proposed (``propose``) or queries answered (``query``)."""
        self.phase = phase
        setattr(self.state, phase, getattr(self.state, phase) + int(units))
        self._show(force=phase == "propose")

    def query_phase_done(self, record: dict) -> None:
        """The round's query phase ended: learn its propose and query seconds (``record``: round,
        round_size, phase_wall_s)."""
        self.model.learn_record(record, phases=("propose", "query"))
        self._steps_before_improve = self.state.steps
        self._show(force=True)

    def step(self, done: int) -> None:
        """improve() finished its ``done``-th optimizer step of the round."""
        self.phase = "train"
        now = self.clock()
        if self._first_step is None:
            self._first_step = (now, int(done))
        elif not self.model.measured("step") and int(done) > self._first_step[1]:  # the seconds between steps
            self.model.provisional["step"] = (now - self._first_step[0]) / (int(done) - self._first_step[1])
        self.state.steps = max(self.state.steps, int(done))
        self._show()

    def step_hook(self, then: Optional[Callable[[int], None]]) -> Optional[Callable[[int], None]]:
        """A listener on the agent's optimizer steps (the runner puts it in the agent's ``step_callback``):
        count the step, then call ``then`` (the mid-round checkpointer); just ``then`` when the bar is off."""
        if self.disable:
            return then

        def hook(done: int) -> None:
            self.step(done)
            if then is not None:
                then(done)

        return hook

    def train_done(self) -> None:
        self.phase = "evaluate"
        self.state.trained = True
        self._show(force=True)

    def end_round(self, record: Optional[dict]) -> None:
        """The round ended (evaluated, logged, checkpointed): learn its train and evaluate costs from its
        record (None on processes that keep no records) and move on to the next round."""
        steps = self.state.steps - self._steps_before_improve  # the steps this process ran
        if self.model.steps is None:  # unknown: the first round measured sets it
            self.model.steps = self.state.steps
        if record is not None:
            self.model.learn_record(record, steps=steps if self.model.steps else 0, phases=("train", "evaluate"))
        self.round += 1
        self.state = RoundState()
        self._steps_before_improve, self._first_step = 0, None
        self.phase = "propose" if self.round < len(self.model.sizes) else "done"
        self._show(force=True)

    def close(self) -> None:
        self.phase = "end"
        self._show(draw=False)  # tqdm's close draws the last line
        if self._log is not None:
            self._log.close()
            self._log = None
        self.bar.close()

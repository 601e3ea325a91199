"""Where each method's time goes: seconds per 1 000 queries by phase, FLOPs and achieved GFLOP/s.

    python -m benchmarks.perf.perf_methods [--task levy] [--methods sqdf,seiko,...] [--budget 1000] [--threads 1]
        [--flops] [--out results/perf_methods.csv] [--set KEY=VALUE ...]
    python -m benchmarks.perf.perf_methods --table results/perf_methods.csv   # the markdown table of docs/performance.md

After an untimed warm-up run (budget 32: the one-time imports), each method runs once, in this process, through the real runner (``sqdf_bbo.run.run_experiment``) at the
leaderboard's settings (128 eval draws; fine-tuners: 20 updates per round, 30 proxy epochs), with timers
wrapped around the agent's calls and the runner's phase callbacks (``RunCallbacks``). Phases are exclusive
(a phase's time excludes the phases inside it):

* ``query_sampling``  ``agent.propose``: drawing the designs that are sent to the oracle
* ``proxy_fit``       ``sqdf_bbo.proxy.fit_proxy`` inside ``improve()``
* ``train_rollouts``  no-grad policy sampling inside ``improve()`` (SQDF's buffer fills, AM's, DDPO's rollouts)
* ``train_steps``     the rest of ``improve()``: losses, backward passes, optimizer steps
* ``evaluation``      the runner's ``evaluate`` phase (harness-side sampling, oracle, diversity and naturalness metrics)
* ``path_kl``         ``sqdf_bbo.diffusion.path_kl`` inside the evaluation
* ``checkpoints``     the runner's ``checkpoint`` phase (round ends, query phases, mid-round)
* ``other``           everything else: building the task and agent, the oracle, logs and sample grids

With ``--flops`` a second run of each method counts the FLOPs of every phase with
:class:`MatmulFlops`: ``torch.utils.flop_counter``'s formulas (matmuls and convolutions, forward and backward; it slows
the run, so times always come from the first, uncounted run). Achieved GFLOP/s = FLOPs / time; the
``peak_ratio`` divides it by this CPU's fp32 matmul rate measured at the start of the same invocation
(1024 x 1024 GEMM, the run's thread count).

With ``--repeats K`` the timed runs are repeated K times, interleaved (every method once, then every
method again, ...), so that this VM's drift, which moves the same code by tens of percent within minutes,
falls on every method alike; each phase's seconds are the median over the K runs, the ``total`` row's the
median of the K totals (so the phases need not add up to it), ``s_per_1k_min`` / ``s_per_1k_max``
give the spread of the totals, and ``load_before`` / ``load_after`` are the lowest load average before
and the highest after any of the method's runs.

Appends nothing: rewrites ``--out`` with one row per (method, phase) plus a ``total`` row per method:
task, method, budget, phase, seconds, s_per_1k_queries, gflop, gflops_per_s, peak_ratio, matmul_peak_gflops,
threads, load_before, load_after, machine, git_commit, repeats, s_per_1k_min, s_per_1k_max. Give it the
machine alone and quote the load averages.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from benchmarks.common import markdown
from benchmarks.common.provenance import load_average, provenance
from benchmarks.perf.results_csv import write_csv
from sqdf_bbo.harness.callbacks import RunCallbacks

PHASES = ("query_sampling", "proxy_fit", "train_rollouts", "train_steps", "evaluation", "path_kl", "checkpoints",
          "other")
LEADERBOARD_SETTINGS = {"run": {"n_eval": 128}, "trained": {"updates_per_round": 20, "proxy_epochs": 30}}
DEFAULT_METHODS = ("sqdf", "seiko", "adjoint-matching", "alignprop", "draft", "draft-k", "draft-1", "draft-lv",
                   "ddpo", "ddpo-sf", "raft", "diffusion-nft", "best-of-n", "svdd", "fk-steering")
COLUMNS = ["task", "method", "budget", "phase", "seconds", "s_per_1k_queries", "gflop", "gflops_per_s",
           "peak_ratio", "matmul_peak_gflops", "threads", "load_before", "load_after", "machine", "git_commit",
           "repeats", "s_per_1k_min", "s_per_1k_max"]


class MatmulFlops(TorchDispatchMode):
    """FLOPs of every matmul and convolution run inside it, by ``torch.utils.flop_counter``'s formulas, forward
    and backward. Unlike ``FlopCounterMode`` it tracks no modules, whose backward hooks break the
    ``torch.autograd.grad`` calls of Adjoint Matching's adjoint and reward gradients."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out

    def get_total_flops(self) -> int:
        return self.total


class PhaseClock:
    """Exclusive time (and, with a FLOP counter, FLOPs) per phase: entering a phase pauses the enclosing one."""

    def __init__(self, flop_counter=None):
        self.seconds = {p: 0.0 for p in PHASES}
        self.flops = {p: 0 for p in PHASES}
        self.counter = flop_counter
        self.stack = ["other"]
        self.start()

    def start(self) -> None:
        """Count from now (time and FLOPs before this are charged to nothing)."""
        self._t, self._f = time.perf_counter(), self._total_flops()

    def _total_flops(self) -> int:
        return int(self.counter.get_total_flops()) if self.counter is not None else 0

    def _charge(self) -> None:
        now, f = time.perf_counter(), self._total_flops()
        self.seconds[self.stack[-1]] += now - self._t
        self.flops[self.stack[-1]] += f - self._f
        self._t, self._f = now, f

    def enter(self, name: str) -> None:
        """Phase ``name`` begins: the enclosing phase pauses."""
        self._charge()
        self.stack.append(name)

    def leave(self) -> None:
        """The innermost phase ends: the enclosing one resumes."""
        self._charge()
        self.stack.pop()

    @contextlib.contextmanager
    def phase(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.leave()

    def wrap(self, fn: Callable, name: str, only_inside: Optional[str] = None) -> Callable:
        """fn timed as phase ``name`` (when ``only_inside`` is given: only if called directly inside that phase)."""
        def timed(*args, **kwargs):
            if self.stack[-1] == name or (only_inside is not None and self.stack[-1] != only_inside):
                return fn(*args, **kwargs)
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed

    def finish(self) -> None:
        self._charge()


#: the runner's phases (sqdf_bbo.harness.callbacks.PHASES) this script times, and its names for them
RUNNER_PHASES = {"evaluate": "evaluation", "checkpoint": "checkpoints"}


class ClockCallbacks(RunCallbacks):
    """The runner's ``evaluate`` and ``checkpoint`` phases (``Run(..., callbacks=...)``) timed on ``clock``;
    its other phases are left to the patches of :func:`instrumented` (or to ``other``)."""

    def __init__(self, clock: PhaseClock):
        self.clock = clock

    def on_phase_start(self, name: str) -> None:
        if name in RUNNER_PHASES:
            self.clock.enter(RUNNER_PHASES[name])

    def on_phase_end(self, name: str, seconds: float) -> None:
        if name in RUNNER_PHASES:
            self.clock.leave()


@contextlib.contextmanager
def instrumented(method_cls, clock: PhaseClock):
    """Patch the agent-side phases of one method class onto ``clock`` (restored on exit); the runner's own
    phases (evaluation, checkpoints) come from :class:`ClockCallbacks`."""
    import sqdf_bbo.diffusion as diffusion
    import sqdf_bbo.proxy as proxy
    from sqdf_bbo.agents.base import DiffusionAgent

    patches = [(method_cls, "propose", "query_sampling", None), (method_cls, "improve", "train_steps", None),
               (proxy, "fit_proxy", "proxy_fit", None), (diffusion, "path_kl", "path_kl", None),
               (DiffusionAgent, "sample", "train_rollouts", "train_steps"),
               (DiffusionAgent, "sample_batched", "train_rollouts", "train_steps")]
    saved = []
    try:
        for owner, attr, name, inside in patches:
            if isinstance(owner, type):  # patch where the method is defined (it may be inherited)
                owner = next(k for k in owner.__mro__ if attr in k.__dict__)
                if any(o is owner and a == attr for o, a, _ in saved):
                    continue
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            saved.append((owner, attr, original))
            setattr(owner, attr, clock.wrap(original, name, inside))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """fp32 GEMM rate of this CPU at the current thread count (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_method(task: str, method: str, budget: int, extra: dict, count_flops: bool) -> PhaseClock:
    """One run of ``method`` on ``task`` in a temporary folder, phases timed (and FLOPs counted)."""
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.run import run_experiment

    cls = resolve_method(method)
    settings = dict(extra)
    if "updates_per_round" in cls.default_config:
        settings = {**LEADERBOARD_SETTINGS["trained"], **settings}
    elif "proxy_epochs" in cls.default_config:
        settings = {"proxy_epochs": LEADERBOARD_SETTINGS["trained"]["proxy_epochs"], **settings}
    counter = MatmulFlops() if count_flops else None
    clock = PhaseClock(counter)
    with tempfile.TemporaryDirectory() as out, instrumented(cls, clock), (counter or contextlib.nullcontext()):
        clock.start()
        run_experiment(task, method, budget, seed=0, out=out, run_settings=LEADERBOARD_SETTINGS["run"],
                       callbacks=ClockCallbacks(clock), **settings)
        clock.finish()
    return clock


TARGET_S_PER_1K = 15.0  # issue 14: every method at the leaderboard's settings, 1 thread, quiet machine


def markdown_table(rows: list[dict]) -> str:
    """One line per method from the CSV rows: s per 1k queries in total (with the min–max over repeats) and
    in the main phases, the counted GFLOP, achieved GFLOP/s and share of the matmul peak (when FLOPs were
    counted), the target."""
    by = {}
    for r in rows:
        by.setdefault(r["method"], {})[r["phase"]] = r
    header = ["method", "s / 1k queries", "training steps", "training rollouts", "query sampling",
              "evaluation + path KL", "proxy fit", "GFLOP", "GFLOP/s", "of matmul peak", "≤ 15 s"]
    cells = []
    f = lambda x: "" if x in (None, "") else f"{float(x):.1f}"  # noqa: E731
    for method, ph in by.items():
        tot = ph["total"]
        s = lambda name: float(ph[name]["s_per_1k_queries"])  # noqa: E731
        ratio = tot.get("peak_ratio")
        spread = (f" ({f(tot['s_per_1k_min'])}–{f(tot['s_per_1k_max'])})"
                  if int(float(tot.get("repeats") or 1)) > 1 and tot.get("s_per_1k_min") not in (None, "") else "")
        cells.append([method, f"{f(tot['s_per_1k_queries'])}{spread}", f"{s('train_steps'):.1f}",
                      f"{s('train_rollouts'):.1f}", f"{s('query_sampling'):.1f}",
                      f"{s('evaluation') + s('path_kl'):.1f}", f"{s('proxy_fit'):.1f}", f(tot.get("gflop")),
                      f(tot.get("gflops_per_s")), "" if ratio in (None, "") else f"{100 * float(ratio):.0f} %",
                      "yes" if float(tot["s_per_1k_queries"]) <= TARGET_S_PER_1K else "no"])
    return markdown.markdown_table(header, cells, align="l" + "r" * (len(header) - 1))


def method_rows(task: str, method: str, budget: int, timed: list, counted, loads: list, peak: float,
                threads: int, mach: str, commit: str) -> list[dict]:
    """The CSV rows of one method: per phase the median seconds over the timed runs, the total the median
    of their totals (with min and max); FLOPs from the counted run (if any)."""
    import statistics

    per_1k = 1000.0 / budget
    totals = [sum(t.seconds.values()) for t in timed]
    rows = []
    for phase in PHASES + ("total",):
        sec = statistics.median(totals) if phase == "total" else statistics.median(t.seconds[phase] for t in timed)
        gflop = None
        if counted is not None:
            gflop = (sum(counted.flops.values()) if phase == "total" else counted.flops[phase]) / 1e9
        rate = gflop / sec if gflop is not None and sec > 0 else None
        rows.append({"task": task, "method": method, "budget": budget, "phase": phase,
                     "seconds": round(sec, 3), "s_per_1k_queries": round(sec * per_1k, 3),
                     "gflop": None if gflop is None else round(gflop, 3),
                     "gflops_per_s": None if rate is None else round(rate, 2),
                     "peak_ratio": None if rate is None else round(rate / peak, 4),
                     "matmul_peak_gflops": round(peak, 1), "threads": threads,
                     "load_before": min(lb for lb, _ in loads), "load_after": max(la for _, la in loads),
                     "machine": mach, "git_commit": commit, "repeats": len(timed),
                     "s_per_1k_min": round(min(totals) * per_1k, 3) if phase == "total" else None,
                     "s_per_1k_max": round(max(totals) * per_1k, 3) if phase == "total" else None})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    from sqdf_bbo.run import _parse_value

    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.perf_methods", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="levy")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--flops", action="store_true", help="also count FLOPs per phase (a second, slower run)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per method, interleaved; medians reported")
    p.add_argument("--out", default="results/perf_methods.csv")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="agent setting for every method")
    p.add_argument("--table", metavar="CSV", help="print the markdown summary of an earlier CSV and stop")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table, newline="") as fh:
            print(markdown_table(list(csv.DictReader(fh))))
        return 0
    if a.budget < 1 or a.threads < 1 or a.repeats < 1:
        p.error(f"--budget, --threads and --repeats must be >= 1, got {a.budget}, {a.threads} and {a.repeats}")
    extra = {}
    for s in a.sets:
        if "=" not in s:
            p.error(f"--set needs KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        extra[k] = _parse_value(v)
    torch.set_num_threads(a.threads)
    peak = matmul_peak_gflops()
    prov = provenance()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    run_method(a.task, methods[0], 32, extra, count_flops=False)  # warm-up: one-time imports and caches
    timings: dict[str, list] = {m: [] for m in methods}
    loads: dict[str, list] = {m: [] for m in methods}
    counted: dict[str, Optional[PhaseClock]] = {}
    rows = []
    for repeat in range(a.repeats):
        for method in methods:
            load_before = load_average()
            timings[method].append(run_method(a.task, method, a.budget, extra, count_flops=False))
            loads[method].append((load_before, load_average()))
            if repeat == 0:
                counted[method] = run_method(a.task, method, a.budget, extra, count_flops=True) if a.flops else None
            rows = [r for m in methods if timings[m] for r in method_rows(
                a.task, m, a.budget, timings[m], counted[m], loads[m], peak, a.threads, prov["machine"],
                prov["git_commit"])]
            write_csv(Path(a.out), rows, COLUMNS)  # after every run: an interruption keeps what was measured
            per_1k = 1000.0 / a.budget
            last = timings[method][-1].seconds
            print(f"{method} (run {repeat + 1}/{a.repeats}): {sum(last.values()) * per_1k:.1f} s per 1000 queries ("
                  + ", ".join(f"{k} {v * per_1k:.1f}" for k, v in last.items()) + ")", file=sys.stderr, flush=True)
    print(f"wrote {len(rows)} rows to {a.out}", file=sys.stderr)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run a grid of tasks x methods x seeds x budgets with ``sqdf_bbo.run``, locally or on Slurm (submitit).

    python -m benchmarks.run.sweep --tasks ackley-manifold,levy --methods pretrained,sqdf,ddpo --seeds 0-4 \
        --budget 2000 --out runs/ [--workers N] [--threads T] [--backend local|submitit] [--resume] \
        [--set key=value ...] [--set-for METHOD key=value ...] [--dry-run]

Every name and ``--set`` value is checked before any run starts. A run whose ``final.json`` exists is
skipped; a run with a checkpoint but no ``final.json`` (interrupted) is continued with ``--resume`` and
refused without it. Each run executes ``sqdf_bbo.run.main`` in a worker process (``local``: a
``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method and ``--threads`` threads
per worker, for torch and numpy's BLAS alike; ``submitit``: one job per run through ``submitit.AutoExecutor`` -- Slurm when available,
``--cluster local`` / ``debug`` for a machine without Slurm). A run's stdout/stderr go to
``<out>/_logs/<run>.log``; the sweep's command, machine, commit, statuses and wall time to
``<out>/_logs/sweep_<time>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.common.provenance import provenance

LOG_DIR = "_logs"


class SweepError(ValueError):
    """A bad sweep argument; printed as one line."""


@dataclass
class RunSpec:
    """One run of the grid and how to execute it."""

    task: str
    method: str
    budget: int
    seed: int
    out: str
    sets: list[str] = field(default_factory=list)
    resume: bool = False
    threads: int = 1

    @property
    def name(self) -> str:
        from sqdf_bbo.run import run_folder_name

        return run_folder_name(self.task, self.method, self.budget, self.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def log_path(self) -> Path:
        return Path(self.out) / LOG_DIR / f"{self.name}.log"

    def argv(self) -> list[str]:
        a = ["--task", self.task, "--method", self.method, "--budget", str(self.budget), "--seed", str(self.seed),
             "--out", self.out, "--no-progress"]
        for s in self.sets:
            a += ["--set", s]
        return a + (["--resume"] if self.resume else [])

    def status(self) -> str:
        """'done' (final.json), 'partial' (checkpoint, no final.json) or 'new'."""
        if (self.run_dir / "final.json").exists():
            return "done"
        if (self.run_dir / "checkpoint" / "state.json").exists():
            return "partial"
        return "new"


# ---- parsing and validation --------------------------------------------------------------------
def parse_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise SweepError(f"--{what} is empty; give a comma-separated list")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise SweepError(f"--{what} repeats {', '.join(dup)}")
    return items


def parse_int_ranges(text: str, what: str, minimum: int) -> list[int]:
    """'0-4' -> [0..4]; '0,2,5-6' -> [0, 2, 5, 6]."""
    import re

    out: list[int] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise SweepError(f"--{what} must be non-negative integers or ranges like 0-4, comma-separated; "
                             f"got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise SweepError(f"--{what} range {part!r} is empty (end < start)")
        out.extend(range(lo, hi + 1))
    if not out:
        raise SweepError(f"--{what} is empty")
    bad = [v for v in out if v < minimum]
    if bad:
        raise SweepError(f"--{what} values must be >= {minimum}, got {bad}")
    return sorted(set(out))


def validate(tasks: list[str], methods: list[str], budgets: list[int], sets: list[str],
             method_sets: dict[str, list[str]]) -> None:
    """Check task/method names and every --set against the real registry and configs; raise SweepError."""
    from sqdf_bbo.agents import METHODS, available_methods, resolve_method
    from sqdf_bbo.run import CLIError, parse_sets, resolve_run_settings
    from sqdf_bbo.tasks import list_tasks, make_task

    known = list_tasks()
    bad = [t for t in tasks if t not in known and ":" not in t]  # 'pkg.module:factory' is checked below
    if bad:
        raise SweepError(f"unknown task(s) {', '.join(map(repr, bad))}; allowed: {', '.join(known)} "
                         "or a 'package.module:factory' task")
    errors, classes = [], {}
    for m in methods:
        if ":" not in m and m not in METHODS:
            errors.append(f"unknown method {m!r}")
            continue
        try:
            classes[m] = resolve_method(m)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise SweepError("; ".join(errors) + f". Available methods: {', '.join(available_methods())}")
    stray = sorted(set(method_sets) - set(methods))
    if stray:
        raise SweepError(f"--set-for names method(s) {', '.join(stray)} that are not in --methods ({', '.join(methods)})")
    for m in methods:
        try:
            agent, task_over, run_over = parse_sets(sets + method_sets.get(m, []))
        except CLIError as e:
            raise SweepError(str(e)) from None
        for t in tasks:
            try:
                task = make_task(t, **task_over)
                classes[m].resolve_config(task.info, agent)
                for b in budgets:  # every run setting, typed and range-checked, before anything launches
                    resolve_run_settings(run_over, task.info.run_defaults, b)
            except (CLIError, ValueError, TypeError) as e:
                hint = " (--set-for METHOD KEY=VALUE sets a key for one method only)" if agent else ""
                raise SweepError(f"task {t!r} / method {m!r}: {e}{hint}") from None


def build_grid(tasks, methods, seeds, budgets, out, sets, method_sets, resume, threads) -> list[RunSpec]:
    """Every run of the grid, seed-major (seed, budget, task, method) so a cut-short sweep covers every cell."""
    return [RunSpec(t, m, b, s, str(out), list(sets) + list(method_sets.get(m, [])), resume, threads)
            for s in seeds for b in budgets for t in tasks for m in methods]


# ---- executing one run (in a worker process or a submitit job) ----------------------------------
#: the thread-count variables a worker sets before torch and numpy load (torch's OpenMP, MKL, numpy's BLAS)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _set_threads(threads: int) -> None:
    """Limit this process to ``threads`` threads: the variables for libraries not loaded yet, torch's
    intra-op pool, and numpy's BLAS even when it is loaded already (a spawned worker imports the driver's
    main module, and with it numpy, before its initializer runs)."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


def run_one(spec: RunSpec | dict) -> dict:
    """Execute one run in this process; never raises: returns status, rc, wall time and the log path."""
    if isinstance(spec, dict):
        spec = RunSpec(**spec)
    t0 = time.time()
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    result = {"run": spec.name, "run_dir": str(spec.run_dir), "log": str(spec.log_path)}
    argv_backup = sys.argv
    try:
        _set_threads(spec.threads)
        from sqdf_bbo.run import main as run_main

        sys.argv = ["sqdf_bbo/run.py", *spec.argv()]  # so config.json records the run's own command
        with open(spec.log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"# {_dt.datetime.now().isoformat(timespec='seconds')} python -m sqdf_bbo.run "
                  + " ".join(spec.argv()), flush=True)
            rc = run_main(spec.argv())
        ok = rc == 0 and (spec.run_dir / "final.json").exists()
        result.update(status="done" if ok else "failed", rc=rc)
        if not ok:
            result["error"] = _last_line(spec.log_path) or f"exit code {rc}"
    except BaseException as e:  # noqa: BLE001 - a failed run must not stop the sweep
        with open(spec.log_path, "a") as log:
            traceback.print_exc(file=log)
        result.update(status="failed", rc=None, error=f"{type(e).__name__}: {e}")
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        sys.argv = argv_backup
    result["wall_s"] = time.time() - t0
    return result


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _worker_init(threads: int) -> None:
    _set_threads(threads)


# ---- backends -----------------------------------------------------------------------------------
def run_local(specs: list[RunSpec], workers: int, threads: int, bar) -> list[dict]:
    """A process pool (spawn); one run per task, results as they finish."""
    import multiprocessing as mp

    results = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, asdict(s)): s for s in specs}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as e:  # a worker died (e.g. killed for memory)
                s = futures[fut]
                res = {"run": s.name, "run_dir": str(s.run_dir), "log": str(s.log_path), "status": "failed",
                       "error": f"worker died: {type(e).__name__}: {e}"}
            results.append(res)
            _tick(bar, res)
    return results


def run_submitit(specs: list[RunSpec], args, bar) -> list[dict]:
    """One submitit job per run (a Slurm job array when Slurm is there); waits for all of them."""
    import submitit

    folder = Path(args.out) / LOG_DIR / "submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.cluster)
    params = {"timeout_min": args.timeout_min, "cpus_per_task": args.threads, "name": "sqdf-bbo-sweep",
              "slurm_array_parallelism": args.workers}
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if args.partition:
        params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    if executor.cluster == "debug":  # debug runs in this process, one after another
        jobs = [executor.submit(run_one, asdict(s)) for s in specs]
    else:
        with executor.batch():
            jobs = [executor.submit(run_one, asdict(s)) for s in specs]
    results, by_job = [], {id(j): s for j, s in zip(jobs, specs)}
    poll = 0.5 if executor.cluster in ("debug", "local") else 15
    for job in submitit.helpers.as_completed(jobs, poll_frequency=poll):
        s = by_job[id(job)]
        try:
            res = job.result()
        except Exception as e:  # the job itself failed (timeout, node failure)
            res = {"run": s.name, "run_dir": str(s.run_dir), "log": str(s.log_path), "status": "failed",
                   "error": f"submitit job {job.job_id} failed: {str(e).splitlines()[-1] if str(e) else e!r}"}
        res["job_id"] = str(job.job_id)
        results.append(res)
        _tick(bar, res)
    return results


def _tick(bar, res: dict) -> None:
    bar.update(1)
    failed = getattr(bar, "_failed", 0) + (res.get("status") != "done")
    bar._failed = failed
    bar.set_postfix_str(f"last {res['run']} {res.get('status')} ({res.get('wall_s', 0):.0f}s), failed {failed}")


# ---- CLI ----------------------------------------------------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options shared by every grid runner (this sweep, ``benchmarks.run.frontier``): seeds, budgets, output
    folder, backend and parallelism, resume, settings, dry run."""
    p.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,5-7 (default 0-4)")
    p.add_argument("--budget", default="2000", help="oracle budget(s), e.g. 2000 or 500,2000 (default 2000)")
    p.add_argument("--out", default="runs", help="parent folder of the run folders (default runs/)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default max(1, cpu_count // workers))")
    p.add_argument("--backend", choices=("local", "submitit"), default="local")
    p.add_argument("--cluster", default=None, choices=(None, "slurm", "local", "debug"),
                   help="submitit cluster (default: Slurm if available, else local)")
    p.add_argument("--timeout-min", type=int, default=240, help="submitit job time limit in minutes")
    p.add_argument("--mem-gb", type=float, default=None, help="submitit memory per job")
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs (checkpoint, no final.json)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="setting for every run: agent KEY, task.KEY or run.KEY (repeatable)")
    p.add_argument("--set-for", dest="set_for", action="append", nargs=2, default=[], metavar=("METHOD", "KEY=VALUE"),
                   help="setting for one method's runs only (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--methods", required=True, help="comma-separated method names (or module:Class)")
    add_run_arguments(p)
    return p


def check_run_arguments(args: argparse.Namespace) -> tuple[list[int], list[int], dict[str, list[str]]]:
    """(seeds, budgets, per-method settings) from the options of :func:`add_run_arguments`; fills in
    ``args.threads``; raises SweepError."""
    seeds = parse_int_ranges(args.seeds, "seeds", 0)
    budgets = parse_int_ranges(args.budget, "budget", 1)
    if args.workers < 1:
        raise SweepError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise SweepError(f"--threads must be >= 1, got {args.threads}")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    if args.cluster and args.backend != "submitit":
        raise SweepError("--cluster only applies to --backend submitit")
    method_sets: dict[str, list[str]] = {}
    for m, kv in args.set_for:
        method_sets.setdefault(m, []).append(kv)
    return seeds, budgets, method_sets


def run_statuses(specs: list[RunSpec], resume: bool) -> dict[str, str]:
    """Status ('done'/'partial'/'new') of every run, keyed by its run folder as a string; raises SweepError
    when some were interrupted and ``resume`` is off."""
    status = {str(s.run_dir): s.status() for s in specs}
    partial = [s.name for s in specs if status[str(s.run_dir)] == "partial"]
    if partial and not resume:
        raise SweepError(f"{len(partial)} run(s) were interrupted ({', '.join(partial[:3])}"
                         f"{', ...' if len(partial) > 3 else ''}); pass --resume to continue them "
                         "or delete their folders")
    return status


def execute(specs: list[RunSpec], status: dict[str, str], args: argparse.Namespace, command: str,
            label: str = "sweep") -> int:
    """Run the unfinished ``specs`` (``status`` from :func:`run_statuses`) on ``args.backend``, or list them
    with ``--dry-run``; writes ``<out>/_logs/<label>_<time>.json``. Returns 0, or 1 when a run failed."""
    from tqdm import tqdm

    t_start = time.time()
    todo = [s for s in specs if status[str(s.run_dir)] != "done"]
    n_done = len(specs) - len(todo)
    if args.dry_run:
        for s in specs:
            print(f"{status[str(s.run_dir)]:8s} {s.run_dir}")
        return 0
    Path(args.out, LOG_DIR).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(specs), initial=n_done, unit="run", desc=label, disable=args.no_progress,
               dynamic_ncols=True)
    try:
        if not todo:
            results = []
        elif args.backend == "local":
            results = run_local(todo, args.workers, args.threads, bar)
        else:
            results = run_submitit(todo, args, bar)
    finally:
        bar.close()
    wall = time.time() - t_start
    failed = [r for r in results if r.get("status") != "done"]
    record = {**provenance(command=command),
              "started": _dt.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"), "wall_time_s": wall,
              "runs": len(specs), "skipped": n_done, "ran": len(results), "failed": len(failed),
              "results": sorted(results, key=lambda r: r["run_dir"])}
    stamp = _dt.datetime.fromtimestamp(t_start).strftime("%Y%m%d-%H%M%S")
    (Path(args.out) / LOG_DIR / f"{label}_{stamp}.json").write_text(json.dumps(record, indent=1))
    print(f"{label}: ran {len(results)}, skipped {n_done}, failed {len(failed)}, wall {wall:.1f}s", file=sys.stderr)
    for r in failed:
        print(f"  FAILED {r['run']}: {r.get('error')} (log: {r['log']})", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        tasks = parse_list(args.tasks, "tasks")
        methods = parse_list(args.methods, "methods")
        seeds, budgets, method_sets = check_run_arguments(args)
        validate(tasks, methods, budgets, args.sets, method_sets)
        specs = build_grid(tasks, methods, seeds, budgets, args.out, args.sets, method_sets, args.resume,
                           args.threads)
        status = run_statuses(specs, args.resume)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_done = sum(v == "done" for v in status.values())
    print(f"sweep: {len(specs)} runs ({len(tasks)} tasks x {len(methods)} methods x {len(budgets)} budgets x "
          f"{len(seeds)} seeds); {n_done} finished already (skipped), {len(specs) - n_done} to run "
          f"[{args.backend}, {args.workers} worker(s) x {args.threads} thread(s)]", file=sys.stderr)
    command = "python -m benchmarks.run.sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    return execute(specs, status, args, command)


if __name__ == "__main__":
    sys.exit(main())

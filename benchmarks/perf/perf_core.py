"""Performance of the core loop on the synthetic tier: seconds per 1,000 queries.

Re-run (writes results/perf_core.csv; ~2-4 min on 2 CPU cores)::

    python -m benchmarks.perf.perf_core --repeats 3 --threads 1 --out results/perf_core.csv

For every synthetic task (vector MLP backbone, its default number of DDIM steps, eta = 1) it times, per
1,000 designs (the median over ``--repeats`` runs, after one warm-up):

* ``ddim_sample``     sampling 1,000 designs from the pretrained backbone (no grad, batches of 256, decode)
* ``ddim_sample_grad`` the same chain differentiable end to end (grad=True) plus one backward pass of
  the designs' sum (the AlignProp/DRaFT cost), batches of 256
* ``path_kl``         exact path KL policy-vs-reference along 1,000 recorded trajectories (2 model calls/step)
* ``oracle_true``     ``task.evaluate_true`` on 1,000 designs in one call
* ``env_step``        1,000 queries through ``BudgetedOracleEnv.step`` in the task's default batch size
  (oracle + noise + budget bookkeeping)

The ``-manifold`` variants share their base task's prior and backbone, so only the oracle rows
(``oracle_true``, ``env_step``) are measured for them. Timings are wall-clock on whatever else the machine is
running; compare rows from one file only.

Columns: task, what, seconds_per_1k_queries, n_repeats, torch_threads, machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common.provenance import machine
from benchmarks.perf.results_csv import write_csv
from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
from sqdf_bbo.envs import BudgetedOracleEnv
from sqdf_bbo.tasks import make_task

N_QUERIES = 1000
SAMPLE_BATCH = 256
COLUMNS = ["task", "what", "seconds_per_1k_queries", "n_repeats", "torch_threads", "machine"]


def synthetic_tasks() -> list[str]:
    from sqdf_bbo.tasks.synthetic import FUNCTIONS

    return [n for f in FUNCTIONS for n in (f, f"{f}-manifold")]


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn``: the median of ``repeats`` timed calls after ``warmup`` untimed ones (every
    perf benchmark times its calls with this)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_task(name: str, repeats: int, sampling: bool = True) -> dict[str, float]:
    """Seconds per 1,000 queries for each measured operation of one task (DDIM rows only if ``sampling``)."""
    task = make_task(name)
    backbone = task.info.make_backbone()
    backbone.requires_grad_(False).eval()
    steps = int(task.info.num_steps or 50)
    schedule = DDIMSchedule.from_scheduler(backbone.scheduler, steps, eta=1.0)
    shape = tuple(backbone.latent_shape)
    dtype = next(backbone.parameters()).dtype
    batches = [min(SAMPLE_BATCH, N_QUERIES - i) for i in range(0, N_QUERIES, SAMPLE_BATCH)]

    def eps(x, t, cond=None):
        return backbone(x, t, cond)

    def sample() -> list:
        g = torch.Generator().manual_seed(0)
        out = []
        with torch.no_grad():
            for b in batches:
                x0 = torch.randn((b, *shape), generator=g, dtype=dtype)
                tr = sample_trajectory(eps, schedule, x0, generator=g)
                out.append((tr, backbone.decode(tr.final)))
        return out

    def sample_grad() -> None:
        g = torch.Generator().manual_seed(0)
        w = torch.zeros((), requires_grad=True)  # a leaf so every batch has a graph to differentiate

        def eps_w(x, t, cond=None):
            return backbone(x, t, cond) * (1 + w)

        for b in batches:
            x0 = torch.randn((b, *shape), generator=g, dtype=dtype)
            tr = sample_trajectory(eps_w, schedule, x0, generator=g, grad=True)
            backbone.decode(tr.final).sum().backward()

    drawn = sample()
    trajs = [tr for tr, _ in drawn]
    designs = torch.cat([x for _, x in drawn])

    def kl() -> None:
        for tr in trajs:
            path_kl(eps, eps, schedule, tr)

    def oracle() -> None:
        task.evaluate_true(designs)

    bs = int(task.info.run_defaults.batch_size or 64)
    x_np = designs.numpy()

    def env_steps() -> None:
        env = BudgetedOracleEnv(task, budget=N_QUERIES, batch_size=min(bs, N_QUERIES))
        env.reset(seed=0)
        for i in range(0, N_QUERIES, bs):
            env.step(x_np[i : i + bs])

    scale = 1000.0 / N_QUERIES
    ops = {"ddim_sample": sample, "ddim_sample_grad": sample_grad, "path_kl": kl} if sampling else {}
    ops.update({"oracle_true": oracle, "env_step": env_steps})
    return {what: median_seconds(fn, repeats) * scale for what, fn in ops.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=None, help="default: every synthetic task")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", default="results/perf_core.csv")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    names = args.tasks or synthetic_tasks()
    allowed = synthetic_tasks()
    bad = [n for n in names if n not in allowed]
    if bad:
        p.error(f"not synthetic tasks: {', '.join(bad)}; allowed: {', '.join(allowed)}")
    mach = machine()
    rows, skipped = [], []
    for name in names:
        t0 = time.time()
        try:
            res = time_task(name, args.repeats, sampling=not name.endswith("-manifold"))
        except FileNotFoundError as e:  # backbone weights not pretrained yet
            skipped.append(name)
            print(f"SKIPPED {name}: {e}", file=sys.stderr)
            continue
        for what, sec in res.items():
            rows.append({"task": name, "what": what, "seconds_per_1k_queries": f"{sec:.5f}",
                         "n_repeats": args.repeats, "torch_threads": torch.get_num_threads(), "machine": mach})
        print(f"{name}: " + ", ".join(f"{k}={v:.4f}s" for k, v in res.items()) + f" ({time.time() - t0:.0f}s)",
              file=sys.stderr)
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    write_csv(tmp, rows, COLUMNS)
    os.replace(tmp, out)
    print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    if skipped:
        print(f"incomplete: skipped {', '.join(skipped)} (exit 2)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

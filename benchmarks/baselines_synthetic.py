"""Every baseline, SQDF and the pretrained model on the synthetic tier (issue 5).

    nice python benchmarks/baselines_synthetic.py [--workers 1] [--seeds 0 1 2 3 4] [--out runs/baselines_synthetic]
    python benchmarks/baselines_synthetic.py --summarise        # mean ± std table from the CSV

Tasks are those of ``benchmarks/sqdf_synthetic.py`` (ackley, levy, rastrigin-manifold) so the two tables
can be read side by side; budget 2000 in the runner's 4 rounds of 133/266/533/1068 queries; 5 seeds.

CPU scaling for this tier (165 runs had to fit in ~30-45 min on a 2-core machine shared by ~6 engineers,
load average ~13; a first attempt with 20 DDIM steps and 20 updates per round managed 9 runs in 520 s),
identical for every method where the setting means the same thing, and recorded in each run's config.json:
- every method, pretrained included: ``task.num_steps=10`` DDIM steps (task default 50) and
  ``run.n_eval=128`` evaluation samples (task default 512);
- every fine-tuning method: ``updates_per_round=10`` optimizer steps per round (DDPO: 10 sample-and-train
  epochs of 2 PPO steps), ``proxy_epochs=50`` (official 300);
- every baseline: ``train_batch=16`` trajectories per optimizer step (baseline default 32; DDPO's PPO
  minibatch 8 keeps its official 2 steps per epoch). SQDF keeps sqdf_synthetic.py's settings
  (``train_batch`` = 32 (trajectory, step) pairs, ``fill_every=4``): its pairs are single-step model calls,
  not chains, so "batch" does not mean the same thing. With 10 steps SQDF's consistency model (distilled
  for 50 steps, ackley only) is unavailable and SQDF falls back to its Tweedie Q-estimator ("w/o CM"). Method-specific hyperparameters (lr, clip ranges, KL weights,
truncation) are each method's own defaults from the spec; nothing was tuned per method or task.

Results go to results/baselines_synthetic.csv (one row per run, rewritten as runs finish); finished run
folders are reused on re-launch (``--resume``).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = ["ackley", "levy", "rastrigin-manifold"]
BUDGET = 2000
COMMON = ["run.n_eval=128", "task.num_steps=10"]
FINETUNE = ["proxy_epochs=50", "updates_per_round=10"]
BASELINE = FINETUNE + ["train_batch=16"]
METHODS: dict[str, list[str]] = {
    "pretrained": [],
    "sqdf": FINETUNE + ["fill_every=4"],
    "ddpo": BASELINE + ["ppo_minibatch=8"],
    "ddpo-sf": BASELINE,
    "alignprop": BASELINE,
    "draft": BASELINE,
    "draft-k": BASELINE,
    "draft-1": BASELINE,
    "draft-lv": BASELINE,
    "adjoint-matching": BASELINE,
    "seiko": BASELINE,
}
COLUMNS = ["task", "method", "seed", "eval_reward", "best_so_far", "path_kl", "vendi", "mean_pairwise_distance",
           "prior_logpdf", "invalid_frac", "wall_time_s"]
CSV_PATH = ROOT / "results" / "baselines_synthetic.csv"


def run_one(job: tuple[str, str, int, str]) -> dict:
    task, method, seed, out = job
    import torch

    torch.set_num_threads(1)
    from sqdf_bbo.run import Run, build_parser

    sets = COMMON + METHODS[method]
    argv = ["--task", task, "--method", method, "--budget", str(BUDGET), "--seed", str(seed),
            "--out", str(Path(out) / method), "--no-progress", "--resume"]
    for s in sets:
        argv += ["--set", s]
    t0 = time.time()
    final = Run(build_parser().parse_args(argv)).execute(progress=False)
    row = {"task": task, "method": method, "seed": seed}
    for c in COLUMNS:
        row.setdefault(c, final.get(c))
    if row["wall_time_s"] is None:
        row["wall_time_s"] = time.time() - t0
    return row


def write_rows(rows: list[dict]) -> None:
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = CSV_PATH.with_suffix(".tmp")
    order = list(METHODS)
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 99,
                                             order.index(r["method"]) if r["method"] in order else 99,
                                             int(r["seed"]))):
            w.writerow({c: r.get(c) for c in COLUMNS})
    os.replace(tmp, CSV_PATH)


def summarise(path: Path = CSV_PATH) -> str:
    """Markdown table, mean ± std over seeds per (task, method), plus Δ eval reward vs pretrained."""
    import pandas as pd

    df = pd.read_csv(path)
    metrics = ["eval_reward", "best_so_far", "path_kl", "vendi", "prior_logpdf", "invalid_frac", "wall_time_s"]
    lines = ["| task | method | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 3)]
    for (task, method), g in df.groupby(["task", "method"], sort=False):
        cells = [f"{g[m].mean():.3g} ± {g[m].std(ddof=1) if len(g) > 1 else 0:.2g}" for m in metrics]
        lines.append(f"| {task} | {method} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default=str(ROOT / "runs" / "baselines_synthetic"))
    p.add_argument("--summarise", action="store_true")
    args = p.parse_args()
    if args.summarise:
        print(summarise())
        return
    bad = [m for m in args.methods if m not in METHODS] + [t for t in args.tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"error: unknown method/task {bad}; allowed methods {list(METHODS)}, tasks {TASKS}")
    from sqdf_bbo.agents import available_methods

    avail = set(available_methods())
    skipped = [m for m in args.methods if m not in avail]
    if skipped:
        print(f"skipping methods not importable in this checkout: {skipped}", flush=True)
    jobs = [(t, m, s, args.out) for s in args.seeds for t in args.tasks for m in args.methods if m in avail]
    rows: list[dict] = []
    if CSV_PATH.exists():
        import pandas as pd

        keep = {(t, m, s) for t, m, s, _ in jobs}
        rows = [r for r in pd.read_csv(CSV_PATH).to_dict("records") if (r["task"], r["method"], int(r["seed"])) not in keep]
    t0 = time.time()
    if args.workers <= 1:
        results = map(run_one, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers, maxtasksperchild=8)
        results = pool.imap_unordered(run_one, jobs)
    for i, row in enumerate(results):
        rows.append(row)
        write_rows(rows)
        print(f"[{time.time() - t0:7.0f}s] {i + 1}/{len(jobs)} {row['task']} {row['method']} s{row['seed']}: "
              f"eval {row['eval_reward']:.4g} best {row['best_so_far']:.4g} kl {row['path_kl']:.3g} "
              f"({row['wall_time_s']:.0f}s)", flush=True)
    print(summarise())


if __name__ == "__main__":
    main()

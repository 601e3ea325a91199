"""SQDF and its three paper ablations against the pretrained model on the synthetic tier.

    nice python benchmarks/sqdf_synthetic.py [--workers 2] [--seeds 0 1 2 3 4] [--out runs/sqdf_synthetic]
    python benchmarks/sqdf_synthetic.py --summarise          # mean ± std table from the CSV

Variants (all at budget 2000, 4 rounds of 133/266/533/1068 queries, the runner's 1:2:4:8 split):
``pretrained``; ``sqdf`` (defaults: α=1, γ=0.9, CM, reward+gamma_PER buffer); ``sqdf_gamma1`` (γ=1, w/o
discount); ``sqdf_tweedie`` (q_estimator=tweedie, w/o CM); ``sqdf_nobuffer`` (buffer=none, w/o buffer).

CPU scaling for this tier (the same for every SQDF variant, recorded in each run's config.json):
updates_per_round=20 (official 40), fill_every=4 (rollouts amortised over 4 updates), proxy_epochs=30
(official 300); every method uses run.n_eval=128 evaluation samples (task default 512). Jobs run
seed-major; a CM variant waits until the task's consistency model exists (so none silently falls back). Each run writes a
normal run folder under ``--out/<variant>/``; finished runs are skipped on re-launch. Results go to
results/sqdf_synthetic.csv (one row per run), appended as runs finish.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = ["ackley", "levy", "rastrigin-manifold"]
BUDGET = 2000
COMMON_RUN = ["run.n_eval=128"]
SQDF_SCALE = ["updates_per_round=20", "fill_every=4", "proxy_epochs=30"]
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "pretrained": ("pretrained", []),
    "sqdf": ("sqdf", SQDF_SCALE),
    "sqdf_gamma1": ("sqdf", SQDF_SCALE + ["gamma=1"]),
    "sqdf_tweedie": ("sqdf", SQDF_SCALE + ["q_estimator=tweedie"]),
    "sqdf_nobuffer": ("sqdf", SQDF_SCALE + ["buffer=none"]),
}
COLUMNS = ["task", "method", "variant", "seed", "eval_reward", "best_so_far", "path_kl", "vendi",
           "mean_pairwise_distance", "prior_logpdf", "invalid_frac", "wall_time_s", "q_estimator_used"]
CSV_PATH = ROOT / "results" / "sqdf_synthetic.csv"


def run_one(job: tuple[str, str, int, str]) -> dict:
    task, variant, seed, out = job
    import torch

    torch.set_num_threads(1)
    from sqdf_bbo.run import Run, build_parser

    method, sets = VARIANTS[variant]
    argv = ["--task", task, "--method", method, "--budget", str(BUDGET), "--seed", str(seed),
            "--out", str(Path(out) / variant), "--no-progress", "--resume"]
    for s in COMMON_RUN + sets:
        argv += ["--set", s]
    args = build_parser().parse_args(argv)
    t0 = time.time()
    run = Run(args)
    final = run.execute(progress=False)
    q = ""
    rounds = (run.dir / "rounds.jsonl").read_text().splitlines()
    if rounds:
        q = json.loads(rounds[-1]).get("train", {}).get("q_estimator_used", "") or ""
    row = {"task": task, "method": method, "variant": variant, "seed": seed, "q_estimator_used": q}
    for c in COLUMNS:
        if c not in row:
            row[c] = final.get(c)
    row["wall_time_s"] = final.get("wall_time_s", time.time() - t0)
    return row


def needs_cm(variant: str) -> bool:
    method, sets = VARIANTS[variant]
    return method == "sqdf" and "q_estimator=tweedie" not in sets


def cm_ready(task: str) -> bool:
    from sqdf_bbo.consistency import cm_weights_path

    return cm_weights_path("mlp", task.removesuffix("-manifold")).with_suffix(".json").exists()


def _schedule(jobs: list, workers: int):
    """Yield result rows; jobs whose consistency model is not yet distilled wait (in order)."""
    if workers <= 1:
        for j in jobs:
            while needs_cm(j[1]) and not cm_ready(j[0]):
                time.sleep(10)
            yield run_one(j)
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers, maxtasksperchild=8)
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < workers:
            ready = [j for j in pending if not needs_cm(j[1]) or cm_ready(j[0])]
            if not ready:
                break
            pending.remove(ready[0])
            running.append(pool.apply_async(run_one, (ready[0],)))
        done = [r for r in running if r.ready()]
        for r in done:
            running.remove(r)
            yield r.get()
        if not done:
            time.sleep(2)
    pool.close()


def write_rows(rows: list[dict]) -> None:
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    tmp = CSV_PATH.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 99,
                                             list(VARIANTS).index(r["variant"]), int(r["seed"]))):
            w.writerow({c: r.get(c) for c in COLUMNS})
    os.replace(tmp, CSV_PATH)


def summarise(path: Path = CSV_PATH) -> str:
    import pandas as pd

    df = pd.read_csv(path)
    metrics = ["eval_reward", "best_so_far", "path_kl", "vendi", "prior_logpdf", "invalid_frac", "wall_time_s"]
    lines = ["| task | variant | n | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 3)]
    for (task, variant), g in df.groupby(["task", "variant"], sort=False):
        cells = [f"{g[m].mean():.3g} ± {g[m].std(ddof=1) if len(g) > 1 else 0:.2g}" for m in metrics]
        lines.append(f"| {task} | {variant} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", default=str(ROOT / "runs" / "sqdf_synthetic"))
    p.add_argument("--summarise", action="store_true")
    args = p.parse_args()
    if args.summarise:
        print(summarise())
        return
    bad = [v for v in args.variants if v not in VARIANTS] + [t for t in args.tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"error: unknown variant/task {bad}; allowed variants {list(VARIANTS)}, tasks {TASKS}")
    jobs = [(t, v, s, args.out) for s in args.seeds for t in args.tasks for v in args.variants]
    rows: list[dict] = []
    if CSV_PATH.exists():
        import pandas as pd

        keep = {(t, v, s) for t, v, s, _ in jobs}
        rows = [r for r in pd.read_csv(CSV_PATH).to_dict("records") if (r["task"], r["variant"], int(r["seed"])) not in keep]
    t0 = time.time()
    for i, row in enumerate(_schedule(jobs, args.workers)):
        rows.append(row)
        write_rows(rows)
        print(f"[{time.time() - t0:7.0f}s] {i + 1}/{len(jobs)} {row['task']} {row['variant']} s{row['seed']}: "
              f"eval {row['eval_reward']:.4g} best {row['best_so_far']:.4g} kl {row['path_kl']:.3g} "
              f"({row['wall_time_s']:.0f}s, {row['q_estimator_used']})", flush=True)
    print(summarise())


if __name__ == "__main__":
    main()

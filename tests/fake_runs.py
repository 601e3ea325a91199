"""Fake but well-formed run folders (the layout of sqdf_bbo/run.py) for tests of the leaderboard and plots.

Each fake method has its own improvement rate; values are drawn from a seeded generator, so a fixture is
the same every time. Nothing here calls the real runner.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

#: method -> (reward gain at the full budget as a fraction of the gap to the optimum, KL per round, vendi drop)
FAKE_METHODS = {"pretrained": (0.0, 0.0, 0.0), "sqdf": (0.6, 0.8, 0.15), "ddpo": (0.3, 2.0, 0.45),
                "seiko": (0.5, 1.5, 0.3), "alignprop": (0.7, 4.0, 0.6)}
#: task -> (tier, pretrained eval reward, optimum or None)
FAKE_TASKS = {"ackley": ("synthetic", -8.0, 0.0), "levy-manifold": ("synthetic", -20.0, 0.0),
              "aesthetic": ("image", 0.1, None)}


def _png(path: Path, seed: int, tier: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(2, 2))
    if tier == "image":
        ax.imshow(rng.random((32, 32, 3)))
        ax.axis("off")
    else:
        ax.scatter(*rng.normal(size=(2, 50)), s=4)
    fig.savefig(path, dpi=50)
    plt.close(fig)


def write_fake_run(out: Path, task: str, method: str, seed: int, budget: int = 200, rounds: int = 3,
                   finished: bool = True, with_png: bool = True, agent: dict | None = None,
                   move: float = 1.0) -> Path:
    """Write one fake run folder under ``out`` and return it.

    ``move`` scales how far the method moves from the pretrained model (as a knob would): KL per round
    x move, reward gain x (1 - e^-move) / (1 - e^-1) (capped at 0.98 of the gap); 1 = the method's default.
    """
    tier, base, opt = FAKE_TASKS[task]
    gain, kl_step, vendi_drop = FAKE_METHODS[method]
    if move != 1.0:
        gain = min(0.98, gain * (1 - math.exp(-move)) / (1 - math.exp(-1)))
        kl_step = kl_step * move
    rng = np.random.default_rng(_stable_seed(task, method, seed))
    run_dir = Path(out) / f"{task}__{method}__b{budget}__s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    w = [2.0**i for i in range(rounds)]
    sizes = [max(1, int(budget * wi / sum(w))) for wi in w]
    sizes[-1] += budget - sum(sizes)
    gap = (abs(base) if opt is not None else 1.0)
    seed_noise = np.random.default_rng(seed).normal(0, 0.02 * gap)  # same pretrained model per seed
    config = {"task": task, "method": method, "budget": budget, "seed": seed,
              "run": {"rounds": rounds, "round_sizes": None, "n_eval": 64, "batch_size": 64},
              "round_sizes": sizes, "agent": agent or {}, "task_overrides": {},
              "task_info": {"tier": tier, "design_shape": [4] if tier == "synthetic" else [3, 32, 32],
                            "noise_std": 0.1, "optimal_value": opt}}
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    lines, queries, q_used, true_all = [], [], 0, []
    for r in range(rounds + 1):
        frac = q_used / budget
        ev = base + seed_noise + gain * gap * (1 - math.exp(-3 * frac)) + (rng.normal(0, 0.02 * gap) if r else 0)
        row = {"round": r, "queries_used": q_used, "round_size": sizes[r - 1] if r else 0,
               "eval_reward": float(ev), "eval_reward_std": float(0.1 * gap),
               "path_kl": float(kl_step * r + (abs(rng.normal(0, 0.05)) if r else 0.0)),
               "vendi": float(6.0 * (1 - vendi_drop * frac) + (rng.normal(0, 0.1) if r else 0)),
               "mean_pairwise_distance": float(1.2 * (1 - vendi_drop * frac))}
        if tier == "synthetic":
            row.update({"prior_logpdf": float(-3.0 - 2 * gain * frac), "invalid_frac": float(0.01 + 0.2 * gain * frac)})
        else:
            row.update({"fd_inception": float(10 + 30 * gain * frac), "eval_compressibility": float(-50 - frac)})
        if r:
            vals = ev + rng.normal(0, 0.2 * gap, sizes[r - 1])
            vals = np.minimum(vals, opt) if opt is not None else vals
            true_all.extend(vals.tolist())
            for i, v in enumerate(vals):
                queries.append({"round": r, "query_index": len(queries), "observed": float(v + rng.normal(0, 0.1)),
                                "true": float(v)})
            srt = np.sort(true_all)[::-1]
            row.update({"best_so_far": float(srt[0]), "top1": float(srt[0]), "top10": float(srt[:10].mean()),
                        "top100": float(srt[:100].mean()), "auc_top10": float(srt[:10].mean() * frac),
                        "best_observed": float(max(q["observed"] for q in queries))})
        row["round_wall_s"] = float(0.5 + rng.random())
        row["train"] = {"loss": float(rng.random())} if r else {}
        lines.append(row)
        if r < rounds:
            q_used += sizes[r]
        if not finished and r == 1:
            break
    (run_dir / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / "queries.csv").write_text(
        "round,query_index,observed,true\n" + "".join(f"{q['round']},{q['query_index']},{q['observed']},{q['true']}\n"
                                                     for q in queries))
    if with_png:
        _png(run_dir / "samples.png", _stable_seed(task, method, seed), tier)
    if finished:
        last = {k: v for k, v in lines[-1].items() if k not in ("train", "round_size", "round_wall_s")}
        final = {"task": task, "method": method, "seed": seed, "budget": budget, **last, "rounds": rounds,
                 "wall_time_s": float(sum(x["round_wall_s"] for x in lines)), "peak_mem_mb": 500.0 + seed,
                 "run_dir": str(run_dir)}
        (run_dir / "final.json").write_text(json.dumps(final, indent=1))
    else:
        (run_dir / "checkpoint").mkdir(exist_ok=True)
        (run_dir / "checkpoint" / "state.json").write_text("{}")
    return run_dir


def _stable_seed(*parts) -> int:
    import zlib

    return zlib.crc32("|".join(map(str, parts)).encode())


def write_fake_sweep(out: Path, tasks: Sequence[str] = ("ackley", "levy-manifold"),
                     methods: Sequence[str] = ("pretrained", "sqdf", "ddpo"), seeds: Sequence[int] = range(4),
                     budget: int = 200, rounds: int = 3, with_png: bool = True) -> list[Path]:
    """A full grid of fake finished runs; returns their folders."""
    return [write_fake_run(Path(out), t, m, s, budget, rounds, with_png=with_png)
            for t in tasks for m in methods for s in seeds]


#: fake knob -> how far a value moves the method: beta (KL weight) moves less as it grows, lr more
FAKE_KNOBS = {"beta": lambda v: 1.0 / v, "lr": lambda v: v / 1e-3}


def write_fake_frontier(out: Path, grid: dict, tasks: Sequence[str] = ("ackley", "levy-manifold"),
                        seeds: Sequence[int] = range(3), budget: int = 200, rounds: int = 3,
                        with_png: bool = False) -> list[Path]:
    """Fake runs laid out as ``benchmarks.run.frontier`` writes them: ``<out>/<method>__<knob>=<value>/<run>``
    (``<method>__default`` for a knob of None), config.json recording the knob. ``grid``: method ->
    (knob, values) or None. Returns the run folders."""
    dirs = []
    for method, spec in grid.items():
        points = [(None, None)] if spec is None else [(spec[0], v) for v in spec[1]]
        for knob, v in points:
            folder = Path(out) / (f"{method}__default" if knob is None else f"{method}__{knob}={v:g}")
            move = 1.0 if knob is None else FAKE_KNOBS[knob](v)
            dirs += [write_fake_run(folder, t, method, s, budget, rounds, with_png=with_png,
                                    agent=None if knob is None else {knob: v}, move=move)
                     for t in tasks for s in seeds]
    return dirs

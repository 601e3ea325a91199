"""Reward–KL frontier statistics: Pareto filtering, reward at matched path KL, area under the frontier.

Units: KL = exact path KL from the fine-tuned to the pretrained model, in nats (a run's ``path_kl``);
reward = the task's eval reward; score = normalised score, 0 = pretrained model, 1 = task optimum
(``benchmarks/leaderboard.py``). A *grid point* is one knob value of one method; its KL and reward are the
means over its seeds.

Definitions (per task, method and budget):

- **Frontier**: the Pareto-optimal grid points -- a point is dropped when another point has KL <= its KL and
  reward >= its reward, one of them strictly (of identical points one is kept) -- sorted by KL, preceded
  by the pretrained start (0, r_pre). Grid points with mean KL <= 0 are left out (the start stands for
  KL 0). Along the frontier both KL and reward increase, except possibly the first segment from the start.
- **f(k)**, the frontier at KL k: between the start (0, r_pre) and the first point (k1, r1) linear in KL,
  f(k) = r_pre + (r1 - r_pre) k / k1; between frontier points linear in log10(KL); NaN ("not reached")
  for k above the largest frontier KL.
- **R(k)** = max of f over [0, min(k, k_max)]: the best score reachable at path KL <= k. It includes the
  start, so R >= the pretrained score (0) and R stays at its last value beyond the frontier's end.
- **AUF** = mean of R(10^u) over u = log10(KL) uniform in [log10 lo, log10 cap] (lo = 0.1, cap = 100 nats
  by default), in score units: 0 = never better than the pretrained model, 1 = the optimum already at
  KL 0.1. Computed by the trapezoid rule on a grid of ``AUF_GRID`` points in u plus the frontier's own
  KLs (exact up to the curvature of the start segment, < 1e-6).
- **CIs**: the bootstrap resamples seeds with replacement within each grid point (one stratum per point,
  ``benchmarks.stats.stratified_bootstrap_indices``), recomputes the point means, the frontier, f(k) and
  the AUF; 95% percentile interval over the replicates (for f(k) over those replicates that reach k). The
  pretrained start r_pre is held fixed (it is the mean over many runs' round 0).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from benchmarks import stats

KL_TARGETS = (1.0, 10.0, 100.0)
AUF_CAP = 100.0
AUF_LOW = 0.1
AUF_GRID = 2001
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


# ---- the frontier of one method -----------------------------------------------------------------
def pareto_mask(kl: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """True for the points no other point dominates (KL <= and reward >=, one strictly); of identical
    points the first is kept."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    keep = np.ones(len(kl), bool)
    for i in range(len(kl)):
        weak = (kl <= kl[i]) & (reward >= reward[i])
        strict = (kl < kl[i]) | (reward > reward[i])
        same = (kl == kl[i]) & (reward == reward[i]) & (np.arange(len(kl)) < i)
        keep[i] = not np.any(weak & strict) and not np.any(same)
    return keep


def frontier(kl: Sequence[float], reward: Sequence[float], r_pre: float) -> tuple[np.ndarray, np.ndarray]:
    """(KLs, rewards) of the frontier: (0, r_pre) then the Pareto-optimal points with KL > 0, by KL."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    ok = np.isfinite(kl) & np.isfinite(reward) & (kl > 0)
    kl, reward = kl[ok], reward[ok]
    m = pareto_mask(kl, reward)
    order = np.argsort(kl[m], kind="stable")
    return np.r_[0.0, kl[m][order]], np.r_[float(r_pre), reward[m][order]]


def frontier_at(xs: np.ndarray, ys: np.ndarray, k) -> np.ndarray:
    """f(k) on the frontier (xs, ys) from :func:`frontier`; NaN where k > xs[-1] (not reached) or k < 0."""
    k = np.atleast_1d(np.asarray(k, float))
    out = np.full(k.shape, np.nan)
    out[k == 0] = ys[0]
    if len(xs) < 2:
        return out
    first = (k > 0) & (k <= xs[1])
    out[first] = ys[0] + (ys[1] - ys[0]) * k[first] / xs[1]
    rest = (k > xs[1]) & (k <= xs[-1])
    out[rest] = np.interp(np.log10(k[rest]), np.log10(xs[1:]), ys[1:])
    return out


def best_up_to(xs: np.ndarray, ys: np.ndarray, k) -> np.ndarray:
    """R(k) = max of f over [0, min(k, xs[-1])], for increasing k >= 0 (f is linear between its vertices, so
    the max over an interval is at a vertex or an end)."""
    k = np.atleast_1d(np.asarray(k, float))
    if np.any(np.diff(k) < 0):
        raise ValueError("best_up_to needs increasing KLs")
    kc = np.minimum(k, xs[-1])
    f = frontier_at(xs, ys, kc)
    # vertices of the frontier below the first k also count
    start = np.max(ys[xs <= kc[0]]) if len(kc) else ys[0]
    return np.maximum.accumulate(np.maximum(f, start))


def area_under_frontier(xs: np.ndarray, ys: np.ndarray, cap: float = AUF_CAP, low: float = AUF_LOW,
                        n: int = AUF_GRID) -> float:
    """AUF: mean of R(k) over log10(k) in [log10 low, log10 cap] (see the module docstring)."""
    if not 0 < low < cap:
        raise ValueError(f"need 0 < low < cap, got low={low}, cap={cap}")
    u = np.linspace(math.log10(low), math.log10(cap), n)
    inner = xs[(xs > low) & (xs < cap)]
    u = np.union1d(u, np.log10(inner))
    r = best_up_to(xs, ys, 10.0 ** u)
    return float(_trapezoid(r, u) / (u[-1] - u[0]))


# ---- one method's summary with bootstrap CIs ----------------------------------------------------
def _percentile_ci(boot: np.ndarray) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def _tag(k: float) -> str:
    return f"{k:g}"


def frontier_summary(kl_runs: Sequence[Sequence[float]], reward_runs: Sequence[Sequence[float]], r_pre: float,
                     norm_low: float, norm_high: float, targets: Sequence[float] = KL_TARGETS,
                     cap: float = AUF_CAP, low: float = AUF_LOW, reps: int = stats.DEFAULT_REPS,
                     seed: int = stats.DEFAULT_SEED) -> dict:
    """Reward and score at matched KL, and the AUF, of one method with 95% bootstrap CIs.

    ``kl_runs[j]`` / ``reward_runs[j]``: path KL (nats) and eval reward of the seeds of grid point j (paired).
    Keys: ``reward_at_kl{T}``, ``score_at_kl{T}`` (each with ``_ci_low``/``_ci_high``), ``not_reached_kl{T}``,
    ``auf`` (+ CI), ``kl_max``, ``n_frontier``.
    """
    kls = [np.asarray(v, float) for v in kl_runs]
    rws = [np.asarray(v, float) for v in reward_runs]
    span = norm_high - norm_low
    to_score = (lambda r: (np.asarray(r, float) - norm_low) / span) if span > 0 else (lambda r: np.full(np.shape(r), np.nan))
    targets = np.asarray(targets, float)

    def evaluate(kl_means: np.ndarray, r_means: np.ndarray) -> tuple[np.ndarray, float]:
        xs, ys = frontier(kl_means, r_means, r_pre)
        at = frontier_at(xs, ys, targets)
        auf = area_under_frontier(xs, to_score(ys), cap, low) if span > 0 else math.nan
        return at, auf

    kl_mean = np.array([v.mean() for v in kls])
    r_mean = np.array([v.mean() for v in rws])
    xs, _ = frontier(kl_mean, r_mean, r_pre)
    at, auf = evaluate(kl_mean, r_mean)
    idx = stats.stratified_bootstrap_indices([len(v) for v in kls], reps, np.random.default_rng(seed))
    boot_kl = np.stack([v[i].mean(1) for v, i in zip(kls, idx)], 1)  # (reps, points)
    boot_r = np.stack([v[i].mean(1) for v, i in zip(rws, idx)], 1)
    boot_at, boot_auf = np.empty((reps, len(targets))), np.empty(reps)
    for b in range(reps):
        boot_at[b], boot_auf[b] = evaluate(boot_kl[b], boot_r[b])
    out = {"kl_max": float(xs[-1]), "n_frontier": len(xs) - 1}
    for j, t in enumerate(targets):
        tag = _tag(t)
        lo, hi = _percentile_ci(boot_at[:, j])
        out[f"reward_at_kl{tag}"], out[f"reward_at_kl{tag}_ci_low"], out[f"reward_at_kl{tag}_ci_high"] = float(at[j]), lo, hi
        s, slo, shi = (float(v) for v in to_score([at[j], lo, hi]))
        out[f"score_at_kl{tag}"], out[f"score_at_kl{tag}_ci_low"], out[f"score_at_kl{tag}_ci_high"] = s, slo, shi
        out[f"not_reached_kl{tag}"] = bool(not np.isfinite(at[j]))
    out["auf"] = auf
    out["auf_ci_low"], out["auf_ci_high"] = _percentile_ci(boot_auf)
    return out


# ---- tables over many methods ---------------------------------------------------------------------
POINT_KEY = ["task", "method", "knob", "value", "budget"]
ROW_KEY = ["task", "method", "budget"]


def frontier_leaderboard(runs: pd.DataFrame, targets: Sequence[float] = KL_TARGETS, cap: float = AUF_CAP,
                         low: float = AUF_LOW, reps: int = stats.DEFAULT_REPS,
                         seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """Headline table, one row per (task, method, budget), from one row per run.

    ``runs`` columns: task, method, budget, knob, value (NaN for a single-point method), seed, path_kl,
    eval_reward, normalised_score, norm_low, norm_high, norm_high_source. The pretrained start is
    r_pre = norm_low (the mean round-0 eval reward of the task and budget). On ``-manifold`` tasks
    ``best_score_manifold`` is the best mean normalised score over the method's grid points (CI over that
    point's seeds); NaN on other tasks, where leaving the prior is not punished.
    """
    rows = []
    for (task, method, budget), g in runs.groupby(ROW_KEY, sort=True):
        pts = [p for _, p in g.groupby("value", dropna=False, sort=True)]
        b = g.iloc[0]
        row = {"task": task, "method": method, "budget": int(budget), "knob": b["knob"] or "",
               "grid": ",".join(_fmt_value(v) for v in sorted(g["value"].dropna().unique(), key=_value_key)),
               "n_points": len(pts), "seeds_per_point": int(min(len(p) for p in pts)),
               "pretrained_reward": float(b["norm_low"])}
        # methods with no path KL to the prior (random search, BO, FK steering's SMC: NaN) have no frontier
        row["kl_measured"] = bool(np.isfinite(g["path_kl"].to_numpy(float)).any())
        if row["kl_measured"]:
            row.update(frontier_summary([p["path_kl"].to_numpy(float) for p in pts],
                                        [p["eval_reward"].to_numpy(float) for p in pts], b["norm_low"], b["norm_low"],
                                        b["norm_high"], targets, cap, low, reps, seed))
        best = (math.nan,) * 3
        best_at = ""
        if str(task).endswith("-manifold"):
            means = [p["normalised_score"].mean() for p in pts]
            if np.any(np.isfinite(means)):
                j = int(np.nanargmax(means))
                v = pts[j]["normalised_score"].dropna().to_numpy(float)
                best = stats.stratified_bootstrap_ci([v], stats.aggregate_mean, reps=reps, seed=seed)
                val = pts[j]["value"].iloc[0]
                best_at = (f"{row['knob']}={_fmt_value(val)}" if row["knob"] and (isinstance(val, str) or np.isfinite(val))
                           else "default")
        row["best_score_manifold"], row["best_score_manifold_ci_low"], row["best_score_manifold_ci_high"] = best
        row["best_score_manifold_at"] = best_at
        row.update({"norm_low": b["norm_low"], "norm_high": b["norm_high"], "norm_high_source": b["norm_high_source"]})
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out = out.sort_values(["task", "budget", "auf", "method"], ascending=[True, True, False, True],
                              na_position="last").reset_index(drop=True)
    return out


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "–"
    return f"{float(x):.{digits}g}"


def _fmt_ci(p, lo, hi) -> str:
    return f"{_fmt(p)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(p) else "–"


def frontier_markdown(board: pd.DataFrame, targets: Sequence[float] = KL_TARGETS, cap: float = AUF_CAP,
                      low: float = AUF_LOW, notes: Sequence[str] = ()) -> str:
    """Markdown rendering of :func:`frontier_leaderboard`."""
    tags = [_tag(t) for t in targets]
    header = (["task", "method", "budget", "knob grid", "seeds/point"] + [f"score @ KL {t}" for t in tags]
              + [f"AUF (KL {_tag(low)}–{_tag(cap)})", "best score (-manifold)", "max KL"]
              + [f"reward @ KL {t}" for t in tags] + ["pretrained reward"])
    rows = []
    for _, r in board.iterrows():
        no_kl = r.get("kl_measured") is False
        at = []
        for t in tags:
            at.append("no path KL" if no_kl else "not reached" if r[f"not_reached_kl{t}"] else
                      _fmt_ci(r[f"score_at_kl{t}"], r[f"score_at_kl{t}_ci_low"], r[f"score_at_kl{t}_ci_high"]))
        best = _fmt_ci(r["best_score_manifold"], r["best_score_manifold_ci_low"], r["best_score_manifold_ci_high"])
        if r["best_score_manifold_at"]:
            best += f" ({r['best_score_manifold_at']})"
        grid = f"{r['knob']} = {r['grid'].replace(',', ', ')}" if r["knob"] else "single point"
        rows.append([r["task"], r["method"], str(int(r["budget"])), grid, str(int(r["seeds_per_point"])), *at,
                     _fmt_ci(r["auf"], r["auf_ci_low"], r["auf_ci_high"]), best, _fmt(r["kl_max"]),
                     *("–" if no_kl or r[f"not_reached_kl{t}"] else _fmt(r[f"reward_at_kl{t}"], 4) for t in tags),
                     _fmt(r["pretrained_reward"], 4)])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    text = [*(f"{n}\n" for n in notes),
            "Reward at matched path KL and area under the reward–KL frontier (AUF). Score = normalised eval "
            "reward (0 = pretrained model, 1 = task optimum). Each method's frontier = its Pareto-optimal grid "
            "points (means over seeds) after the pretrained model at KL 0; interpolated linearly in log10 KL "
            "between points and linearly in KL from the pretrained model to the first point; 'not reached' "
            "where the method's largest KL is below the target; 'no path KL' for methods whose samples have no "
            "measurable path KL to the prior (random search and BO ignore it; FK steering's resampled "
            "particles have none in closed form). AUF = mean over log10 KL in "
            f"[{_tag(low)}, {_tag(cap)}] nats of the best score reachable at that KL or less. Best score "
            "(-manifold) = best grid point's mean score on tasks whose oracle punishes leaving the prior. "
            "[95% CI]: percentile bootstrap over seeds within each grid point.", "", *lines]
    return "\n".join(text) + "\n"


def _fmt_value(v) -> str:
    """A knob value: 6 significant digits, or the word of a categorical knob."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _value_key(v):
    """Numbers first (ascending), then categorical values (ablations such as buffer=none) by name."""
    return (1, 0.0, str(v)) if isinstance(v, str) else (0, float(v), "")

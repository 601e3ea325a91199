"""Reward–KL frontier statistics: the achievable frontier, reward at matched path KL, area under the frontier,
and failed runs.

Units: KL = exact path KL from the fine-tuned to the pretrained model, in nats (a run's ``path_kl``);
reward = the task's eval reward; score = normalised score, 0 = pretrained model, 1 = task optimum
(``benchmarks/report/leaderboard.py``). A *grid point* is one knob value of one method; its KL and reward are the
means over its seeds.

Definitions (per task, method and budget):

- **Achievable frontier f**: running policy a with probability w and policy b otherwise gives reward
  w r_a + (1 - w) r_b at path KL at most w k_a + (1 - w) k_b (KL is convex). So between measured policies a
  user can obtain the *upper concave envelope, in linear KL,* of the pretrained start (0, r_pre) and the
  grid points (mean KL, mean reward): f(k) is attained at path KL <= k. Its vertices are the start and the
  grid points on the envelope, by KL; a point on or below the chord of two others (a dominated point among
  them) is not a vertex. f is linear in KL between vertices, rises to its peak vertex (KL k_peak) and falls
  after it when larger-KL points have lower reward. Grid points with mean KL <= 0 are left out (the start
  stands for KL 0). f(k) is NaN ("not reached") for k above the largest vertex KL, k_max.
- **Score / reward @ KL k** = f(k).
- **R(k)** = max of f over [0, min(k, k_max)] = f(min(k, k_peak)): the best reward reachable at path KL <= k.
  R >= r_pre, and R stays at the peak beyond it.
- **AUF** = mean of R(10^u) over u = log10(KL) uniform in [log10 low, log10 cap] (low = 0.1, cap = 100 nats
  by default), in score units: 0 = never better than the pretrained model, 1 = the optimum already at
  KL 0.1. Computed exactly (f is linear in KL, so on each segment R is a + b 10^u); for a fixed vertex set
  the AUF is a weighted sum of the vertex rewards (:func:`auf_weights`, weights summing to 1).
- **Intervals** (95 % by default) are *conditional on the selected vertices*: the vertex set, their mean KLs
  and the peak are taken from the mean points and held fixed, so f(k) and the AUF are fixed linear
  combinations of grid points' mean rewards plus a constant times r_pre (held fixed: it is the mean over
  many runs' round 0). When the grid points in a combination share their seed ids, the combination is
  formed per seed and ``benchmarks.report.stats.t_interval`` is taken over the seeds (paired); otherwise a Welch
  interval: variance sum_j w_j^2 s_j^2 / n_j, Welch–Satterthwaite degrees of freedom (NaN when a point
  in it has one seed). The uncertainty in which points are vertices, and in their KLs, is not included.
- **Failed run** (:func:`run_failed`): on a ``-manifold`` task, fewer than half of its evaluation designs
  valid (n_valid / n_eval < 0.5, else 1 - invalid_frac < 0.5); on any task, a non-finite eval reward or one
  more than 2 pretrained seed SDs below the pretrained reward (SD over seeds of the round-0 eval reward of
  the runs that start from the pretrained model). Failed runs stay in every mean; they are counted beside
  it (``failed_frac`` per grid point, ``failed_runs`` and ``failed_frac_frontier`` per leaderboard row).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st

from benchmarks.common.markdown import markdown_table
from benchmarks.report import stats

KL_TARGETS = (1.0, 10.0, 100.0)
AUF_CAP = 100.0
AUF_LOW = 0.1
CONFIDENCE = 0.95
#: a run fails below this fraction of valid evaluation designs (-manifold tasks)
MIN_VALID_FRAC = 0.5
#: ... or with eval reward more than this many pretrained seed SDs below the pretrained reward
COLLAPSE_SDS = 2.0


# ---- the achievable frontier of one method -------------------------------------------------------
def envelope(kl: Sequence[float], reward: Sequence[float], r_pre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, src): vertices of the upper concave envelope in linear KL of (0, r_pre) and the points with
    finite KL > 0 and finite reward, by KL. ``src[i]`` = index of vertex i's grid point, -1 for the start."""
    kl, reward = np.asarray(kl, float), np.asarray(reward, float)
    idx = np.flatnonzero(np.isfinite(kl) & np.isfinite(reward) & (kl > 0))
    idx = idx[np.lexsort((-reward[idx], kl[idx]))]  # by KL; of equal KLs the higher reward first
    x = lambda j: 0.0 if j < 0 else kl[j]  # noqa: E731
    y = lambda j: float(r_pre) if j < 0 else reward[j]  # noqa: E731
    hull = [-1]
    for j in idx:
        if kl[j] == x(hull[-1]):
            continue  # same KL, no higher reward
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b on or below the chord a -> j: not a vertex
            if (x(b) - x(a)) * (y(j) - y(a)) - (y(b) - y(a)) * (x(j) - x(a)) >= 0:
                hull.pop()
            else:
                break
        hull.append(int(j))
    src = np.array(hull, int)
    return np.array([x(j) for j in hull]), np.array([y(j) for j in hull]), src


def vertex_weights_at(xs: np.ndarray, k: float) -> Optional[np.ndarray]:
    """Weights on the vertices with f(k) = weights @ ys (two neighbours, linear in KL); None if k is outside
    [0, xs[-1]] (not reached)."""
    if not (0 <= k <= xs[-1]):
        return None
    w = np.zeros(len(xs))
    i = int(np.searchsorted(xs, k, side="left"))
    if xs[i] == k:
        w[i] = 1.0
    else:
        t = (k - xs[i - 1]) / (xs[i] - xs[i - 1])
        w[i - 1], w[i] = 1.0 - t, t
    return w


def envelope_at(xs: np.ndarray, ys: np.ndarray, k) -> np.ndarray:
    """f(k), linear in KL between vertices; NaN where k < 0 or k > xs[-1] (not reached)."""
    k = np.atleast_1d(np.asarray(k, float))
    out = np.interp(k, xs, ys)
    out[(k < 0) | (k > xs[-1]) | ~np.isfinite(k)] = np.nan
    return out


def best_up_to(xs: np.ndarray, ys: np.ndarray, k) -> np.ndarray:
    """R(k) = max of f over [0, min(k, xs[-1])] = f(min(k, k_peak)) for k >= 0 (f is concave)."""
    k = np.atleast_1d(np.asarray(k, float))
    return envelope_at(xs, ys, np.minimum(k, xs[int(np.argmax(ys))]))


def auf_weights(xs: np.ndarray, ys: np.ndarray, cap: float = AUF_CAP, low: float = AUF_LOW) -> np.ndarray:
    """c with AUF = c @ ys (sum c = 1) for the vertices (xs, ys): on a segment [x0, x1] R = y0 (1 - t) + y1 t
    with t = (k - x0) / (x1 - x0), and the integral of k over u = log10 k is (k_b - k_a) / ln 10."""
    if not 0 < low < cap:
        raise ValueError(f"need 0 < low < cap, got low={low}, cap={cap}")
    p = int(np.argmax(ys))  # the first peak vertex
    c = np.zeros(len(xs))
    for i in range(p):  # the rising part, clipped to [low, cap]
        a, b = max(xs[i], low), min(xs[i + 1], cap)
        if a >= b:
            continue
        du = math.log10(b) - math.log10(a)
        t_int = ((b - a) / math.log(10) - xs[i] * du) / (xs[i + 1] - xs[i])
        c[i] += du - t_int
        c[i + 1] += t_int
    a = max(xs[p], low)
    if a < cap:  # the flat part: R stays at the peak
        c[p] += math.log10(cap) - math.log10(a)
    return c / (math.log10(cap) - math.log10(low))


def area_under_frontier(xs: np.ndarray, ys: np.ndarray, cap: float = AUF_CAP, low: float = AUF_LOW) -> float:
    """AUF: mean of R(k) over log10(k) in [log10 low, log10 cap] (see the module docstring), exact."""
    return float(auf_weights(xs, ys, cap, low) @ np.asarray(ys, float))


# ---- intervals of linear combinations of grid points' mean rewards -------------------------------
def combination_interval(weights: Sequence[float], reward_runs: Sequence[Sequence[float]],
                         seed_runs: Optional[Sequence[Sequence]] = None, const: float = 0.0,
                         confidence: float = CONFIDENCE) -> tuple[float, float, float, str]:
    """(estimate, low, high, how) for const + sum_j weights[j] * mean(reward_runs[j]).

    how = "paired" when every point with a nonzero weight has the same seed ids (``seed_runs[j]``, no
    repeats): the combination is formed per seed and :func:`benchmarks.report.stats.t_interval` taken over seeds;
    "welch" otherwise (variance sum w_j^2 s_j^2 / n_j, Welch–Satterthwaite df; NaN interval if a point in it
    has one seed); "exact" when no point has a nonzero weight (the interval is the constant itself).
    """
    used = [j for j, w in enumerate(weights) if w != 0]
    runs = {j: np.asarray(reward_runs[j], float) for j in used}
    est = float(const + sum(weights[j] * runs[j].mean() for j in used))
    if not used:
        return est, est, est, "exact"
    if seed_runs is not None:
        ids = {j: list(seed_runs[j]) for j in used}
        first = sorted(ids[used[0]])
        if all(len(set(ids[j])) == len(ids[j]) and sorted(ids[j]) == first for j in used):
            per_seed = np.full(len(first), float(const))
            for j in used:
                order = {s: v for s, v in zip(ids[j], runs[j])}
                per_seed += weights[j] * np.array([order[s] for s in first])
            _, lo, hi = stats.t_interval(per_seed, confidence)
            return est, lo, hi, "paired"
    if any(len(runs[j]) < 2 for j in used):
        return est, math.nan, math.nan, "welch"
    parts = np.array([weights[j] ** 2 * runs[j].var(ddof=1) / len(runs[j]) for j in used])
    var = float(parts.sum())
    if var == 0:
        return est, est, est, "welch"
    df = var ** 2 / float(sum(p ** 2 / (len(runs[j]) - 1) for p, j in zip(parts, used)))
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(var)
    return est, est - half, est + half, "welch"


def _point_weights(vertex_w: np.ndarray, src: np.ndarray, n_points: int) -> tuple[np.ndarray, float]:
    """Vertex weights -> (weights on the grid points, weight on the start r_pre)."""
    w = np.zeros(n_points)
    for v, j in zip(vertex_w, src):
        if j >= 0:
            w[j] += v
    return w, float(vertex_w[src < 0].sum())


# ---- one method's summary -------------------------------------------------------------------------
def _tag(k: float) -> str:
    return f"{k:g}"


def frontier_summary(kl_runs: Sequence[Sequence[float]], reward_runs: Sequence[Sequence[float]], r_pre: float,
                     norm_low: float, norm_high: float, targets: Sequence[float] = KL_TARGETS,
                     cap: float = AUF_CAP, low: float = AUF_LOW, seed_runs: Optional[Sequence[Sequence]] = None,
                     failed_runs: Optional[Sequence[Sequence[bool]]] = None,
                     confidence: float = CONFIDENCE) -> dict:
    """Reward and score at matched KL, and the AUF, of one method with intervals conditional on the vertices.

    ``kl_runs[j]`` / ``reward_runs[j]`` / ``seed_runs[j]`` / ``failed_runs[j]``: path KL (nats), eval reward,
    seed id and failed flag of the seeds of grid point j (paired). Keys: ``reward_at_kl{T}``,
    ``score_at_kl{T}`` (each with ``_ci_low``/``_ci_high``), ``not_reached_kl{T}``, ``auf`` (+ CI),
    ``ci_kind`` ("welch" if any interval was a Welch one, else "paired", or "exact" when none needed seeds), ``kl_max`` (nats),
    ``n_frontier`` (vertices besides the start), ``frontier_points`` (their indices j) and
    ``failed_frac_frontier`` (the largest failed fraction among them; NaN without ``failed_runs``).
    """
    kl_mean = np.array([np.mean(np.asarray(v, float)) for v in kl_runs])
    r_mean = np.array([np.mean(np.asarray(v, float)) for v in reward_runs])
    span = norm_high - norm_low
    to_score = (lambda r: (r - norm_low) / span) if span > 0 else (lambda r: math.nan)
    xs, ys, src = envelope(kl_mean, r_mean, r_pre)
    n = len(kl_mean)
    kinds = set()
    out = {"kl_max": float(xs[-1]), "n_frontier": len(xs) - 1,
           "frontier_points": [int(j) for j in src if j >= 0]}
    for t in targets:
        tag = _tag(t)
        vw = vertex_weights_at(xs, float(t))
        if vw is None:
            r, lo, hi = (math.nan,) * 3
        else:
            w, w0 = _point_weights(vw, src, n)
            r, lo, hi, kind = combination_interval(w, reward_runs, seed_runs, w0 * r_pre, confidence)
            kinds.add(kind)
        out[f"reward_at_kl{tag}"], out[f"reward_at_kl{tag}_ci_low"], out[f"reward_at_kl{tag}_ci_high"] = r, lo, hi
        out[f"score_at_kl{tag}"], out[f"score_at_kl{tag}_ci_low"], out[f"score_at_kl{tag}_ci_high"] = (
            to_score(r), to_score(lo), to_score(hi))
        out[f"not_reached_kl{tag}"] = vw is None
    w, w0 = _point_weights(auf_weights(xs, ys, cap, low), src, n)
    auf, lo, hi, kind = combination_interval(w, reward_runs, seed_runs, w0 * r_pre, confidence)
    kinds.add(kind)
    # the weights sum to 1, so the AUF in score units is the score of the AUF in reward units
    out["auf"], out["auf_ci_low"], out["auf_ci_high"] = to_score(auf), to_score(lo), to_score(hi)
    out["ci_kind"] = next((k for k in ("welch", "paired") if k in kinds), "exact")
    out["failed_frac_frontier"] = (max((float(np.mean(failed_runs[j])) for j in out["frontier_points"]), default=0.0)
                                   if failed_runs is not None else math.nan)
    return out


def per_seed_frontier(method_runs: pd.DataFrame, targets: Sequence[float] = KL_TARGETS, cap: float = AUF_CAP,
                      low: float = AUF_LOW) -> pd.DataFrame:
    """Per seed, one method's score @ KL and AUF as the fixed combinations :func:`frontier_summary` uses.

    ``method_runs``: one method's runs on one task and budget (columns value, seed, path_kl, eval_reward,
    norm_low, norm_high). The vertex set and weights come from the mean points; each seed's value is the
    same combination of that seed's rewards (seeds present at every grid point only), in score units. So
    the mean over seeds equals the summary's point estimate, and two methods' per-seed values can be paired
    by seed in a test. Columns ``score_at_kl{T}`` (NaN where not reached) and ``auf``; index = seed.
    """
    b = method_runs.iloc[0]
    r_pre, span = float(b["norm_low"]), float(b["norm_high"]) - float(b["norm_low"])
    pts = [p for _, p in method_runs.groupby("value", dropna=False, sort=True)]
    if not np.isfinite(method_runs["path_kl"].to_numpy(float)).any() or not span > 0:
        return pd.DataFrame(columns=[f"score_at_kl{_tag(t)}" for t in targets] + ["auf"])
    seeds = sorted(set.intersection(*(set(p["seed"]) for p in pts)))
    rew = np.array([[p.set_index("seed").loc[s, "eval_reward"] for s in seeds] for p in pts], float)  # (points, seeds)
    kl_mean = np.array([p["path_kl"].mean() for p in pts])
    r_mean = np.array([p["eval_reward"].mean() for p in pts])
    xs, ys, src = envelope(kl_mean, r_mean, r_pre)
    out = {}
    for t in targets:
        vw = vertex_weights_at(xs, float(t))
        if vw is None:
            out[f"score_at_kl{_tag(t)}"] = np.full(len(seeds), math.nan)
        else:
            w, w0 = _point_weights(vw, src, len(pts))
            out[f"score_at_kl{_tag(t)}"] = (w0 * r_pre + w @ rew - r_pre) / span
    w, w0 = _point_weights(auf_weights(xs, ys, cap, low), src, len(pts))
    out["auf"] = (w0 * r_pre + w @ rew - r_pre) / span
    return pd.DataFrame(out, index=pd.Index(seeds, name="seed"))


# ---- failed runs -----------------------------------------------------------------------------------
def run_failed(task: str, eval_reward: float, r_pre: float, pre_sd: float, n_valid: float = math.nan,
               n_eval: float = math.nan, invalid_frac: float = math.nan) -> bool:
    """True when a run failed: on a ``-manifold`` task under ``MIN_VALID_FRAC`` of its evaluation designs
    valid (n_valid / n_eval, else 1 - invalid_frac; not judged when neither is logged); on any task a
    non-finite eval reward, or one below r_pre - ``COLLAPSE_SDS`` * pre_sd (pre_sd: the SD over seeds of the
    pretrained eval reward; not judged when NaN)."""
    def num(v) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    eval_reward, r_pre, pre_sd = num(eval_reward), num(r_pre), num(pre_sd)
    n_valid, n_eval, invalid_frac = num(n_valid), num(n_eval), num(invalid_frac)
    if str(task).endswith("-manifold"):
        valid = (n_valid / n_eval if math.isfinite(n_valid) and math.isfinite(n_eval) and n_eval > 0
                 else 1.0 - invalid_frac)
        if math.isfinite(valid) and valid < MIN_VALID_FRAC:
            return True
    if not math.isfinite(eval_reward):
        return True
    return bool(math.isfinite(pre_sd) and math.isfinite(r_pre) and eval_reward < r_pre - COLLAPSE_SDS * pre_sd)


def pretrained_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, budget): r_pre (``norm_low`` if present, else the mean round-0 eval reward) and pre_sd, the
    SD (ddof 1) over seeds of the round-0 eval reward of the runs that start from the pretrained model
    (round0_path_kl == 0; round 0 is the same pretrained model for every method of a seed). NaN when
    fewer than two seeds or no round-0 column."""
    rows = []
    for (task, budget), g in runs.groupby(["task", "budget"], sort=True):
        r0 = pd.Series(dtype=float)
        if "round0_eval_reward" in g:
            if "round0_path_kl" in g:
                on_prior = pd.to_numeric(g["round0_path_kl"], errors="coerce") == 0
                g = g[on_prior] if on_prior.any() else g
            r0 = pd.to_numeric(g["round0_eval_reward"], errors="coerce").groupby(g["seed"]).mean().dropna()
        r_pre = float(g["norm_low"].iloc[0]) if "norm_low" in g else (float(r0.mean()) if len(r0) else math.nan)
        rows.append({"task": task, "budget": budget, "r_pre": r_pre,
                     "pre_sd": float(r0.std(ddof=1)) if len(r0) >= 2 else math.nan})
    return pd.DataFrame(rows, columns=["task", "budget", "r_pre", "pre_sd"])


def failed_mask(runs: pd.DataFrame) -> pd.Series:
    """:func:`run_failed` of every run (bool Series on ``runs.index``)."""
    spread = pretrained_spread(runs).set_index(["task", "budget"])
    col = lambda r, k: r[k] if k in r else math.nan  # noqa: E731
    return pd.Series([run_failed(r["task"], r["eval_reward"], spread.loc[(r["task"], r["budget"]), "r_pre"],
                                 spread.loc[(r["task"], r["budget"]), "pre_sd"], col(r, "n_valid"),
                                 col(r, "n_eval"), col(r, "invalid_frac")) for _, r in runs.iterrows()],
                     index=runs.index, dtype=bool)


# ---- tables over many methods ---------------------------------------------------------------------
POINT_KEY = ["task", "method", "knob", "value", "budget"]
ROW_KEY = ["task", "method", "budget"]


def frontier_leaderboard(runs: pd.DataFrame, targets: Sequence[float] = KL_TARGETS, cap: float = AUF_CAP,
                         low: float = AUF_LOW, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Headline table, one row per (task, method, budget), from one row per run.

    ``runs`` columns: task, method, budget, knob, value (NaN for a single-point method), seed, path_kl,
    eval_reward, normalised_score, norm_low, norm_high, norm_high_source (and, for :func:`run_failed`,
    round0_eval_reward, round0_path_kl, n_valid, n_eval, invalid_frac where logged). The pretrained start is
    r_pre = norm_low (the mean round-0 eval reward of the task and budget). On ``-manifold`` tasks
    ``best_score_manifold`` is the best mean normalised score over the method's grid points (t-interval over
    that point's seeds); NaN on other tasks, where leaving the prior is not punished. ``failed_runs`` /
    ``n_runs``: failed runs of the method over all its grid points; ``failed_frac_frontier``: the largest
    failed fraction among its frontier vertices.
    """
    runs = runs.assign(failed=failed_mask(runs))
    rows = []
    for (task, method, budget), g in runs.groupby(ROW_KEY, sort=True):
        pts = [p for _, p in g.groupby("value", dropna=False, sort=True)]
        b = g.iloc[0]
        row = {"task": task, "method": method, "budget": int(budget), "knob": b["knob"] or "",
               "grid": ",".join(_fmt_value(v) for v in sorted(g["value"].dropna().unique(), key=_value_key)),
               "n_points": len(pts), "seeds_per_point": int(min(len(p) for p in pts)),
               "pretrained_reward": float(b["norm_low"]), "failed_runs": int(g["failed"].sum()), "n_runs": len(g)}
        # methods with no path KL to the prior (random search, BO, FK steering's SMC: NaN) have no frontier
        row["kl_measured"] = bool(np.isfinite(g["path_kl"].to_numpy(float)).any())
        if row["kl_measured"]:
            s = frontier_summary([p["path_kl"].to_numpy(float) for p in pts],
                                 [p["eval_reward"].to_numpy(float) for p in pts], b["norm_low"], b["norm_low"],
                                 b["norm_high"], targets, cap, low, seed_runs=[p["seed"].tolist() for p in pts],
                                 failed_runs=[p["failed"].to_numpy(bool) for p in pts], confidence=confidence)
            s.pop("frontier_points")
            row.update(s)
        best = (math.nan,) * 3
        best_at = ""
        if str(task).endswith("-manifold"):
            means = [p["normalised_score"].mean() for p in pts]
            if np.any(np.isfinite(means)):
                j = int(np.nanargmax(means))
                best = stats.t_interval(pts[j]["normalised_score"].dropna().to_numpy(float), confidence)
                val = pts[j]["value"].iloc[0]
                best_at = (f"{row['knob']}={_fmt_value(val)}" if row["knob"] and (isinstance(val, str) or np.isfinite(val))
                           else "default")
        row["best_score_manifold"], row["best_score_manifold_ci_low"], row["best_score_manifold_ci_high"] = best
        row["best_score_manifold_at"] = best_at
        row.update({"norm_low": b["norm_low"], "norm_high": b["norm_high"], "norm_high_source": b["norm_high_source"]})
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        if "auf" not in out:
            out["auf"] = math.nan
        out = out.sort_values(["task", "budget", "auf", "method"], ascending=[True, True, False, True],
                              na_position="last").reset_index(drop=True)
    return out


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "–"
    return f"{float(x):.{digits}g}"


def _fmt_ci(p, lo, hi) -> str:
    return f"{_fmt(p)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(p) else "–"


def _fmt_failed(r) -> str:
    """'failed/runs', with the largest failed fraction among the frontier vertices when there is a frontier."""
    if "failed_runs" not in r or pd.isna(r["failed_runs"]):
        return "–"
    text = f"{int(r['failed_runs'])}/{int(r['n_runs'])}"
    at = r.get("failed_frac_frontier", math.nan)
    return text + (f" (frontier ≤ {float(at):.2g})" if pd.notna(at) else "")


def frontier_markdown(board: pd.DataFrame, targets: Sequence[float] = KL_TARGETS, cap: float = AUF_CAP,
                      low: float = AUF_LOW, notes: Sequence[str] = (), confidence: float = CONFIDENCE) -> str:
    """Markdown rendering of :func:`frontier_leaderboard`."""
    tags = [_tag(t) for t in targets]
    header = (["task", "method", "budget", "knob grid", "seeds/point"] + [f"score @ KL {t}" for t in tags]
              + [f"AUF (KL {_tag(low)}–{_tag(cap)})", "best score (-manifold)", "failed runs", "max KL"]
              + [f"reward @ KL {t}" for t in tags] + ["pretrained reward"])
    rows = []
    for _, r in board.iterrows():
        no_kl = r.get("kl_measured", True) in (False, 0)
        at = []
        for t in tags:
            at.append("no path KL" if no_kl else "not reached" if r[f"not_reached_kl{t}"] else
                      _fmt_ci(r[f"score_at_kl{t}"], r[f"score_at_kl{t}_ci_low"], r[f"score_at_kl{t}_ci_high"]))
        best = _fmt_ci(r["best_score_manifold"], r["best_score_manifold_ci_low"], r["best_score_manifold_ci_high"])
        if r["best_score_manifold_at"]:
            best += f" ({r['best_score_manifold_at']})"
        grid = f"{r['knob']} = {r['grid'].replace(',', ', ')}" if r["knob"] else "single point"
        rows.append([r["task"], r["method"], str(int(r["budget"])), grid, str(int(r["seeds_per_point"])), *at,
                     "–" if no_kl else _fmt_ci(r["auf"], r["auf_ci_low"], r["auf_ci_high"]), best, _fmt_failed(r),
                     "–" if no_kl else _fmt(r["kl_max"]),
                     *("–" if no_kl or r[f"not_reached_kl{t}"] else _fmt(r[f"reward_at_kl{t}"], 4) for t in tags),
                     _fmt(r["pretrained_reward"], 4)])
    pct = f"{100 * confidence:g}%"
    text = [*(f"{n}\n" for n in notes),
            "Reward at matched path KL and area under the reward–KL frontier (AUF). Score = normalised eval "
            "reward (0 = pretrained model, 1 = task optimum). Each method's frontier is what mixing its "
            "measured policies achieves: the upper concave envelope, in linear KL, of the pretrained model "
            "(KL 0) and its grid points (mean path KL, mean reward over seeds); running policy a with "
            "probability w and b otherwise gives the mixed reward at a path KL no larger than the mixed KL. "
            "Score @ KL k = the envelope at k (linear in KL between its vertices); 'not reached' beyond the "
            "method's largest-KL vertex (max KL); 'no path KL' for methods whose samples have no measurable "
            "path KL to the prior (random search and BO ignore it; FK steering's resampled particles have none "
            "in closed form). AUF = mean over log10 KL in "
            f"[{_tag(low)}, {_tag(cap)}] nats of the best envelope score at that KL or less. Best score "
            "(-manifold) = best grid point's mean score on tasks whose oracle punishes leaving the prior. "
            f"[{pct} CI]: Student-t over seeds, conditional on the frontier's vertices (which points they are "
            "and their mean KLs are held fixed): the envelope value and the AUF are fixed weighted sums of "
            "grid points' rewards, formed per seed where the points share seeds (else a Welch interval); a "
            "best score's CI is over that point's seeds. Failed runs (counted, not removed from the means): "
            f"fewer than {MIN_VALID_FRAC:g} of the eval designs valid on -manifold tasks, or eval reward more "
            f"than {COLLAPSE_SDS:g} pretrained seed SDs below the pretrained reward; 'frontier ≤ x' = the "
            "largest failed fraction among the frontier's grid points.", "", markdown_table(header, rows)]
    return "\n".join(text) + "\n"


def _fmt_value(v) -> str:
    """A knob value: 6 significant digits, or the word of a categorical knob."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _value_key(v):
    """Numbers first (ascending), then categorical values (ablations such as buffer=none) by name."""
    return (1, 0.0, str(v)) if isinstance(v, str) else (0, float(v), "")

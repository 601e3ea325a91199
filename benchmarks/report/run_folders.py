"""Finished run folders (``<root>/<task>__<method>__b<budget>__s<seed>/``, the layout of ``sqdf_bbo/run.py``)
read into tables, the rules every table built from them shares, and the normalised score.

:func:`load_runs` reads every finished run's ``final.json`` with its ``config.json`` and ``rounds.jsonl``
(one row per run, one row per round); :func:`config_hash` names the settings that define a run's method,
:func:`check_uniform_settings` refuses a row whose seeds ran with different ones, and
:func:`require_one_protocol` a table that would pool runs of several protocols (``sqdf_bbo/protocol.py``).
Normalised score = (eval reward - low) / (high - low) per (task, budget) (:func:`normalisation_bounds`,
:func:`add_normalised`; defined in ``benchmarks/report/leaderboard.py``'s docstring). The leaderboard, the
per-run records, the frontier, the comparison and the plots all read runs through this module.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from sqdf_bbo.protocol import LEGACY, protocol_of, task_protocol_of

KEY = ["task", "method", "budget"]
#: keys of final.json / rounds.jsonl that are not task-specific metrics
CORE_KEYS = {"task", "method", "seed", "budget", "round", "rounds", "queries_used", "round_size", "run_dir",
             "best_so_far", "best_observed", "top1", "top10", "top100", "auc_top10", "eval_reward",
             "eval_reward_std", "path_kl", "vendi", "mean_pairwise_distance", "wall_time_s", "peak_mem_mb",
             "round_wall_s", "phase_wall_s", "train"}
REQUIRED_FINAL = ("task", "method", "seed", "budget", "eval_reward")


class LeaderboardError(ValueError):
    """Bad input (no runs, malformed run folder); printed as one line."""


# ---- loading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{path} is not valid JSON ({e})") from None


def _read_rounds(path: Path) -> list[dict]:
    if not path.exists():
        raise LeaderboardError(f"{path} is missing (every finished run folder has rounds.jsonl)")
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LeaderboardError(f"{path} line {i + 1} is not valid JSON ({e})") from None
    if not out or out[0].get("round") != 0:
        raise LeaderboardError(f"{path} must start with round 0 (the pretrained model)")
    return out


def find_run_dirs(roots: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished run folders, unfinished ones) directly under each root."""
    finished, unfinished = [], []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise LeaderboardError(f"runs folder {str(root)!r} does not exist or is not a folder")
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if (d / "final.json").exists():
                finished.append(d)
            elif (d / "rounds.jsonl").exists() or (d / "config.json").exists():
                unfinished.append(d)
    return finished, unfinished


def load_runs(roots: Iterable[str | Path], on_duplicate: str = "error") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finals, rounds): one row per finished run, and one row per round of each finished run.

    ``on_duplicate``: what to do with a second folder for the same (task, method, budget, seed) --
    ``error`` (default) or ``first`` (keep the one from the earlier root; a note says whether they agree).

    ``finals`` carries the final.json metrics plus tier, optimal_value, run_dir and round0_eval_reward;
    ``rounds`` carries task/method/budget/seed and every scalar key of rounds.jsonl.
    """
    dirs, _ = find_run_dirs(roots)
    if not dirs:
        raise LeaderboardError(f"no finished run (a folder with final.json) under {', '.join(map(str, roots))}")
    finals, rounds, seen = [], [], {}
    for d in dirs:
        fin = _read_json(d / "final.json")
        missing = [k for k in REQUIRED_FINAL if k not in fin]
        if missing:
            raise LeaderboardError(f"{d / 'final.json'} lacks {', '.join(missing)}")
        cfg = _read_json(d / "config.json") if (d / "config.json").exists() else {}
        info = cfg.get("task_info", {})
        key = (fin["task"], fin["method"], int(fin["budget"]), int(fin["seed"]))
        if key in seen:
            if on_duplicate != "first":
                raise LeaderboardError(f"two run folders for task={key[0]} method={key[1]} budget={key[2]} "
                                       f"seed={key[3]}: {seen[key]} and {d} (--on-duplicate first keeps the first)")
            other = _read_json(seen[key] / "final.json")
            same = other.get("eval_reward") == fin.get("eval_reward")
            print(f"note: {d} duplicates {seen[key]} (kept); eval_reward "
                  f"{'identical' if same else 'DIFFERS: %r vs %r' % (other.get('eval_reward'), fin.get('eval_reward'))}",
                  file=sys.stderr)
            continue
        seen[key] = d
        rr = _read_rounds(d / "rounds.jsonl")
        row = {k: v for k, v in fin.items() if _scalar(v)}
        row.update({"budget": int(fin["budget"]), "seed": int(fin["seed"]), "run_dir": str(d),
                    "config_hash": config_hash(cfg), "git_commit": (cfg.get("git_commit") or "")[:7],
                    "tier": info.get("tier"), "optimal_value": info.get("optimal_value"),
                    "round0_eval_reward": rr[0].get("eval_reward"), "round0_path_kl": rr[0].get("path_kl"),
                    # sqdf_bbo/protocol.py ("legacy" for runs recorded before protocol ids); the machine
                    "protocol": protocol_of(cfg), "task_protocol": task_protocol_of(cfg),
                    "cpu_model": str(cfg.get("cpu_model") or "")})
        finals.append(row)
        for r in rr:
            rounds.append({"task": fin["task"], "method": fin["method"], "budget": int(fin["budget"]),
                           "seed": int(fin["seed"]), **{k: v for k, v in r.items() if _scalar(v)}})
    return pd.DataFrame(finals), pd.DataFrame(rounds)


#: agent settings added after results were committed, with the value that reproduces the earlier
#: computation exactly: left out of the hash at that value so committed rows stay comparable
HASH_NEUTRAL_DEFAULTS = {"proxy_arch": "mlp"}
#: run settings that do not change what a run computes (oracle retries, the optional tracker, checkpoints)
#: or change only its float rounding, as the thread count does (the UNet's memory layout)
HASH_NEUTRAL_RUN = ("oracle_retries", "oracle_retry_wait_s", "tracker", "checkpoint_every", "checkpoint_every_s",
                    "channels_last", "isolate", "agent_timeout_s")  # where the agent runs: same result
#: run settings added later whose default is what runs before them computed
HASH_NEUTRAL_RUN_DEFAULTS = {"precision": "fp32"}
#: agent settings that are derived from others (beta is recorded beside the native knob it sets)
HASH_NEUTRAL_AGENT = ("beta",)
#: agent settings that change memory and time but not the result (gradient checkpointing): hashed at one
#: fixed value, the default they had when the committed results were made, so those rows keep their hashes
HASH_FIXED_AGENT = {"checkpoint": True}


def config_hash(cfg: dict) -> str:
    """8-hex digest of the settings that define a run's method (agent, run and task overrides), not its seed."""
    import hashlib

    def hashed(settings, always: tuple, at_default: dict):
        """settings minus the keys in ``always`` and those still at their ``at_default`` value."""
        if not isinstance(settings, dict):
            return settings
        return {k: v for k, v in settings.items() if k not in always and not (k in at_default and v == at_default[k])}

    key = {k: cfg.get(k) for k in ("agent", "run", "task_overrides")}
    key["run"] = hashed(key["run"], HASH_NEUTRAL_RUN, HASH_NEUTRAL_RUN_DEFAULTS)
    key["agent"] = hashed(key["agent"], HASH_NEUTRAL_AGENT, HASH_NEUTRAL_DEFAULTS)
    if isinstance(key["agent"], dict):
        key["agent"].update({k: v for k, v in HASH_FIXED_AGENT.items() if k in key["agent"]})
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]


def check_uniform_settings(finals: pd.DataFrame) -> None:
    """Raise if the seeds of one (task, method, budget) were run with different settings."""
    for (task, method, budget), g in finals.groupby(KEY, sort=True):
        hashes = g.groupby("config_hash")["run_dir"].first()
        if len(hashes) > 1:
            raise LeaderboardError(f"task={task} method={method} budget={budget}: seeds were run with different "
                                   f"settings (config.json agent/run/task_overrides differ), e.g. "
                                   f"{' vs '.join(hashes.tolist()[:2])}; give the leaderboard one setting per method "
                                   "or pass --allow-mixed")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def extra_metric_keys(finals: pd.DataFrame) -> list[str]:
    """Task-specific numeric keys (naturalness, eval extras) present in final.json, sorted."""
    skip = CORE_KEYS | {"tier", "optimal_value", "round0_eval_reward", "round0_path_kl", "config_hash", "git_commit"}
    return sorted(c for c in finals.columns
                  if c not in skip and pd.api.types.is_numeric_dtype(finals[c]))


# ---- normalisation -----------------------------------------------------------------------------
def normalisation_bounds(finals: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """Per (task, budget): norm_low (pretrained eval reward), norm_high and norm_high_source.

    norm_low is the pretrained model's eval reward: the mean over seeds of the ``pretrained`` method's runs
    where the table has them, so that adding a method never moves it. Without them it averages round 0 of
    the runs whose round 0 *is* the pretrained model (path KL 0): the prior-free searchers' round 0 (random,
    TuRBO, qLogNEI: their own initial designs, path KL NaN) is not. A method whose round 0 samples with
    another sampler (RLCM's consistency model) would still enter that fallback, so tables that mix such
    methods should include ``pretrained``.

    norm_high is the task's ``optimal_value`` where it exceeds norm_low, else the best eval reward seen on
    the task in any round of any run (``best_seen``): a method that beats every earlier round raises it,
    which rescales every normalised score of the task by one positive factor (paired verdicts, their
    p-values and signs, do not change)."""
    rows = []
    for (task, budget), whole in finals.groupby(["task", "budget"], sort=True):
        g = whole
        if "method" in g and (g["method"] == "pretrained").any():
            g = g[g["method"] == "pretrained"]
        elif "round0_path_kl" in g:  # older run folders may lack round 0's path KL: then keep every run
            on_prior = pd.to_numeric(g["round0_path_kl"], errors="coerce") == 0
            g = g[on_prior] if on_prior.any() else g
        r0 = g.dropna(subset=["round0_eval_reward"]).groupby("seed")["round0_eval_reward"].mean()
        if len(r0) == 0:
            raise LeaderboardError(f"task {task!r} budget {budget}: no round-0 eval_reward to normalise with")
        low = float(r0.mean())
        opts = {float(v) for v in whole["optimal_value"].dropna()}
        if len(opts) > 1:
            raise LeaderboardError(f"task {task!r}: run folders disagree on optimal_value: {sorted(opts)}")
        best_seen = float(rounds.loc[rounds["task"] == task, "eval_reward"].max())
        if opts and next(iter(opts)) > low:
            high, src = next(iter(opts)), "optimum"
        else:
            high, src = best_seen, "best_seen"
        rows.append({"task": task, "budget": budget, "norm_low": low, "norm_high": high, "norm_high_source": src})
    return pd.DataFrame(rows)


def add_normalised(finals: pd.DataFrame, bounds: pd.DataFrame) -> pd.DataFrame:
    """finals with a ``normalised_score`` column (NaN where low == high)."""
    out = finals.merge(bounds, on=["task", "budget"], how="left")
    span = out["norm_high"] - out["norm_low"]
    out["normalised_score"] = np.where(span > 0, (out["eval_reward"] - out["norm_low"]) / span.where(span > 0), np.nan)
    return out


# ---- one protocol per table ------------------------------------------------------------------
#: the runs one table row pools: its key columns
POOL_KEYS = ("task", "method", "budget", "knob", "value")


class RunRecordError(LeaderboardError):
    """Bad input or a table that would pool protocols; printed as one line."""


def require_one_protocol(df: pd.DataFrame, table_name: str, by: Optional[Sequence[str]] = None) -> None:
    """Raise RunRecordError when ``table_name`` would pool runs of several protocols: the runs of one row
    (grouped ``by``, default the :data:`POOL_KEYS` present) must share their ``protocol``, and the runs of
    one task (every method and budget) their ``task_protocol`` (harness version, oracle, assets) where
    that column is present. Runs without the columns count as ``legacy``."""
    if df is None or not len(df):
        return
    df = df.copy()
    for col in ("protocol", "task_protocol"):
        if col in df.columns:
            df[col] = df[col].fillna(LEGACY).astype(str).replace("", LEGACY)
    checks = [(list(by) if by is not None else [c for c in POOL_KEYS if c in df.columns], "protocol", "runs of")]
    if "task_protocol" in df.columns and "task" in df.columns:
        checks.append((["task"], "task_protocol", "methods compared on"))
    for keys, col, what in checks:
        if col not in df.columns:
            continue
        for key, g in df.groupby(keys, sort=True, dropna=False):
            found = sorted(set(g[col]))
            if len(found) > 1:
                key = key if isinstance(key, tuple) else (key,)
                where = " ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, key))
                raise RunRecordError(f"{table_name}: the {what} {where} come from {len(found)} protocols "
                                     f"({', '.join(found)}); re-make them under one protocol or build the "
                                     "table from one protocol's runs")


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:g}" if isinstance(v, float) else str(v))

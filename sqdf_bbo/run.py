"""The main job: one task x one method x one seed, resumable.

    python -m sqdf_bbo.run --task aesthetic --budget 5000 [--method sqdf] [--seed 0] [--out runs/]
                           [--resume] [--set key=value ...]

``--set`` keys go to the agent's config; ``task.KEY`` to the task's overrides; ``run.KEY`` to the run
settings (``rounds``, ``round_sizes``, ``n_eval``, ``batch_size``). The run folder
``<out>/<task>__<method>__b<budget>__s<seed>/`` holds config.json, rounds.jsonl (round 0 = the
pretrained model before any query), queries.csv (every design), final.json, samples.png, journal.jsonl
+ journal.head (hash-chained oracle answers: sqdf_bbo/journal.py), .lock and checkpoint/ (safetensors +
JSON, no pickle: sqdf_bbo/checkpoint.py). Every write is atomic; ``--resume`` continues from the last
finished round and reproduces an uninterrupted run exactly. A resumed run takes every setting from its
config.json and refuses a ``--set`` that differs (except those in :data:`RESUME_MUTABLE`) and a checkpoint
of another run (task, method, budget, seed, settings digest); one process at a time holds a run folder
(an fcntl lock on .lock).

The agent is untrusted code: it gets a copy of the task description, every design it returns is checked,
and an exception, ``sys.exit`` or KeyboardInterrupt from its calls ends the run with one line naming the
method and the call. A ``package.module:Class`` plug-in (any agent with ``run.isolate=true``) runs in its own
process (sqdf_bbo/agent_process.py), which holds no env, oracle, run state or run folder path; its crashes
and hangs (``run.agent_timeout_s``) end the run the same way, with the folder resumable.

Data parallelism over P processes/GPUs for one run (``sqdf_bbo.distributed``):
``accelerate launch --multi_gpu --num_processes P -m sqdf_bbo.run ...`` (or ``torchrun``). Every
process holds the model; each samples 1/P of every proposal and training batch, gradients are averaged
before each step; process 0 alone queries the oracle, evaluates and writes the run folder.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import errno
import fcntl
import functools
import hashlib
import importlib.util
import datetime as _dt
import io
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

import numpy as np
import torch

from sqdf_bbo import settings as _settings
from sqdf_bbo.agent_process import AgentProcessError
from sqdf_bbo.checkpoint import checkpointable
from sqdf_bbo.io import atomic_write_json, atomic_write_text
from sqdf_bbo.settings import setting

@dataclasses.dataclass
class RunSettings:
    """The ``run.*`` settings (``--set run.KEY=VALUE``), typed and range-checked like agent settings."""

    rounds: int = setting(4, "number of rounds; sizes follow the official 1:2:4:8 doubling", ge=1)
    round_sizes: Optional[Any] = setting(None, "explicit round sizes (a list summing to the budget)")
    n_eval: Optional[int] = setting(None, "evaluation samples per round (None: the task's default)", ge=1)
    batch_size: Optional[int] = setting(None, "designs per oracle call (None: the task's default)", ge=1)
    oracle_retries: int = setting(3, "retries of an oracle call that raises (nothing is charged for it)", ge=0)
    oracle_retry_wait_s: float = setting(1.0, "first retry wait in seconds, doubled each retry", ge=0, le=3600)
    tracker: str = setting("none", "mirror metrics to: none, tensorboard, wandb",
                           choices=("none", "tensorboard", "wandb"))
    checkpoint_every: int = setting(25, "mid-round checkpoint every K optimizer steps (0: round ends and "
                                        "query phases only)", ge=0)
    precision: str = setting("fp32", "the diffusion backbones' forward pass: fp32, bf16 (torch.autocast; "
                                     "outputs stay float32) or auto (bf16 where the GPU or CPU computes it "
                                     "natively, else fp32)", choices=("fp32", "bf16", "auto"))
    channels_last: bool = setting(True, "the embedded image UNet computes in channels_last memory format (faster on "
                                        "CPU, same function up to float rounding; false: the layout of runs "
                                        "before it)")
    checkpoint_every_s: float = setting(60.0, "also a mid-round checkpoint after any optimizer step that ends "
                                              "this many seconds after the last checkpoint, and after the "
                                              "first step of a resumed run (0: off)", ge=0)
    isolate: Optional[bool] = setting(None, "run the agent in its own process (sqdf_bbo/agent_process.py); None: "
                                            "on for package.module:Class plug-ins, off for built-in methods")
    agent_timeout_s: Optional[float] = setting(None, "an isolated agent's longest call in seconds before the run "
                                                     "stops it (None: 3600 for plug-ins, off for built-ins; 0: off)",
                                               ge=0)


RUN_DEFAULTS = _settings.defaults(RunSettings)


@checkpointable
@dataclasses.dataclass
class RunState:
    """Everything a run has done so far; saved in ``checkpoint/state.json`` (plain values and tensors).

    queries: one record per query (round, index, observed and noise-free value, extras, coordinates);
    rounds: one record per finished round (round 0 = the pretrained model before any query);
    env: the budgeted environment's state; in_round: set from the end of a round's query phase to the end of
    the round (a resume then skips straight to fine-tuning); ckpt_id: the newest checkpoint's number;
    reference_designs / last_designs: round 0's and the latest evaluation samples (for the sample grids);
    proposing: within a long query-phase proposal, the round, the designs drawn so far and the generator's
    state (see Run.propose)."""

    next_round: int = 0
    queries: list = dataclasses.field(default_factory=list)
    rounds: list = dataclasses.field(default_factory=list)
    wall_s: float = 0.0
    env: dict = dataclasses.field(default_factory=dict)
    code_commit: Optional[str] = None
    ckpt_id: int = 0
    in_round: Optional[dict] = None
    reference_designs: Optional[Any] = None
    last_designs: Optional[Any] = None
    proposing: Optional[dict] = None


def resolve_run_settings(overrides: dict, task_defaults: dict, budget: int) -> dict:
    """Every run setting: defaults <- the task's n_eval/batch_size <- ``overrides``, typed and checked, and
    the round sizes; one-line CLIError naming ``run.KEY`` otherwise (the runner and the sweep use it)."""
    base = {"n_eval": task_defaults.get("n_eval", 256), "batch_size": task_defaults.get("batch_size", 64)}
    try:
        cfg = _settings.resolve(RunSettings, overrides, base)
    except ValueError as e:
        raise CLIError(str(e).replace("setting ", "run.", 1).replace("unknown setting(s)", "unknown run setting")) from None
    if cfg["tracker"] != "none" and importlib.util.find_spec(cfg["tracker"]) is None:
        raise CLIError(f"run.tracker={cfg['tracker']} needs the {cfg['tracker']} package (pip install {cfg['tracker']})")
    if cfg["batch_size"] > budget:  # the env's declared batch cannot exceed the budget
        if "batch_size" in overrides:
            raise CLIError(f"run.batch_size={cfg['batch_size']} must be <= the budget {budget}")
        cfg["batch_size"] = budget
    round_sizes(budget, cfg["rounds"], cfg["round_sizes"])
    return cfg
TIMING_KEYS = ("wall_time_s", "peak_mem_mb", "round_wall_s")
#: run settings a resumed run may change: they do not change its results (where a tracker mirrors the
#: metrics, how often checkpoints are saved, how an oracle failure is retried)
RESUME_MUTABLE = ("tracker", "checkpoint_every", "checkpoint_every_s", "oracle_retries", "oracle_retry_wait_s",
                  "isolate", "agent_timeout_s")
#: an isolated plug-in's per-call limit when run.agent_timeout_s is not set (seconds)
PLUGIN_TIMEOUT_S = 3600.0


def _same(a: Any, b: Any) -> bool:
    """Whether two setting values are equal as config.json stores them (tuples as lists, NaN as NaN)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


class CLIError(ValueError):
    """A bad command-line value; printed as one line."""


# ---- argument handling --------------------------------------------------------------------------
#: the largest budget: every query's record (about 1 kB) stays in memory and in the checkpoint
MAX_BUDGET = 10_000_000
#: seeds seed numpy's global generator, which takes 32-bit seeds
MAX_SEED = 2**32 - 1


def check_budget(v: Any) -> int:
    """The budget as an int in [1, MAX_BUDGET]; one-line CLIError naming the value otherwise."""
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise CLIError(f"budget must be a positive integer, got {v!r}")
    if v > MAX_BUDGET:
        raise CLIError(f"budget {v} is too large: at most {MAX_BUDGET} queries (every query's record is kept in "
                       "memory and in each checkpoint)")
    return v


def check_seed(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SEED:
        raise CLIError(f"seed must be an integer in [0, 2**32), got {v!r}")
    return v


def _plain_int(s: str) -> Optional[int]:
    """int of a string of plain digits ('1_000', '+5', ' 5' and '1e3' are not), else None."""
    return int(s) if re.fullmatch(r"[0-9]+", s) else None


def _positive_int(name: str):
    def parse(s: str) -> int:
        v = _plain_int(s)
        if v is None or v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {s!r}")
        try:
            return check_budget(v) if name == "budget" else v
        except CLIError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _seed(s: str) -> int:
    v = _plain_int(s)
    if v is None or v > MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {s!r} (seeds are below "
                                         f"2**32 = {MAX_SEED + 1})")
    return v


def _parse_value(s: str) -> Any:
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        low = s.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return s


def parse_sets(items: list[str]) -> tuple[dict, dict, dict]:
    """['a=1', 'task.noise_std=0.5', 'run.rounds=2'] -> (agent, task, run) override dicts."""
    agent, task, run = {}, {}, {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, val = item.split("=", 1)
        key = key.strip()
        if not key:
            raise CLIError(f"--set expects key=value, got {item!r}")
        if key.startswith("task."):
            task[key[5:]] = _parse_value(val)
        elif key.startswith("run."):
            k = key[4:]
            if k not in RUN_DEFAULTS:
                raise CLIError(f"unknown run setting {k!r}; allowed: {', '.join(RUN_DEFAULTS)}")
            run[k] = _parse_value(val)
        else:
            agent[key] = _parse_value(val)
    return agent, task, run


class _OneLineParser(argparse.ArgumentParser):
    """Bad values exit with status 2 and a single 'error: ...' line (no usage dump)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m sqdf_bbo.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="aesthetic", help="task name (see sqdf_bbo.tasks.list_tasks())")
    p.add_argument("--method", default="sqdf", help="method name or package.module:ClassName")
    p.add_argument("--budget", type=_positive_int("budget"), default=5000, help="oracle queries (> 0)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument("--resume", action="store_true", help="continue from the last finished round")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting: agent KEY, task.KEY or run.KEY (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--help-settings", action="store_true",
                   help="print the method's settings (type, default, doc, allowed values) and exit")
    return p


def settings_help(method: str) -> str:
    """The text of ``--help-settings`` for a method name or plug-in path."""
    from sqdf_bbo import settings as S
    from sqdf_bbo.agents import resolve_method

    cls = resolve_method(method)
    typed = cls.typed_settings()
    title = f"settings of method {method!r} ({cls.__name__}); set with --set KEY=VALUE"
    run = S.describe(RunSettings, "run settings; set with --set run.KEY=VALUE")
    if typed is not None:
        return S.describe(typed, title) + "\n\n" + run
    rows = [f"  {k} = {v!r}" for k, v in cls.default_config.items()]
    return "\n".join([title + " (untyped plug-in: values are taken as parsed)"] + rows) + "\n\n" + run


def run_folder_name(task: str, method: str, budget: int, seed: int) -> str:
    """``<task>__<method>__b<budget>__s<seed>``, plug-in paths made file-name safe (':' -> '.', '/' -> '_')."""
    def safe(s: str) -> str:
        return s.replace(":", ".").replace("/", "_")
    return f"{safe(task)}__{safe(method)}__b{budget}__s{seed}"


def round_sizes(budget: int, rounds: int, explicit: Optional[list] = None) -> list[int]:
    """Round sizes that sum to the budget: the official 1:2:4:8 doubling of the SQDF paper scaled, or explicit."""
    if explicit is not None:  # plain positive ints only: 50.5 or True are refused, not rounded
        if not isinstance(explicit, (list, tuple)):
            raise CLIError(f"run.round_sizes={explicit!r} must be a list of positive integers summing to the budget "
                           f"{budget}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in explicit) or sum(explicit) != budget:
            raise CLIError(f"run.round_sizes must be positive integers summing to the budget {budget}, got "
                           f"{list(explicit)!r}")
        return list(explicit)
    if not isinstance(rounds, int) or rounds < 1:
        raise CLIError(f"run.rounds must be a positive integer, got {rounds!r}")
    if budget < rounds:
        raise CLIError(f"budget {budget} is smaller than the number of rounds {rounds}")
    w = [2.0**i for i in range(rounds)]
    sizes = [max(1, int(budget * wi / sum(w))) for wi in w]
    sizes[-1] += budget - sum(sizes)
    return sizes


def _versions() -> dict:
    """Installed versions of the packages a run depends on, read from their metadata (nothing is imported:
    importing them all would add seconds to every run); None for a package that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "diffusers", "peft", "botorch", "gymnasium", "transformers", "sqdf_bbo"):
        try:
            out[mod] = version(mod)
        except PackageNotFoundError:
            out[mod] = None
    return out


def _git_commit() -> Optional[str]:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None
    except Exception:
        return None


def _peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- calls into the agent ------------------------------------------------------------------------
class AgentEscape(CLIError):
    """An agent call ended with sys.exit or KeyboardInterrupt (not an Exception); ``status`` is the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def agent_call(method: str, call: str):
    """Run agent code: an Exception leaving it is tagged ``agent_call = call`` (so the CLI can name the call);
    a SystemExit / KeyboardInterrupt becomes an :class:`AgentEscape` naming the method and the call."""
    try:
        yield
    except Exception as e:
        if not hasattr(e, "agent_call"):
            try:
                e.agent_call = call
            except AttributeError:
                pass
        raise
    except BaseException as e:  # noqa: B036 - SystemExit, KeyboardInterrupt, GeneratorExit from agent code
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else f"raised {type(e).__name__}"
        status = 130 if isinstance(e, KeyboardInterrupt) else 2
        raise AgentEscape(f"method {method!r} {what} in {call}; the run stopped there (every oracle answer so far "
                          "is in journal.jsonl: --resume continues from the last checkpoint)", status) from None


def check_designs(designs: Any, n: int, design_shape: tuple, method: str, call: str) -> torch.Tensor:
    """The designs an agent returned, as a plain CPU tensor (its float dtype kept), if they are a floating-point tensor or
    array of shape (n, *design_shape) with finite values; else a one-line CLIError naming the method and
    the call. Bounds are not enforced: the oracles project onto the box (the env's out_of_bounds='allow')."""
    where = f"method {method!r} returned designs {call}"
    if isinstance(designs, np.ndarray) and designs.dtype.kind == "f":
        designs = torch.from_numpy(np.ascontiguousarray(designs))
    if not isinstance(designs, torch.Tensor):
        raise CLIError(f"{where} as a {type(designs).__name__}; expected a tensor of shape {(n, *design_shape)}")
    x = designs.detach().as_subclass(torch.Tensor).cpu()
    if not x.is_floating_point():
        raise CLIError(f"{where} of dtype {x.dtype}; expected floating-point designs")
    if tuple(x.shape) != (n, *design_shape):
        raise CLIError(f"{where} of shape {tuple(x.shape)}; expected {(n, *design_shape)}")
    finite = torch.isfinite(x.reshape(n, -1)).all(dim=1) if n else torch.ones(0, dtype=torch.bool)
    if not bool(finite.all()):
        raise CLIError(f"{where} with non-finite values (NaN or inf) in {int((~finite).sum())} of {n} designs")
    return x.clone()


# ---- evaluation (harness side: never shown to the agent, never charged) -------------------------
def evaluate_policy(agent, task, n_eval: int, generator: torch.Generator,
                    reference: Optional[Any] = None, method: str = "the agent",
                    config: Optional[dict] = None) -> tuple[dict, torch.Tensor]:
    """Eval reward (noise-free oracle mean), path KL to the pretrained model, diversity (``vendi``, and
    ``vendi_valid`` / ``n_valid`` where the task defines validity), naturalness.

    For a diffusion policy the harness draws the evaluation trajectories itself (its own DDIM schedule and
    noise, the agent's noise predictor) and measures the path KL against ``reference``, the harness's
    own frozen pretrained backbone (``Task.harness_reference``; the agent's reference only where that is
    None): nothing the agent records or overrides enters the evaluation. ``config``: the run's own copy of
    the agent's settings (default: the agent's); designs from ``propose`` are checked (:func:`check_designs`)."""
    from sqdf_bbo.agents.base import DiffusionAgent
    from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
    from sqdf_bbo.metrics import diversity

    from sqdf_bbo.agent_process import IsolatedAgent

    extra: dict = {}
    conds = task.eval_conditions(n_eval)  # held-out prompts (None for unconditional tiers)
    cfg = config if config is not None else getattr(agent, "config", {})  # a plain proposer has no settings
    isolated = isinstance(agent, IsolatedAgent)
    if agent.evaluates_policy if isolated else isinstance(agent, DiffusionAgent) and not agent.steers_sampling:
        ref = reference if reference is not None else agent.reference
        sched = DDIMSchedule.from_scheduler(ref.scheduler, int(cfg["num_steps"]), float(cfg["eta"]))
        designs, kls = [], []
        bs = int(cfg["sample_batch"])
        with agent_call(method, "evaluation"):  # the agent's noise predictor runs in the harness's sampling loop
            policy = agent.sampling_policy() if hasattr(agent, "sampling_policy") else agent.policy
            for i in range(0, n_eval, bs):
                m = min(bs, n_eval - i)
                x0 = ref.initial_noise(m, generator, sched)
                with torch.no_grad():
                    traj = sample_trajectory(policy, sched, x0, cond=None if conds is None else conds[i:i + m],
                                             generator=generator, record_means=True)
                    designs.append(ref.decode(traj.final).detach())
                kls.append(path_kl(policy, ref, sched, traj))
        designs = torch.cat(designs)
        kl = float(torch.cat(kls).mean())
    else:
        with agent_call(method, "evaluation"), torch.no_grad():
            cond = None if conds is None else copy.deepcopy(conds)  # the agent gets its own copy
            if isolated:
                designs = agent.propose_for_evaluation(n_eval, generator, cond)
            else:
                designs = agent.propose(n_eval, generator) if conds is None else agent.propose(n_eval, generator, cond=cond)
            analytic = getattr(agent, "analytic_path_kl", None)
            kl = float(analytic()) if callable(analytic) else float("nan")
        designs = check_designs(designs, n_eval, tuple(task.info.design_shape), method,
                                f"during evaluation (its propose({n_eval}) call)")
        if callable(analytic):
            extra["path_kl_analytic"] = 1.0  # a closed form of the sampling rule, not measured on trajectories
    values = task.evaluate_true(designs)
    out = {"eval_reward": float(values.mean()), "eval_reward_std": float(values.std()), "path_kl": kl, **extra}
    for name, v in task.extra_values(designs).items():
        out[f"eval_{name}"] = float(torch.as_tensor(v).double().mean())
    out.update({k: v for k, v in diversity(task, designs).items() if k != "vendi_kernel"})  # numbers only
    out.update(task.naturalness(designs))
    return out, designs


def curve_summary(true_values: np.ndarray, budget: int) -> dict:
    """Best-so-far and top-k means of the noise-free values of every queried design. A NaN value (an oracle
    that failed to score a design) counts as the worst possible outcome, -inf; ``nonfinite_values`` counts them."""
    from sqdf_bbo.metrics import auc_top_k

    true_values = np.asarray(true_values, dtype=np.float64)
    out = {"queries_used": int(len(true_values)), "nonfinite_values": int((~np.isfinite(true_values)).sum())}
    true_values = np.where(np.isnan(true_values), -np.inf, true_values)
    if len(true_values) == 0:
        return out
    srt = np.sort(true_values)[::-1]
    out["best_so_far"] = float(srt[0])
    for k in (1, 10, 100):
        out[f"top{k}"] = float(srt[:k].mean())
    out["auc_top10"] = float(auc_top_k(true_values, k=10, budget=budget))
    return out


def load_agent(run_dir: str | Path, rank: int = 0, allow_import: bool = False):
    """The agent of a run folder at its last checkpoint, rebuilt from config.json and the saved state (for
    inspection). ``rank`` picks a process of a data-parallel run. Only registered task and method names are
    built: a ``package.module:object`` that config.json names is imported (which runs its code) only with
    ``allow_import=True``, for folders you trust; otherwise ValueError."""
    from sqdf_bbo import checkpoint
    from sqdf_bbo.agents import METHODS, resolve_method
    from sqdf_bbo.distributed import SingleProcess
    from sqdf_bbo.tasks import list_tasks, make_task

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    for kind, name, known in (("task", cfg.get("task"), list_tasks()), ("method", cfg.get("method"), METHODS)):
        if not isinstance(name, str) or (name not in known and not allow_import):
            raise ValueError(f"{run_dir / 'config.json'} names {kind} {name!r}, which is not a registered {kind}; "
                             "load_agent imports code a run folder names only with allow_import=True (trust the "
                             "folder first)")
    task = make_task(cfg["task"], **cfg.get("task_overrides", {}))
    agent = resolve_method(cfg["method"])(task.info.agent_copy(), dict(cfg["agent"]), cfg["seed"])
    world = int(cfg.get("world_size", 1))
    if world > 1:  # the same config split as in the run; collectives are no-ops here
        view = SingleProcess()
        view.rank, view.world_size, view.is_main = rank, world, rank == 0
        view.local_generator = lambda seed: torch.Generator().manual_seed(int(seed) * world + rank)
        agent.attach_data_parallel(view)
    desc, _ = checkpoint.load(run_dir / "checkpoint", "state")
    c = int(checkpoint.decode(desc["run"]["v"]["ckpt_id"], "run.ckpt_id", {}))  # RunState.ckpt_id
    adesc, tensors = checkpoint.load(run_dir / "checkpoint", Run._agent_stem(c, rank))
    agent.load_state_tree(adesc["agent"]["v"], {k[len("agent."):]: v for k, v in tensors.items()
                                                if k.startswith("agent.")})
    return agent


# ---- the run ------------------------------------------------------------------------------------
class Run:
    """State of one run; :meth:`execute` runs (or resumes) it to completion."""

    def __init__(self, args: argparse.Namespace):
        from sqdf_bbo.agents import resolve_method
        from sqdf_bbo.tasks import make_task

        from sqdf_bbo.distributed import data_parallel_from_env

        self.args = args
        self.dp = data_parallel_from_env()  # None unless launched as several processes
        self.rank = 0 if self.dp is None else self.dp.rank
        self.world_size = 1 if self.dp is None else self.dp.world_size
        self.agent_overrides, self.task_overrides, run_overrides = parse_sets(args.sets)
        self.dir = Path(args.out) / run_folder_name(args.task, args.method, args.budget, args.seed)
        saved = self._saved_config() if args.resume else None
        if saved is not None:  # a resumed run takes its settings from its own config.json
            self._check_task_overrides(saved)
            self.task_overrides = dict(saved.get("task_overrides") or {})
        try:
            self.task = make_task(args.task, **self.task_overrides)
        except TypeError as e:  # a built-in factory given a value of the wrong type
            raise CLIError(f"task {args.task!r}: {e}") from None
        noise = getattr(self.task, "noise_std", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise CLIError(f"task {args.task!r} has noise_std={noise!r}; it must be a finite number >= 0")
        self.design_shape = tuple(int(s) for s in self.task.info.design_shape)  # the harness's own copy
        self.run_cfg = resolve_run_settings(run_overrides, self.task.info.defaults, args.budget)
        self._lock = None
        self.agent_process = None  # sqdf_bbo.agent_process.AgentProcess of an isolated agent
        isolate = self._isolation(run_overrides, saved)
        try:
            self._init_agent_and_folder(saved, run_overrides, isolate)
        except BaseException:
            self.close()
            raise

    def _isolation(self, run_overrides: dict, saved: Optional[dict]) -> bool:
        """Whether the agent runs in its own process: run.isolate as given (or as the resumed run's config.json
        records it), else on for a package.module:Class plug-in and off for a built-in method."""
        given = run_overrides.get("isolate", (saved or {}).get("run", {}).get("isolate"))
        if given is None:
            return ":" in self.args.method
        return bool(self.run_cfg["isolate"] if "isolate" in run_overrides else given)

    def _agent_timeout(self) -> Optional[float]:
        t = self.run_cfg["agent_timeout_s"]
        if t is None:
            return PLUGIN_TIMEOUT_S if ":" in self.args.method else None
        return float(t) or None

    def _init_agent_and_folder(self, saved: Optional[dict], run_overrides: dict, isolate: bool) -> None:
        from sqdf_bbo.agents import resolve_method

        args = self.args
        if isolate:
            from sqdf_bbo import agent_process
            from sqdf_bbo.distributed import data_parallel_from_env

            if data_parallel_from_env() is not None:
                raise CLIError("run.isolate=true runs the agent in one child process; launch the run as one process")
            hidden = [str(self.dir.resolve()), str(Path(args.out).resolve()), self.dir.name]
            try:
                self.agent_cls = agent_process.start(args.method, self.task.info, hidden, self._agent_timeout())
            except agent_process.AgentProcessError as e:
                raise CLIError(str(e) if e.kind != "exception" else
                               f"cannot start method {args.method!r}: {e.type_name}: {e}") from None
            self.agent_process = self.agent_cls.proc
        else:
            self.agent_cls = resolve_method(args.method)
        self.agent_config = self.agent_cls.resolve_config(self.task.info, self.agent_overrides)
        if saved is not None:
            self._adopt_saved_settings(saved, run_overrides)
        if self.agent_process is not None:
            self.agent_process.timeout_s = self._agent_timeout()
        from sqdf_bbo.backbones.base import compute_dtype_for, with_execution_options

        dtype, channels_last = compute_dtype_for(self.run_cfg["precision"]), self.run_cfg["channels_last"]
        self._exec_options = None
        if (dtype is not None or channels_last) and self.task.info.make_backbone is not None:
            # the agents' and the harness's backbones
            self._exec_options = (dtype, channels_last)
            self.task.info.make_backbone = with_execution_options(self.task.info.make_backbone, dtype, channels_last)
        self.sizes = round_sizes(args.budget, self.run_cfg["rounds"], self.run_cfg["round_sizes"])
        if saved is not None and saved.get("round_sizes", self.sizes) != self.sizes:
            raise CLIError(f"--resume: the round sizes {self.sizes} differ from the run's config.json "
                           f"({saved['round_sizes']}); the code that computes them changed since the run started")
        self.ckpt = self.dir / "checkpoint" / "state.json"
        self._last_checkpoint_t = time.monotonic()  # when the newest checkpoint was saved (or the run began)
        self._checkpoint_wall_s = 0.0  # seconds spent saving checkpoints in the current round
        self._check_out_dir()

    # -- resuming: the run folder's own settings --
    def _saved_config(self) -> Optional[dict]:
        """config.json of the run folder (None if there is none), after checking that it is this run's."""
        path = self.dir / "config.json"
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot resume: {path} is unreadable ({e})") from None
        if not isinstance(saved, dict):
            raise CLIError(f"cannot resume: {path} is not a run's config")
        for key in ("task", "method", "budget", "seed"):
            if saved.get(key) != getattr(self.args, key):
                raise CLIError(f"cannot resume: {path} records {key} {saved.get(key)!r}, not {getattr(self.args, key)!r} "
                               "(a renamed or copied run folder?)")
        return saved

    def _refuse_change(self, key: str, new: Any, old: Any) -> None:
        raise CLIError(f"--resume: {key}={new!r} differs from the run's config.json ({key}={old!r}); a resumed run "
                       "keeps the settings it started with (drop that --set, or start a new run in another --out)")

    def _check_task_overrides(self, saved: dict) -> None:
        old = saved.get("task_overrides") or {}
        for k, v in self.task_overrides.items():
            if k not in old or not _same(v, old[k]):
                self._refuse_change(f"task.{k}", v, old.get(k, "<not set: the task's default>"))

    def _adopt_saved_settings(self, saved: dict, run_overrides: dict) -> None:
        """Refuse any --set that differs from config.json (except :data:`RESUME_MUTABLE` run settings), then
        take every setting from config.json."""
        old_agent, old_run = saved.get("agent") or {}, saved.get("run") or {}
        for k in self.agent_overrides:
            if k not in old_agent or not _same(self.agent_config[k], old_agent[k]):
                self._refuse_change(k, self.agent_config[k], old_agent.get(k, "<not set>"))
        for k in run_overrides:
            if k not in RESUME_MUTABLE and (k not in old_run or not _same(self.run_cfg[k], old_run[k])):
                self._refuse_change(f"run.{k}", self.run_cfg[k], old_run.get(k, "<not set>"))
        self.agent_overrides = dict(old_agent)
        self.agent_config = self.agent_cls.resolve_config(self.task.info, self.agent_overrides)
        run = {k: v for k, v in old_run.items() if k in RUN_DEFAULTS}
        run.update({k: v for k, v in run_overrides.items() if k in RESUME_MUTABLE})
        self.run_cfg = resolve_run_settings(run, self.task.info.defaults, self.args.budget)

    def identity(self) -> dict:
        """What a checkpoint must belong to: task, method, budget, seed and a digest of every setting that can
        change the results (all but :data:`RESUME_MUTABLE`)."""
        settings = {"agent": self.agent_config, "task_overrides": self.task_overrides, "round_sizes": self.sizes,
                    "run": {k: v for k, v in self.run_cfg.items() if k not in RESUME_MUTABLE}}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        return {"task": self.args.task, "method": self.args.method, "budget": self.args.budget,
                "seed": self.args.seed, "settings_sha256": digest}

    # -- the run folder --
    def _check_out_dir(self) -> None:
        out = Path(self.args.out)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write_probe{self.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CLIError(f"out folder {str(out)!r} is not writable ({e.strerror}); choose a writable --out") from None
        if self.rank == 0:
            self._acquire_lock()
        if (self.dir / "final.json").exists() and not self.args.resume:
            self.close()
            raise CLIError(f"run folder {str(self.dir)!r} already holds a finished run; "
                           "use --resume (a no-op) or another --out")
        if self.ckpt.exists() and not self.args.resume:
            self.close()
            raise CLIError(f"run folder {str(self.dir)!r} holds an unfinished run; add --resume to continue it")

    def _acquire_lock(self) -> None:
        """An exclusive lock on ``<run folder>/.lock`` (fcntl.flock), held until :meth:`close` or the process
        ends: a second process on the same run folder refuses instead of paying the oracle twice."""
        f = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise CLIError(f"run folder {str(self.dir)!r} is in use by another process"
                           + (f" (pid {holder})" if holder.isdigit() else "")
                           + "; wait for it to end (or stop it) before running or resuming it here") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def close(self) -> None:
        """Stop an isolated agent's process; release the run folder's lock (the process's end releases it too)."""
        if getattr(self, "agent_process", None) is not None:
            self.agent_process.close()
            self.agent_process = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- persistence --
    def config_record(self) -> dict:
        """config.json: the run's settings, its protocol id (sqdf_bbo/protocol.py), commit, versions, machine."""
        from sqdf_bbo import protocol

        rec = {
            "task": self.args.task, "method": self.args.method, "budget": self.args.budget,
            "seed": self.args.seed, "run": self.run_cfg, "round_sizes": self.sizes,
            "agent": self.agent_config, "task_overrides": self.task_overrides,
            "task_info": {"tier": self.task.info.tier, "design_shape": list(self.task.info.design_shape),
                          "noise_std": self.task.noise_std, "optimal_value": self.task.optimal_value},
            **({"world_size": self.world_size} if self.world_size > 1 else {}),
            "versions": _versions(), "git_commit": _git_commit(),
            "command": "python -m sqdf_bbo.run " + " ".join(sys.argv[1:]),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # where the agent runs (isolation) is one of protocol.NON_RESULT_RUN_SETTINGS: not part of the id
        return {**rec, **protocol.run_protocol(rec, self.task, self.agent_cls), **protocol.machine_record()}

    def write_logs(self, st: RunState) -> None:
        import pandas as pd

        buf = io.StringIO()
        pd.DataFrame(st.queries).to_csv(buf, index=False)
        atomic_write_text(self.dir / "queries.csv", buf.getvalue())
        atomic_write_text(self.dir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in st.rounds))

    @staticmethod
    def _rng_state() -> dict:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    @staticmethod
    def _agent_stem(ckpt_id: int, rank: int) -> str:
        return f"agent_rank{rank}_ckpt{ckpt_id}"

    def save_checkpoint(self, st: RunState, agent) -> None:
        """checkpoint/agent_rank{r}_ckpt{c}.{json,safetensors} (each process's agent and RNG states) first,
        then checkpoint/state.{json,safetensors} (the run state naming checkpoint c, by process 0) last, then
        the older agent files go: a kill at any moment leaves a consistent last checkpoint. No pickle
        (sqdf_bbo/checkpoint.py). Called at round ends, after each round's query phase and, in agents whose
        improve() reports progress, every ``run.checkpoint_every`` steps or ``run.checkpoint_every_s`` seconds."""
        from sqdf_bbo import checkpoint

        t_start = time.monotonic()
        folder = self.ckpt.parent
        st.ckpt_id = R = st.ckpt_id + 1
        try:
            if self.agent_process is not None:  # the agent's process encodes its state; the harness writes it
                desc, tensors = agent.encoded_state()
                if set(desc) != {"agent", "rng"} or not all(k.startswith(("agent", "rng")) for k in tensors):
                    raise checkpoint.CheckpointError(f"the process of method {self.args.method!r} sent a state with "
                                                     "entries other than its own")
                desc["harness_rng"] = checkpoint.encode(self._rng_state(), "harness_rng", tensors)
                checkpoint.save_encoded(folder, self._agent_stem(R, self.rank), desc, tensors)
            else:
                with agent_call(self.args.method, "state_tree (checkpoint)"):
                    tree = agent.state_tree()
                checkpoint.save(folder, self._agent_stem(R, self.rank), {"agent": tree, "rng": self._rng_state()})
            if self.dp is not None:
                self.dp.barrier()
            if self.rank == 0:
                checkpoint.save(folder, "state", {"run": st, "world_size": self.world_size, "identity": self.identity()})
            if self.dp is not None:
                self.dp.barrier()
        except checkpoint.CheckpointError as e:
            raise CLIError(f"cannot checkpoint the run: {e}") from None
        for old in folder.glob(f"agent_rank{self.rank}_ckpt*.json"):
            if old.stem != self._agent_stem(R, self.rank):
                checkpoint.remove(folder, old.stem)
        self._last_checkpoint_t = time.monotonic()
        self._checkpoint_wall_s += self._last_checkpoint_t - t_start
        if os.environ.get("SQDF_BBO_CRASH_AFTER_CHECKPOINT") == str(R):  # test hook: a kill right after it
            os._exit(17)

    def _check_checkpoint_identity(self, saved: Optional[dict]) -> None:
        """Refuse a checkpoint written by another run (other task, method, budget, seed or settings)."""
        where = f"cannot resume {str(self.dir)!r}: its checkpoint"
        if not isinstance(saved, dict):
            raise CLIError(f"{where} records no run identity (written before sqdf-bbo recorded one); finish the run "
                           "with the version that started it, or start over")
        mine = self.identity()
        for key in ("task", "method", "budget", "seed"):
            if saved.get(key) != mine[key]:
                raise CLIError(f"{where} belongs to a run with {key} {saved.get(key)!r}, this run has {key} "
                               f"{mine[key]!r} (a copied checkpoint?)")
        if saved.get("settings_sha256") != mine["settings_sha256"]:
            raise CLIError(f"{where} was written with other settings than config.json holds (an edited config.json "
                           "or a copied checkpoint?)")

    def _new_agent(self):
        """The agent, built after the harness's own reference and evaluation objects, from a copy of the task
        description (TaskInfo.agent_copy): nothing it writes into reaches the harness."""
        if self.rank == 0:
            self.eval_reference  # noqa: B018 - built now, before (and apart from) the agent
        if self.agent_process is not None:
            from sqdf_bbo.agent_process import IsolatedAgent

            if self.agent_cls.evaluates_policy and self.eval_reference is None:
                raise CLIError(f"task {self.args.task!r} has no harness-side reference backbone "
                               "(Task.harness_reference), which an isolated diffusion agent's evaluation needs; "
                               "run it with run.isolate=false (in this process: trusted code only)")
            agent = IsolatedAgent(self.agent_process, self.agent_cls.describe, dict(self.agent_config),
                                  reference=self.eval_reference)
            agent.build(dict(self.agent_overrides), self.args.seed, self._exec_options)
            return agent
        with agent_call(self.args.method, "__init__"):
            return self.agent_cls(self.task.info.agent_copy(), dict(self.agent_overrides), self.args.seed)

    def load_checkpoint(self) -> tuple[RunState, Any, dict]:
        """(run state, agent, RNG states) of the last checkpoint; the agent is built from the run's config
        and its saved state loaded into it (no code from the folder runs)."""
        from sqdf_bbo import checkpoint

        folder = self.ckpt.parent
        try:
            desc, tensors = checkpoint.load(folder, "state")
            saved_world = int(checkpoint.decode(desc["world_size"], "world_size", tensors))
            if saved_world != self.world_size:
                raise CLIError(f"run folder {str(self.dir)!r} was started with {saved_world} process(es); "
                               f"resume it with {saved_world}, not {self.world_size}")
            self._check_checkpoint_identity(checkpoint.decode(desc["identity"], "identity", tensors)
                                            if "identity" in desc else None)
            st = checkpoint.decode(desc["run"], "run", tensors)
            adesc, atensors = checkpoint.load(folder, self._agent_stem(st.ckpt_id, self.rank))
            agent = self._new_agent()
            if self.agent_process is not None:  # the state goes to the agent's process, which loads it
                rng = checkpoint.decode(adesc["rng"], "rng", atensors)
                agent.load_state(adesc["agent"]["v"], {k: v for k, v in atensors.items() if k.startswith("agent.")},
                                 rng)
                own = adesc.get("harness_rng", adesc["rng"])  # the harness's own generators
                return st, agent, checkpoint.decode(own, "harness_rng" if "harness_rng" in adesc else "rng", atensors)
            if self.dp is not None:
                agent.attach_data_parallel(self.dp)
            with agent_call(self.args.method, "load_state_tree (resume)"):
                agent.load_state_tree(adesc["agent"]["v"], {k[len("agent."):] if k.startswith("agent.") else k: v
                                                            for k, v in atensors.items()})
            rng = checkpoint.decode(adesc["rng"], "rng", atensors)
        except checkpoint.CheckpointError as e:
            raise CLIError(f"cannot resume {str(self.dir)!r}: {e}") from None
        return st, agent, rng

    # -- main loop --
    def execute(self, progress: bool = True) -> dict:
        """Run (or resume) to the end: :meth:`start`, then :meth:`run_round` for every round left, then
        :meth:`finish`. Returns the final metrics (final.json). The run folder's lock is released at the end."""
        try:
            if self.args.resume and (self.dir / "final.json").exists():
                return json.loads((self.dir / "final.json").read_text())
            return self._execute(progress)
        finally:
            self.close()

    def _execute(self, progress: bool) -> dict:
        env, agent, st = self.start()
        bar = self._progress(st, agent, enabled=progress and self.rank == 0)
        for r in range(st.next_round, len(self.sizes)):
            self.run_round(r, env, agent, st, bar)
            if os.environ.get("SQDF_BBO_CRASH_AFTER_ROUND") == str(r + 1):  # test hook: simulate a kill
                bar.close()
                os._exit(17)
        bar.close()
        return self.finish(st)

    def _progress(self, st: RunState, agent, enabled: bool):
        """The progress bar in predicted seconds of work (sqdf_bbo/progress.py), its costs learned from the
        rounds recorded so far (a resumed run's too) and the units of a resumed round already done."""
        from sqdf_bbo.progress import CostModel, RoundState, RunProgress

        def count(key: str) -> Optional[int]:  # an int setting of the agent's (None: it has none)
            v = self.agent_config.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        # the optimizer steps per round (None: counted in the first round) and the proxy refit's mini-batch
        model = CostModel(self.sizes, count("updates_per_round"), self.run_cfg["n_eval"], count("proxy_batch"))
        for rec in st.rounds:
            if rec["round"] == 0:
                model.learn_pretrained(rec)
            else:
                model.learn_record(rec)
        state, spent = None, sum(rec.get("round_wall_s", 0.0) for rec in st.rounds if rec["round"] > 0)
        if st.in_round is not None:  # resumed after the round's query phase
            spent += sum(st.in_round.get("phase_wall_s", {}).values())
            n = self.sizes[st.next_round]
            model.learn_record({"round": st.next_round + 1, "round_size": n, **st.in_round},
                               phases=("propose", "query"))
            progress = getattr(agent, "round_progress", None)
            state = RoundState(propose=n, query=n,
                               steps=int(progress.get("done", 0)) if isinstance(progress, dict) else 0)
        return RunProgress(model, st.next_round, state, spent_s=spent, desc=f"{self.args.task}/{self.args.method}",
                           disable=not enabled)

    def start(self) -> tuple[Any, Any, RunState]:
        """(env, agent, state): restored from the last checkpoint on --resume, else fresh (seeds set,
        config.json and an empty journal written, round 0 = the pretrained model evaluated, checkpointed)."""
        from sqdf_bbo.envs import BudgetedOracleEnv
        from sqdf_bbo.journal import JournalError, QueryJournal
        from sqdf_bbo.trackers import make_tracker

        args, task, main = self.args, self.task, self.rank == 0
        env = BudgetedOracleEnv(task, budget=args.budget, batch_size=self.run_cfg["batch_size"], report_true=True)
        try:  # a fresh run (no checkpoint yet) starts an empty journal below
            self.journal = QueryJournal(self.dir / "journal.jsonl", load=args.resume and self.ckpt.exists())
        except JournalError as e:
            raise CLIError(str(e)) from None
        self.tracker = make_tracker(self.run_cfg["tracker"] if main else "none", self.dir, self.dir.name,
                                    {"task": args.task, "method": args.method, "budget": args.budget, "seed": args.seed,
                                     **self.agent_config})
        if args.resume and self.ckpt.exists():
            st, agent, rng = self.load_checkpoint()
            # the first step or proposal chunk after a resume saves (the time-based interval counts as
            # overdue): the work a kill threw away is secured once redone, so kills in quick succession
            # never cost the same work twice
            self._last_checkpoint_t = -math.inf
            if main and st.in_round:
                print(f"resuming round {st.in_round['round']} after its query phase"
                      + (f" at optimizer step {agent.round_progress['done']}"
                         if getattr(agent, "round_progress", None) else ""), file=sys.stderr)
            now = _git_commit()
            if main and st.code_commit and now and st.code_commit != now:
                print(f"note: checkpoint written at commit {st.code_commit[:10]}, code is at {now[:10]}; its "
                      "state matched the current code, but results may differ from an uninterrupted run",
                      file=sys.stderr)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            env.set_state(st.env)
            return env, agent, st
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        env.reset(seed=args.seed)
        if main:
            atomic_write_json(self.dir / "config.json", self.config_record())
            self.journal.reset()
        agent = self._new_agent()
        if self.dp is not None:
            if not hasattr(agent, "attach_data_parallel"):
                raise CLIError(f"method {args.method!r} does not support several processes "
                               "(it has no attach_data_parallel); launch it as one process")
            agent.attach_data_parallel(self.dp)
        st = RunState(env=env.get_state(), code_commit=_git_commit())
        t0 = time.time()
        if main:
            ev, st.reference_designs = self._evaluate(agent)
            st.rounds.append({"round": 0, "queries_used": 0, "round_size": 0, **ev,
                              "round_wall_s": time.time() - t0, "train": {}})
            self.write_logs(st)
            self.track(st)
        st.wall_s += time.time() - t0
        self.save_checkpoint(st, agent)
        return env, agent, st

    def propose(self, agent, n: int, gen: torch.Generator, st: RunState, round_no: int):
        """The round's n designs. When the agent can propose in chunks (``proposal_chunk``) they are drawn
        chunk by chunk, with a checkpoint (designs so far, generator state) whenever ``run.checkpoint_every_s``
        has passed since the last one, so a kill while sampling a large round redoes at most that much;
        a resume continues from the saved designs with the saved generator: the same designs as one call.
        Every part is checked (:func:`check_designs`) before it is kept."""
        with agent_call(self.args.method, "propose"):
            chunk = agent.proposal_chunk()
        if chunk is None or not self._checkpoint_interval_s():
            with agent_call(self.args.method, "propose"):
                designs = agent.propose(n, gen)
            return check_designs(designs, n, self.design_shape, self.args.method, "in propose")
        parts = []
        if st.proposing is not None and st.proposing["round"] == round_no:  # resumed mid-proposal
            parts = [st.proposing["designs"]]
            gen.set_state(st.proposing["generator"])
            print(f"resuming round {round_no}'s proposal at {len(parts[0])}/{n} designs", file=sys.stderr)
        done = sum(len(p) for p in parts)
        while done < n:
            m = min(chunk, n - done)
            with agent_call(self.args.method, "propose"):
                part = agent.propose(m, gen)
            part = check_designs(part, m, self.design_shape, self.args.method, "in propose")
            parts.append(part)
            done += len(part)
            if done < n and self._checkpoint_overdue():
                st.proposing = {"round": round_no, "designs": torch.cat(parts), "generator": gen.get_state()}
                self.save_checkpoint(st, agent)
        st.proposing = None
        return torch.cat(parts)

    def _checkpoint_interval_s(self) -> float:
        """``run.checkpoint_every_s``, or 0 (off) in data-parallel runs: every process must save at the same
        moment, and their clocks differ."""
        return 0.0 if self.dp is not None else float(self.run_cfg["checkpoint_every_s"])

    def _checkpoint_overdue(self) -> bool:
        """Whether the time-based checkpoint interval has passed since the last checkpoint."""
        every_s = self._checkpoint_interval_s()
        return bool(every_s) and time.monotonic() - self._last_checkpoint_t >= every_s

    def _mid_round_checkpointer(self, st: RunState, agent):
        """The agent's update_hook: a checkpoint after every ``run.checkpoint_every``-th optimizer step and
        after any step that ends when the time-based interval is overdue (an image-tier step can take
        seconds); None when both are off. Checkpoints draw no random numbers, so when they happen does not
        change the run."""
        every = int(self.run_cfg["checkpoint_every"])
        if not every and not self._checkpoint_interval_s():
            return None

        def hook(done: int) -> None:
            try:
                if (every and done % every == 0) or self._checkpoint_overdue():
                    self.save_checkpoint(st, agent)
            except Exception as e:
                e.agent_call = None  # the harness's own failure, though it surfaces inside improve()
                raise

        return hook

    def run_round(self, r: int, env, agent, st: RunState, bar) -> None:
        """Round r + 1: query phase (propose, query through the journal, observe; checkpoint), fine-tuning
        (improve, with mid-round checkpoints), evaluation and logs (process 0), checkpoint."""
        args, main, n = self.args, self.rank == 0, self.sizes[r]
        t0 = time.time()
        self._checkpoint_wall_s = 0.0
        if st.in_round is None:  # skipped when resuming after the query phase
            bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: sampling")
            gen = torch.Generator().manual_seed(args.seed * 100_003 + r + 1)
            designs = self._check_designs(self.propose(agent, n, gen, st, r + 1), n)
            bar.advance("propose", n)
            t_query = time.time()
            observed = self._query(env, designs, st, r, bar) if main else None  # process 0 alone spends budget
            if self.dp is not None:
                observed = self.dp.broadcast_object(observed)
            with agent_call(args.method, "observe"):  # the agent gets copies: it may write into them
                agent.observe(designs.clone(), torch.from_numpy(np.array(observed)))
            st.in_round = {"round": r + 1, "phase_wall_s": {"propose": t_query - t0 - self._checkpoint_wall_s,
                                                            "query": time.time() - t_query}}
            bar.query_phase_done({"round_size": n, **st.in_round})
            if main:
                st.env = env.get_state()
            self.save_checkpoint(st, agent)  # a kill from here on re-buys nothing and redoes no sampling
        phases = dict(st.in_round.get("phase_wall_s", {}))  # this process's share when resumed mid-round
        best = max(q["true"] for q in st.queries) if main else float("nan")
        bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: fine-tuning, best {best:.4g}")
        agent.update_hook = bar.step_hook(self._mid_round_checkpointer(st, agent))  # counts each step
        t_improve, ckpt_before = time.time(), self._checkpoint_wall_s
        with agent_call(args.method, "improve"):
            train_stats = dict(agent.improve() or {})
        phases["improve"] = time.time() - t_improve - (self._checkpoint_wall_s - ckpt_before)
        agent.update_hook = None
        bar.train_done()
        st.in_round = None
        st.next_round = r + 1
        st.wall_s += time.time() - t0
        if main:
            bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: evaluating, best {best:.4g}")
            t_eval = time.time()
            ev, st.last_designs = self._evaluate(agent)
            summary = curve_summary(np.array([q["true"] for q in st.queries]), args.budget)
            summary["best_observed"] = float(max(q["observed"] for q in st.queries))
            st.wall_s += time.time() - t_eval
            phases.update(evaluate=time.time() - t_eval, checkpoint=self._checkpoint_wall_s)
            from sqdf_bbo.summary import invalid_queries, round_collapsed

            # budget spent on designs failing the naturalness gate (all rounds so far, and this round)
            bad, bad_now = invalid_queries(st.queries), invalid_queries(q for q in st.queries if q["round"] == r + 1)
            gate = {} if bad is None or bad_now is None else {
                "invalid_queries": bad[0], "invalid_budget_share": bad[0] / bad[1],
                "round_invalid_share": bad_now[0] / bad_now[1]}
            st.rounds.append({"round": r + 1, "round_size": n, **summary, **gate, **ev,
                              "round_wall_s": time.time() - t0, "phase_wall_s": phases,
                              "train": {k: _num(v) for k, v in train_stats.items()}})
            st.rounds[-1]["collapsed"] = round_collapsed(st.rounds[-1], st.rounds[0], self.run_cfg["n_eval"])
            st.env = env.get_state()
            self._render(st.last_designs, st.reference_designs, r + 1)
            self.write_logs(st)
            self.track(st)
        self.save_checkpoint(st, agent)
        bar.end_round(st.rounds[-1] if main else None)  # learns the round's train and evaluation costs

    def finish(self, st: RunState) -> dict:
        """final.json (process 0; the others wait for it and read it)."""
        args = self.args
        if self.rank != 0:
            self.dp.barrier()  # process 0 writes final.json
            return json.loads((self.dir / "final.json").read_text())
        final = {"task": args.task, "method": args.method, "seed": args.seed, "budget": args.budget,
                 **{k: v for k, v in st.rounds[-1].items() if k not in ("train", "round_size")},
                 "rounds": len(self.sizes), "wall_time_s": st.wall_s, "peak_mem_mb": _peak_mem_mb(),
                 "run_dir": str(self.dir)}
        for key in ("round_wall_s", "phase_wall_s", "round_invalid_share", "collapsed"):  # per-round only
            final.pop(key, None)
        from sqdf_bbo.summary import collapsed_rounds

        final.setdefault("invalid_queries", None)  # None: the task defines no validity
        final.setdefault("invalid_budget_share", None)
        final["collapsed_rounds"] = collapsed_rounds(st.rounds, self.run_cfg["n_eval"])
        if self.world_size > 1:
            final["world_size"] = self.world_size
        atomic_write_json(self.dir / "final.json", final)
        self.tracker.close()
        if self.dp is not None:
            self.dp.barrier()
        return final

    def _query(self, env, designs: torch.Tensor, st: RunState, r: int, bar) -> np.ndarray:
        """Query the oracle through the budgeted env in batches; log every query; (n,) observed values."""
        task, n, bs = self.task, len(designs), self.run_cfg["batch_size"]
        from sqdf_bbo.journal import designs_sha256

        observed, true = [], []
        bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: querying")
        for b, i in enumerate(range(0, n, bs)):
            batch = designs[i:i + bs]
            old = self.journal.get(r + 1, b)
            if old is not None:  # answered before a kill: replay it, never ask the oracle twice
                if old["designs_sha256"] != designs_sha256(batch) or old["n"] != len(batch):
                    raise CLIError(f"resume: round {r + 1} batch {b} proposes other designs than the query journal "
                                   "records (code or settings changed since?); refusing to re-query the oracle")
                obs, tru = np.asarray(old["observed"]), np.asarray(old["true"])
                env.set_state(old["env_state"])
            else:
                info = self._step_with_retries(env, batch)
                obs = np.asarray(info["values"], dtype=np.float64)
                tru = np.asarray(info["true_values"], dtype=np.float64)  # the oracle is called once per query
                self.journal.append(r + 1, b, len(st.queries) + i, batch, obs, tru, env.get_state())
                crash = os.environ.get("SQDF_BBO_CRASH_AFTER_QUERIES")  # test hook: simulate a kill mid-round
                if crash and env.queries_used >= int(crash):
                    os._exit(17)
            observed.append(obs)
            true.append(tru)
            bar.advance("query", len(obs))
        observed, true = np.concatenate(observed), np.concatenate(true)
        extras = {k: torch.as_tensor(v).double().numpy() for k, v in task.extra_values(designs).items()}
        # the naturalness gate of each queried design (harness side; the gate is not the oracle, so no query is
        # spent): 1 valid, 0 not; no column where the task defines no validity
        valid = task.valid_mask(designs) if hasattr(task, "valid_mask") else None
        valid = None if valid is None else torch.as_tensor(valid).bool().numpy()
        start = len(st.queries)
        flat = task.design_columns(designs)
        for i in range(n):
            row = {"round": r + 1, "query_index": start + i, "observed": float(observed[i]),
                   "true": float(true[i])}
            if valid is not None:
                row["valid"] = int(valid[i])
            row.update({k: float(v[i]) for k, v in extras.items()})
            if flat is not None:
                row.update({f"x{j}": float(flat[i, j]) for j in range(flat.shape[1])})
            st.queries.append(row)
        if flat is None:  # large designs (images): kept in designs/round<k>.npy, as the task stores them
            self._save_designs(designs, r + 1)
        return observed

    def track(self, st: RunState) -> None:
        """Mirror the newest round's record (and its sample grid) to the optional tracker."""
        rec = st.rounds[-1]
        img = self.dir / "samples.png"
        self.tracker.log_round(rec, step=int(rec.get("queries_used", 0)), image=img if img.exists() else None)

    def _step_with_retries(self, env, batch: torch.Tensor) -> dict:
        """env.step, retried when the oracle itself raises (nothing is charged for a failed call)."""
        from sqdf_bbo.envs import OracleError

        tries = int(self.run_cfg["oracle_retries"]) + 1
        for attempt in range(tries):
            try:
                return env.step(batch.numpy())[4]
            except OracleError as e:
                if attempt == tries - 1:
                    raise CLIError(f"the oracle failed {tries} times on one batch ({e}); every answer so far is in "
                                   "journal.jsonl: fix the oracle and --resume") from None
                time.sleep(min(2.0 ** attempt, 30.0) * float(self.run_cfg["oracle_retry_wait_s"]))
        raise AssertionError("unreachable")

    @functools.cached_property
    def eval_reference(self):
        """The harness's own frozen pretrained backbone (Task.harness_reference), built once, process 0 only,
        before the agent (:meth:`_new_agent`) and without drawing from the global random generators (its
        weights are loaded, so the agent's random stream does not depend on when it is built)."""
        from sqdf_bbo.agents.base import DiffusionAgent

        if self.agent_process is not None:
            policy = self.agent_cls.evaluates_policy
        else:
            policy = issubclass(self.agent_cls, DiffusionAgent) and not self.agent_cls.steers_sampling
        if not policy:
            return None
        with torch.random.fork_rng(devices=[]):
            return self.task.harness_reference()

    def _evaluate(self, agent) -> tuple[dict, torch.Tensor]:
        """evaluate_policy with the harness's reference and its own copy of the agent's settings (the agent's
        in a data-parallel run, whose per-process batch sizes are the agent's)."""
        return evaluate_policy(agent, self.task, self.run_cfg["n_eval"], self._eval_gen(), self.eval_reference,
                               method=self.args.method, config=self.agent_config if self.dp is None else None)

    def _eval_gen(self) -> torch.Generator:
        # the same eval noise every round (common random numbers across rounds and methods)
        return torch.Generator().manual_seed(10_000_019 + self.args.seed)

    def _check_designs(self, designs, n: int, call: str = "in propose") -> torch.Tensor:
        """A proposal as float32 designs, checked (:func:`check_designs`)."""
        return check_designs(designs, n, self.design_shape, self.args.method, call).float()

    def _save_designs(self, designs: torch.Tensor, rnd: int) -> None:
        from sqdf_bbo.io import atomic_write_bytes

        arr = self.task.design_array(designs)
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(self.dir / "designs" / f"round{rnd}.npy", buf.getvalue())

    def _render(self, designs, reference, rnd: int) -> None:
        from sqdf_bbo.io import atomic_write_bytes

        for name in ([f"samples_round{rnd}.png"] if self.task.render_each_round else []) + ["samples.png"]:
            tmp = self.dir / f".{name}.tmp.png"
            try:
                self.task.render(designs, str(tmp), title=f"{self.args.task} / {self.args.method}, "
                                 f"after round {rnd}", reference=reference)
            except NotImplementedError:
                return
            atomic_write_bytes(self.dir / name, tmp.read_bytes())
            tmp.unlink()


def _num(v):
    try:
        f = float(v)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return v


def run_experiment(task: str, method: str = "sqdf", budget: int = 5000, seed: int = 0, out: str = "runs",
                   resume: bool = False, progress: bool = False, task_settings: Optional[dict] = None,
                   run_settings: Optional[dict] = None, **settings) -> dict:
    """Run (or with ``resume`` continue) one experiment and return its final metrics (final.json), the
    library twin of the CLI: ``settings`` are agent settings (``beta=0.1``), ``task_settings`` and
    ``run_settings`` the ``task.KEY`` / ``run.KEY`` ones. Bad values raise ValueError before any query."""
    check_budget(budget)
    check_seed(seed)
    sets = ([f"{k}={v!r}" for k, v in settings.items()] + [f"task.{k}={v!r}" for k, v in (task_settings or {}).items()]
            + [f"run.{k}={v!r}" for k, v in (run_settings or {}).items()])
    args = argparse.Namespace(task=task, method=method, budget=budget, seed=int(seed), out=str(out),
                              resume=bool(resume), sets=sets, no_progress=not progress, help_settings=False)
    return Run(args).execute(progress=progress)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.help_settings:
        try:
            print(settings_help(args.method))
        except (CLIError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        run = Run(args)  # every bad value is caught here, before any work
    except (CLIError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        final = run.execute(progress=not args.no_progress)
    except AgentEscape as e:  # the agent called sys.exit or was interrupted
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except AgentProcessError as e:  # an isolated agent failed, crashed or hung
        if e.kind != "exception":
            print(f"error: {e}", file=sys.stderr)
            return e.status
        print(f"error: method {args.method!r} raised {e.type_name}: {e} (in {e.agent_call}; every oracle answer so "
              "far is in journal.jsonl: fix the agent and --resume)", file=sys.stderr)
        return 2
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {e.strerror} while writing run folder {str(run.dir)!r}; every checkpoint and oracle answer "
              "written so far is intact: free some space, then --resume continues the run", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a user's plug-in agent failed: one line, not a traceback
        call = getattr(e, "agent_call", None)
        if ":" not in args.method or call is None:
            raise  # our own methods and the harness keep their tracebacks
        print(f"error: method {args.method!r} raised {type(e).__name__}: {e} (in {call}; every oracle answer so "
              "far is in journal.jsonl: fix the agent and --resume)", file=sys.stderr)
        return 2
    if run.rank != 0:
        return 0
    keys = ("eval_reward", "best_so_far", "path_kl", "vendi", "vendi_valid", "n_valid", "wall_time_s")
    print(json.dumps({k: final.get(k) for k in keys}), file=sys.stdout)
    print(f"run folder: {run.dir}", file=sys.stdout)
    from sqdf_bbo.summary import format_summary

    rounds = [json.loads(line) for line in (run.dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
    samples = run.dir / "samples.png"
    print(format_summary(rounds, run.run_cfg["n_eval"], args.task, args.method,
                         str(samples) if samples.exists() else None), file=sys.stdout)
    return 0


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: its typed settings resolve their annotations
    # in sqdf_bbo.run's namespace (under `python -m cProfile -m sqdf_bbo.run` this copy's namespace is not
    # registered as a module, and resolving them failed)
    from sqdf_bbo.run import main as _main

    sys.exit(_main())

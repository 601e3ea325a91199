"""The main job: one task x one method x one seed, resumable.

    python -m sqdf_bbo.run --task aesthetic --budget 5000 [--method sqdf] [--seed 0] [--out runs/]
                           [--resume] [--set key=value ...]

``--set`` keys go to the agent's config; ``task.KEY`` to the task's overrides; ``run.KEY`` to the run
settings (``rounds``, ``round_sizes``, ``n_eval``, ``batch_size``). The run folder
``<out>/<task>__<method>__b<budget>__s<seed>/`` holds config.json, rounds.jsonl (round 0 = the
pretrained model before any query), queries.csv (every design), final.json, samples.png, journal.jsonl
and checkpoint/ (safetensors + JSON, no pickle: sqdf_bbo/checkpoint.py). Every write is atomic;
``--resume`` continues from the last finished round and reproduces an uninterrupted run exactly.

Data parallelism over P processes/GPUs for one run (``sqdf_bbo.distributed``):
``accelerate launch --multi_gpu --num_processes P -m sqdf_bbo.run ...`` (or ``torchrun``). Every
process holds the model; each samples 1/P of every proposal and training batch, gradients are averaged
before each step; process 0 alone queries the oracle, evaluates and writes the run folder.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import datetime as _dt
import io
import json
import math
import os
import platform
import random
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


class CLIError(ValueError):
    """A bad command-line value; printed as one line."""


# ---- argument handling --------------------------------------------------------------------------
def _positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {s!r}")
        return v

    return parse


def _seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {s!r}")
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
    """Round sizes that sum to the budget: the official 1:2:4:8 doubling (spec §6) scaled, or explicit."""
    if explicit is not None:
        sizes = [int(s) for s in explicit]
        if any(s <= 0 for s in sizes) or sum(sizes) != budget:
            raise CLIError(f"run.round_sizes must be positive and sum to the budget {budget}, got {explicit}")
        return sizes
    if not isinstance(rounds, int) or rounds < 1:
        raise CLIError(f"run.rounds must be a positive integer, got {rounds!r}")
    if budget < rounds:
        raise CLIError(f"budget {budget} is smaller than the number of rounds {rounds}")
    w = [2.0**i for i in range(rounds)]
    sizes = [max(1, int(budget * wi / sum(w))) for wi in w]
    sizes[-1] += budget - sum(sizes)
    return sizes


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "diffusers", "peft", "botorch", "gymnasium", "transformers", "sqdf_bbo"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional packages
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


# ---- evaluation (harness side: never shown to the agent, never charged) -------------------------
def evaluate_policy(agent, task, n_eval: int, generator: torch.Generator,
                    reference: Optional[Any] = None) -> tuple[dict, torch.Tensor]:
    """Eval reward (noise-free oracle mean), path KL to the pretrained model, diversity (``vendi``, and
    ``vendi_valid`` / ``n_valid`` where the task defines validity), naturalness.

    For a diffusion policy the harness draws the evaluation trajectories itself (its own DDIM schedule and
    noise, the agent's noise predictor) and measures the path KL against ``reference``, the harness's
    own frozen pretrained backbone (``Task.harness_reference``; the agent's reference only where that is
    None): nothing the agent records or overrides enters the evaluation."""
    from sqdf_bbo.agents.base import DiffusionAgent
    from sqdf_bbo.diffusion import DDIMSchedule, path_kl, sample_trajectory
    from sqdf_bbo.metrics import diversity

    extra: dict = {}
    conds = task.eval_conditions(n_eval)  # held-out prompts (None for unconditional tiers)
    if isinstance(agent, DiffusionAgent) and not agent.steers_sampling:
        ref = reference if reference is not None else agent.reference
        sched = DDIMSchedule.from_scheduler(ref.scheduler, int(agent.config["num_steps"]), float(agent.config["eta"]))
        policy = agent.sampling_policy() if hasattr(agent, "sampling_policy") else agent.policy
        designs, kls = [], []
        bs = int(agent.config["sample_batch"])
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
        with torch.no_grad():
            designs = (agent.propose(n_eval, generator) if conds is None else
                       agent.propose(n_eval, generator, cond=conds)).detach()
        analytic = getattr(agent, "analytic_path_kl", None)
        kl = float(analytic()) if callable(analytic) else float("nan")
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


def load_agent(run_dir: str | Path, rank: int = 0):
    """The agent of a run folder at its last checkpoint, rebuilt from config.json and the saved state (for
    inspection; no code from the folder runs). ``rank`` picks a process of a data-parallel run."""
    from sqdf_bbo import checkpoint
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.distributed import SingleProcess
    from sqdf_bbo.tasks import make_task

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    task = make_task(cfg["task"], **cfg.get("task_overrides", {}))
    agent = resolve_method(cfg["method"])(task.info, dict(cfg["agent"]), cfg["seed"])
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
        self.task = make_task(args.task, **self.task_overrides)
        self.agent_cls = resolve_method(args.method)
        self.agent_config = self.agent_cls.resolve_config(self.task.info, self.agent_overrides)
        self.run_cfg = resolve_run_settings(run_overrides, self.task.info.defaults, args.budget)
        from sqdf_bbo.backbones.base import compute_dtype_for, with_execution_options

        dtype, channels_last = compute_dtype_for(self.run_cfg["precision"]), self.run_cfg["channels_last"]
        if (dtype is not None or channels_last) and self.task.info.make_backbone is not None:
            # the agents' and the harness's backbones
            self.task.info.make_backbone = with_execution_options(self.task.info.make_backbone, dtype, channels_last)
        self.sizes = round_sizes(args.budget, self.run_cfg["rounds"], self.run_cfg["round_sizes"])
        self.dir = Path(args.out) / run_folder_name(args.task, args.method, args.budget, args.seed)
        self.ckpt = self.dir / "checkpoint" / "state.json"
        self._last_checkpoint_t = time.monotonic()  # when the newest checkpoint was saved (or the run began)
        self._checkpoint_wall_s = 0.0  # seconds spent saving checkpoints in the current round
        self._check_out_dir()

    def _check_out_dir(self) -> None:
        out = Path(self.args.out)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write_probe{self.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CLIError(f"out folder {str(out)!r} is not writable ({e.strerror}); choose a writable --out") from None
        if (self.dir / "final.json").exists() and not self.args.resume:
            raise CLIError(f"run folder {str(self.dir)!r} already holds a finished run; "
                           "use --resume (a no-op) or another --out")
        if self.ckpt.exists() and not self.args.resume:
            raise CLIError(f"run folder {str(self.dir)!r} holds an unfinished run; add --resume to continue it")

    # -- persistence --
    def config_record(self) -> dict:
        return {
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
            checkpoint.save(folder, self._agent_stem(R, self.rank),
                            {"agent": agent.state_tree(), "rng": self._rng_state()})
            if self.dp is not None:
                self.dp.barrier()
            if self.rank == 0:
                checkpoint.save(folder, "state", {"run": st, "world_size": self.world_size})
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
            st = checkpoint.decode(desc["run"], "run", tensors)
            adesc, atensors = checkpoint.load(folder, self._agent_stem(st.ckpt_id, self.rank))
            agent = self.agent_cls(self.task.info, self.agent_overrides, self.args.seed)
            if self.dp is not None:
                agent.attach_data_parallel(self.dp)
            agent.load_state_tree(adesc["agent"]["v"], {k[len("agent."):] if k.startswith("agent.") else k: v
                                                        for k, v in atensors.items()})
            rng = checkpoint.decode(adesc["rng"], "rng", atensors)
        except checkpoint.CheckpointError as e:
            raise CLIError(f"cannot resume {str(self.dir)!r}: {e}") from None
        return st, agent, rng

    # -- main loop --
    def execute(self, progress: bool = True) -> dict:
        """Run (or resume) to the end: :meth:`start`, then :meth:`run_round` for every round left, then
        :meth:`finish`. Returns the final metrics (final.json)."""
        from tqdm import tqdm

        if self.args.resume and (self.dir / "final.json").exists():
            return json.loads((self.dir / "final.json").read_text())
        env, agent, st = self.start()
        bar = tqdm(total=self.args.budget, initial=len(st.queries), unit="query",
                   disable=not (progress and self.rank == 0), desc=f"{self.args.task}/{self.args.method}",
                   dynamic_ncols=True)
        for r in range(st.next_round, len(self.sizes)):
            self.run_round(r, env, agent, st, bar)
            if os.environ.get("SQDF_BBO_CRASH_AFTER_ROUND") == str(r + 1):  # test hook: simulate a kill
                bar.close()
                os._exit(17)
        bar.close()
        return self.finish(st)

    def start(self) -> tuple[Any, Any, RunState]:
        """(env, agent, state): restored from the last checkpoint on --resume, else fresh (seeds set,
        config.json and an empty journal written, round 0 = the pretrained model evaluated, checkpointed)."""
        from sqdf_bbo.envs import BudgetedOracleEnv
        from sqdf_bbo.journal import QueryJournal
        from sqdf_bbo.trackers import make_tracker

        args, task, main = self.args, self.task, self.rank == 0
        env = BudgetedOracleEnv(task, budget=args.budget, batch_size=self.run_cfg["batch_size"], report_true=True)
        self.journal = QueryJournal(self.dir / "journal.jsonl")
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
        agent = self.agent_cls(task.info, self.agent_overrides, args.seed)
        if self.dp is not None:
            if not hasattr(agent, "attach_data_parallel"):
                raise CLIError(f"method {args.method!r} does not support several processes "
                               "(it has no attach_data_parallel); launch it as one process")
            agent.attach_data_parallel(self.dp)
        st = RunState(env=env.get_state(), code_commit=_git_commit())
        t0 = time.time()
        if main:
            ev, st.reference_designs = evaluate_policy(agent, task, self.run_cfg["n_eval"], self._eval_gen(),
                                                       self.eval_reference)
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
        a resume continues from the saved designs with the saved generator: the same designs as one call."""
        chunk = agent.proposal_chunk()
        if chunk is None or not self._checkpoint_interval_s():
            return agent.propose(n, gen)
        parts = []
        if st.proposing is not None and st.proposing["round"] == round_no:  # resumed mid-proposal
            parts = [st.proposing["designs"]]
            gen.set_state(st.proposing["generator"])
            print(f"resuming round {round_no}'s proposal at {len(parts[0])}/{n} designs", file=sys.stderr)
        done = sum(len(p) for p in parts)
        while done < n:
            part = torch.as_tensor(agent.propose(min(chunk, n - done), gen)).detach().cpu()
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
            if (every and done % every == 0) or self._checkpoint_overdue():
                self.save_checkpoint(st, agent)

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
            t_query = time.time()
            observed = self._query(env, designs, st, r, bar) if main else None  # process 0 alone spends budget
            if self.dp is not None:
                observed = self.dp.broadcast_object(observed)
            agent.observe(designs, torch.from_numpy(observed))
            st.in_round = {"round": r + 1, "phase_wall_s": {"propose": t_query - t0 - self._checkpoint_wall_s,
                                                            "query": time.time() - t_query}}
            if main:
                st.env = env.get_state()
            self.save_checkpoint(st, agent)  # a kill from here on re-buys nothing and redoes no sampling
        phases = dict(st.in_round.get("phase_wall_s", {}))  # this process's share when resumed mid-round
        best = max(q["true"] for q in st.queries) if main else float("nan")
        bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: fine-tuning, best {best:.4g}")
        agent.update_hook = self._mid_round_checkpointer(st, agent)
        t_improve, ckpt_before = time.time(), self._checkpoint_wall_s
        train_stats = agent.improve() or {}
        phases["improve"] = time.time() - t_improve - (self._checkpoint_wall_s - ckpt_before)
        agent.update_hook = None
        st.in_round = None
        st.next_round = r + 1
        st.wall_s += time.time() - t0
        if main:
            bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: evaluating, best {best:.4g}")
            t_eval = time.time()
            ev, st.last_designs = evaluate_policy(agent, self.task, self.run_cfg["n_eval"], self._eval_gen(),
                                                  self.eval_reference)
            summary = curve_summary(np.array([q["true"] for q in st.queries]), args.budget)
            summary["best_observed"] = float(max(q["observed"] for q in st.queries))
            st.wall_s += time.time() - t_eval
            phases.update(evaluate=time.time() - t_eval, checkpoint=self._checkpoint_wall_s)
            st.rounds.append({"round": r + 1, "round_size": n, **summary, **ev, "round_wall_s": time.time() - t0,
                              "phase_wall_s": phases, "train": {k: _num(v) for k, v in train_stats.items()}})
            st.env = env.get_state()
            self._render(st.last_designs, st.reference_designs, r + 1)
            self.write_logs(st)
            self.track(st)
        self.save_checkpoint(st, agent)

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
        final.pop("round_wall_s", None)
        final.pop("phase_wall_s", None)
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
            bar.update(len(obs))
        observed, true = np.concatenate(observed), np.concatenate(true)
        extras = {k: torch.as_tensor(v).double().numpy() for k, v in task.extra_values(designs).items()}
        start = len(st.queries)
        flat = task.design_columns(designs)
        for i in range(n):
            row = {"round": r + 1, "query_index": start + i, "observed": float(observed[i]),
                   "true": float(true[i])}
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
        """The harness's own frozen pretrained backbone (Task.harness_reference), built once, process 0 only."""
        from sqdf_bbo.agents.base import DiffusionAgent

        if not issubclass(self.agent_cls, DiffusionAgent) or self.agent_cls.steers_sampling:
            return None
        return self.task.harness_reference()

    def _eval_gen(self) -> torch.Generator:
        # the same eval noise every round (common random numbers across rounds and methods)
        return torch.Generator().manual_seed(10_000_019 + self.args.seed)

    def _check_designs(self, designs, n: int) -> torch.Tensor:
        shape = (n, *self.task.info.design_shape)
        designs = torch.as_tensor(designs).detach().cpu()
        if tuple(designs.shape) != shape:
            raise RuntimeError(f"method {self.args.method!r} proposed designs of shape {tuple(designs.shape)}, "
                               f"expected {shape}")
        if not torch.isfinite(designs).all():
            raise RuntimeError(f"method {self.args.method!r} proposed non-finite designs")
        return designs.float()

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
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise CLIError(f"budget must be a positive integer, got {budget!r}")
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
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a user's plug-in agent failed: one line, not a traceback
        if ":" not in args.method:
            raise  # our own methods keep their tracebacks
        print(f"error: method {args.method!r} raised {type(e).__name__}: {e} (every oracle answer so far is in "
              "journal.jsonl: fix the agent and --resume)", file=sys.stderr)
        return 2
    if run.rank != 0:
        return 0
    keys = ("eval_reward", "best_so_far", "path_kl", "vendi", "vendi_valid", "n_valid", "wall_time_s")
    print(json.dumps({k: final.get(k) for k in keys}), file=sys.stdout)
    print(f"run folder: {run.dir}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: its typed settings resolve their annotations
    # in sqdf_bbo.run's namespace (under `python -m cProfile -m sqdf_bbo.run` this copy's namespace is not
    # registered as a module, and resolving them failed)
    from sqdf_bbo.run import main as _main

    sys.exit(_main())

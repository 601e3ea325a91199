"""What one run is: :class:`RunConfig` (task, method, budget, seed, folder, the three kinds of overrides, fault
injection), built once, by the command line from argv (sqdf_bbo/harness/cli.py) or by ``run_experiment`` from
its keyword arguments; the ``run.*`` settings (:class:`RunSettings`), their checks and the round sizes.

``--set`` values arrive here already parsed (:func:`parse_sets`: ``key=value`` strings to Python values);
everything below checks values, so every error is one line (:class:`CLIError`) raised before any work.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import types
from typing import Any, ClassVar, Mapping, Optional

from sqdf_bbo import settings as _settings
from sqdf_bbo.settings import setting


class CLIError(ValueError):
    """A bad command-line value; printed as one line."""


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
TIMING_KEYS = ("wall_time_s", "peak_mem_mb", "round_wall_s")
#: run settings a resumed run may change: they do not change its results (where a tracker mirrors the
#: metrics, how often checkpoints are saved, how an oracle failure is retried)
RESUME_MUTABLE = ("tracker", "checkpoint_every", "checkpoint_every_s", "oracle_retries", "oracle_retry_wait_s",
                  "isolate", "agent_timeout_s")
#: an isolated plug-in's per-call limit when run.agent_timeout_s is not set (seconds)
PLUGIN_TIMEOUT_S = 3600.0
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


def _parse_value(s: str) -> Any:
    """A ``--set`` value: a Python literal, else true/false/none/null, else the string itself."""
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        low = s.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return s


def _split(item: str, what: str) -> tuple[str, str]:
    if "=" not in item:
        raise CLIError(f"{what} expects key=value, got {item!r}")
    key, val = item.split("=", 1)
    if not key.strip():
        raise CLIError(f"{what} expects key=value, got {item!r}")
    return key.strip(), val


def parse_sets(items: list[str]) -> tuple[dict, dict, dict]:
    """['a=1', 'task.noise_std=0.5', 'run.rounds=2'] -> (agent, task, run) override dicts."""
    agent, task, run = {}, {}, {}
    for item in items:
        key, val = _split(item, "--set")
        if key.startswith("task."):
            task[key[5:]] = _parse_value(val)
        elif key.startswith("run."):
            check_run_keys([key[4:]])
            run[key[4:]] = _parse_value(val)
        else:
            agent[key] = _parse_value(val)
    return agent, task, run


def check_run_keys(run_overrides: Mapping) -> None:
    """One-line CLIError for a ``run.KEY`` that is not a run setting."""
    for k in run_overrides:
        if k not in RUN_DEFAULTS:
            raise CLIError(f"unknown run setting {k!r}; allowed: {', '.join(RUN_DEFAULTS)}")


def resolve_run_settings(overrides: dict, task_defaults: Any, budget: int) -> dict:
    """Every run setting: defaults <- the task's n_eval/batch_size (``TaskInfo.run_defaults``, or the former
    ``defaults`` dict) <- ``overrides``, typed and checked, and the round sizes; one-line CLIError naming
    ``run.KEY`` otherwise (the runner and the sweep use it)."""
    if isinstance(task_defaults, Mapping):
        n_eval, batch = task_defaults.get("n_eval"), task_defaults.get("batch_size")
    else:
        n_eval, batch = task_defaults.n_eval, task_defaults.batch_size
    base = {"n_eval": 256 if n_eval is None else n_eval, "batch_size": 64 if batch is None else batch}
    try:
        cfg = _settings.resolve(RunSettings, dict(overrides), base)
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


def run_folder_name(task: str, method: str, budget: int, seed: int) -> str:
    """``<task>__<method>__b<budget>__s<seed>``, plug-in paths made file-name safe (':' -> '.', '/' -> '_')."""
    def safe(s: str) -> str:
        return s.replace(":", ".").replace("/", "_")
    return f"{safe(task)}__{safe(method)}__b{budget}__s{seed}"


def same_value(a: Any, b: Any) -> bool:
    """Whether two setting values are equal as config.json stores them (tuples as lists, NaN as NaN)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ---- fault injection (tests of resuming) ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Simulated kills, for the tests of resuming: the process ends with ``os._exit(17)``, as abruptly as a
    SIGKILL (no cleanup, no final write), at the moment a field names; None (the default): never.

    crash_after_round: right after round k's closing checkpoint (k >= 1); crash_after_checkpoint: right after
    checkpoint number k is written (1 = round 0's; every checkpoint counts: query phases, mid-round,
    mid-proposal); crash_after_queries: in a query phase, once k oracle answers in all are journalled (the
    rest of that batch loop is lost, so a resume replays the journal). Set it through
    ``run_experiment(..., faults=FaultInjection(...))``, ``Run(RunConfig(..., faults=...))`` or the hidden
    command-line option ``--fault KEY=VALUE``."""

    crash_after_round: Optional[int] = None
    crash_after_checkpoint: Optional[int] = None
    crash_after_queries: Optional[int] = None

    EXIT_STATUS: ClassVar[int] = 17

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise CLIError(f"fault {f.name} must be an integer, got {v!r}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @classmethod
    def parse(cls, items: list[str]) -> "FaultInjection":
        """From ``['crash_after_round=2', ...]`` (the ``--fault`` option)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for item in items:
            key, val = _split(item, "--fault")
            if key not in known:
                raise CLIError(f"unknown fault {key!r}; allowed: {', '.join(sorted(known))}")
            values[key] = _parse_value(val)
        return cls(**values)

    def _kill(self) -> None:
        os._exit(self.EXIT_STATUS)

    def after_round(self, done_rounds: int, before_kill=None) -> None:
        if self.crash_after_round is not None and done_rounds == self.crash_after_round:
            if before_kill is not None:
                before_kill()
            self._kill()

    def after_checkpoint(self, ckpt_id: int) -> None:
        if self.crash_after_checkpoint is not None and ckpt_id == self.crash_after_checkpoint:
            self._kill()

    def after_queries(self, queries_used: int) -> None:
        if self.crash_after_queries is not None and queries_used >= self.crash_after_queries:
            self._kill()


# ---- the run's configuration ---------------------------------------------------------------------
def _frozen(mapping: Optional[Mapping]) -> Mapping:
    return types.MappingProxyType(dict(mapping or {}))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run, as the command line or ``run_experiment`` describes it; the run is built from this alone.

    task / method: registered names or ``package.module:object`` plug-ins; budget: oracle queries; seed; out:
    the parent folder of the run folder; resume: continue the run folder's run; progress: show the progress
    bar; agent_overrides / task_overrides / run_overrides: the ``--set KEY``, ``task.KEY`` and ``run.KEY``
    values (read-only mappings of parsed values); faults: :class:`FaultInjection` (tests); command: the
    command line config.json records (None: this process's own arguments). Budget, seed and the run keys
    are checked here (one-line :class:`CLIError`); every other value when the run is built."""

    task: str = "aesthetic"
    method: str = "sqdf"
    budget: int = 5000
    seed: int = 0
    out: str = "runs"
    resume: bool = False
    progress: bool = True
    agent_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    run_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    faults: FaultInjection = dataclasses.field(default_factory=FaultInjection)
    command: Optional[str] = dataclasses.field(default=None, compare=False)  # provenance, not the run

    def __post_init__(self):
        check_budget(self.budget)
        check_seed(self.seed)
        check_run_keys(self.run_overrides)
        for name in ("agent_overrides", "task_overrides", "run_overrides"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "out", str(self.out))
        if self.faults is None:
            object.__setattr__(self, "faults", FaultInjection())

    @classmethod
    def from_namespace(cls, args, command: Optional[str] = None) -> "RunConfig":
        """From the command line's parsed arguments (sqdf_bbo/harness/cli.py ``build_parser``)."""
        agent, task, run = parse_sets(list(getattr(args, "sets", None) or []))
        faults = FaultInjection.parse(list(getattr(args, "faults", None) or []))
        return cls(task=args.task, method=args.method, budget=args.budget, seed=args.seed, out=str(args.out),
                   resume=bool(args.resume), progress=not getattr(args, "no_progress", False),
                   agent_overrides=agent, task_overrides=task, run_overrides=run, faults=faults, command=command)

    @property
    def folder_name(self) -> str:
        return run_folder_name(self.task, self.method, self.budget, self.seed)

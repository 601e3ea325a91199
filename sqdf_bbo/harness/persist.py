"""The run folder on disk: its lock, the records the run writes (config.json's provenance, queries.csv,
rounds.jsonl, sample grids, designs/), the checkpoint files' names and the agent state in them, and
:func:`load_agent` (an agent rebuilt from a folder, for inspection). Every write is atomic
(sqdf_bbo/io.py); checkpoints are safetensors + JSON, no pickle (sqdf_bbo/checkpoint.py).
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import platform
import random
import resource
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sqdf_bbo.harness.config import CLIError, RunConfig
from sqdf_bbo.io import atomic_write_json, atomic_write_text


# ---- provenance ---------------------------------------------------------------------------------
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


# ---- checkpoint files ---------------------------------------------------------------------------
def rng_state() -> dict:
    """This process's global generators (torch, numpy, python), as a checkpoint stores them."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def agent_stem(ckpt_id: int, rank: int) -> str:
    """The file stem of process ``rank``'s agent state in checkpoint ``ckpt_id``."""
    return f"agent_rank{rank}_ckpt{ckpt_id}"


def remove_older_agent_states(folder: Path, rank: int, keep: str) -> None:
    """Delete process ``rank``'s agent files of every checkpoint but ``keep`` (a stem)."""
    from sqdf_bbo import checkpoint

    for old in folder.glob(f"agent_rank{rank}_ckpt*.json"):
        if old.stem != keep:
            checkpoint.remove(folder, old.stem)


# ---- the folder ---------------------------------------------------------------------------------
class RunFolder:
    """``<out>/<task>__<method>__b<budget>__s<seed>/`` as one process (``rank``) of the run sees it."""

    def __init__(self, config: RunConfig, rank: int = 0):
        self.config = config
        self.rank = rank
        self.path = Path(config.out) / config.folder_name
        self.checkpoint_dir = self.path / "checkpoint"
        self.state_file = self.checkpoint_dir / "state.json"  # the newest checkpoint's run state
        self._lock = None

    def saved_config(self) -> Optional[dict]:
        """config.json of the folder (None if there is none), after checking that it is this run's."""
        path = self.path / "config.json"
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot resume: {path} is unreadable ({e})") from None
        if not isinstance(saved, dict):
            raise CLIError(f"cannot resume: {path} is not a run's config")
        for key in ("task", "method", "budget", "seed"):
            if saved.get(key) != getattr(self.config, key):
                raise CLIError(f"cannot resume: {path} records {key} {saved.get(key)!r}, not "
                               f"{getattr(self.config, key)!r} (a renamed or copied run folder?)")
        return saved

    def open(self) -> None:
        """Create the folder, check it is writable, take its lock (process 0) and refuse a folder that holds a
        finished run or an unfinished one without ``resume``."""
        out = Path(self.config.out)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write_probe{self.rank}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise CLIError(f"out folder {str(out)!r} is not writable ({e.strerror}); choose a writable --out") from None
        if self.rank == 0:
            self.acquire_lock()
        if (self.path / "final.json").exists() and not self.config.resume:
            self.release_lock()
            raise CLIError(f"run folder {str(self.path)!r} already holds a finished run; "
                           "use --resume (a no-op) or another --out")
        if self.state_file.exists() and not self.config.resume:
            self.release_lock()
            raise CLIError(f"run folder {str(self.path)!r} holds an unfinished run; add --resume to continue it")

    def acquire_lock(self) -> None:
        """An exclusive lock on ``<run folder>/.lock`` (fcntl.flock), held until :meth:`release_lock` or the
        process ends: a second process on the same run folder refuses instead of paying the oracle twice."""
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise CLIError(f"run folder {str(self.path)!r} is in use by another process"
                           + (f" (pid {holder})" if holder.isdigit() else "")
                           + "; wait for it to end (or stop it) before running or resuming it here") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- records --
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def write_logs(self, queries: list, rounds: list) -> None:
        """queries.csv (one row per query) and rounds.jsonl (one line per finished round)."""
        atomic_write_text(self.path / "queries.csv", rows_csv(queries))
        atomic_write_text(self.path / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in rounds))

    def save_designs(self, task, designs: torch.Tensor, rnd: int) -> None:
        """designs/round<rnd>.npy: designs without queries.csv columns, as the task stores them."""
        from sqdf_bbo.io import atomic_write_bytes

        arr = task.design_array(designs)
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(self.path / "designs" / f"round{rnd}.npy", buf.getvalue())

    def render(self, task, designs, reference, rnd: int, title: str) -> None:
        """samples.png (and samples_round<rnd>.png where the task keeps every round's grid); nothing for a
        task that draws no pictures."""
        from sqdf_bbo.io import atomic_write_bytes

        for name in ([f"samples_round{rnd}.png"] if task.render_each_round else []) + ["samples.png"]:
            tmp = self.path / f".{name}.tmp.png"
            try:
                task.render(designs, str(tmp), title=title, reference=reference)
            except NotImplementedError:
                return
            atomic_write_bytes(self.path / name, tmp.read_bytes())
            tmp.unlink()


def rows_csv(rows: list[dict]) -> str:
    """CSV text of dict rows as ``pandas.DataFrame(rows).to_csv(index=False)`` writes it for the rows the
    runner logs (int, float, str values): the union of the keys in first-seen order, floats in shortest
    round-trip form, NaN, None and missing keys as empty fields. Written with the csv module: importing
    pandas for this would cost a quarter of a second of every run's start-up."""
    cols = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(cols)
    for row in rows:
        out.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                      for v in (row.get(c) for c in cols)])
    return buf.getvalue()


def config_record(config: RunConfig, run_cfg: dict, sizes: list, agent_config: dict, task_overrides: dict, task,
                  agent_cls, world_size: int, command: str) -> dict:
    """The run's config.json: task, method, budget, seed, the resolved run, agent and task settings, the round
    sizes, the task's public facts, then its protocol id (sqdf_bbo/protocol.py), the code's commit and package
    versions, the command and the machine."""
    import datetime as _dt

    from sqdf_bbo import protocol

    rec = {
        "task": config.task, "method": config.method, "budget": config.budget,
        "seed": config.seed, "run": run_cfg, "round_sizes": sizes,
        "agent": agent_config, "task_overrides": task_overrides,
        "task_info": {"tier": task.info.tier, "design_shape": list(task.info.design_shape),
                      "noise_std": task.noise_std, "optimal_value": task.optimal_value},
        **({"world_size": world_size} if world_size > 1 else {}),
        "versions": _versions(), "git_commit": _git_commit(), "command": command,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # where the agent runs (isolation) is one of protocol.NON_RESULT_RUN_SETTINGS: not part of the id
    return {**rec, **protocol.run_protocol(rec, task, agent_cls), **protocol.machine_record()}


def check_identity(saved: Optional[dict], mine: dict, run_dir: Path) -> None:
    """Refuse (CLIError, one line) a checkpoint whose recorded identity ``saved`` is not this run's ``mine``:
    another task, method, budget, seed or settings hash, or none recorded."""
    where = f"cannot resume {str(run_dir)!r}: its checkpoint"
    if not isinstance(saved, dict):
        raise CLIError(f"{where} records no run identity (written before sqdf-bbo recorded one); finish the run "
                       "with the version that started it, or start over")
    for key in ("task", "method", "budget", "seed"):
        if saved.get(key) != mine[key]:
            raise CLIError(f"{where} belongs to a run with {key} {saved.get(key)!r}, this run has {key} "
                           f"{mine[key]!r} (a copied checkpoint?)")
    if saved.get("settings_sha256") != mine["settings_sha256"]:
        raise CLIError(f"{where} was written with other settings than config.json holds (an edited config.json "
                       "or a copied checkpoint?)")


def load_agent(run_dir: str | Path, rank: int = 0, allow_import: bool = False):
    """The agent of a run folder at its last checkpoint, rebuilt from config.json and the saved state (for
    inspection). ``rank`` picks a process of a data-parallel run. Only registered task and method names are
    built: a ``package.module:object`` that config.json names is imported (which runs its code) only with
    ``allow_import=True``, for folders you trust; otherwise ValueError."""
    from sqdf_bbo import checkpoint
    from sqdf_bbo.agents import resolve_method
    from sqdf_bbo.distributed import SingleProcess, join
    from sqdf_bbo.registry import method_names
    from sqdf_bbo.tasks import list_tasks, make_task

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    for kind, name, known in (("task", cfg.get("task"), list_tasks()), ("method", cfg.get("method"), method_names())):
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
        join(agent, view)
    desc, _ = checkpoint.load(run_dir / "checkpoint", "state")
    c = int(checkpoint.decode(desc["run"]["v"]["ckpt_id"], "run.ckpt_id", {}))  # RunState.ckpt_id
    adesc, tensors = checkpoint.load(run_dir / "checkpoint", agent_stem(c, rank))
    agent.load_state_tree(adesc["agent"]["v"], {k[len("agent."):]: v for k, v in tensors.items()
                                                if k.startswith("agent.")})
    return agent

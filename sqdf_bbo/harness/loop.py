"""The resumable round loop: :class:`Run` (built from a :class:`~sqdf_bbo.harness.config.RunConfig`) and
:func:`run_experiment`, the library entry point.

A run: round 0 evaluates the pretrained model; each round then proposes designs (the agent), queries the
oracle through the budgeted environment and the hash-chained journal, hands the answers to the agent,
lets it improve (with mid-round checkpoints through :class:`~sqdf_bbo.harness.callbacks.StepCallback`),
evaluates (process 0) and checkpoints. A kill at any moment resumes (``resume=True``) to the result of an
uninterrupted run; a resumed run takes every setting from its config.json and refuses others.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sqdf_bbo.checkpoint import checkpointable
from sqdf_bbo.harness.callbacks import PhaseTimer, RunCallbacks, StepCallback
from sqdf_bbo.harness.config import (PLUGIN_TIMEOUT_S, RESUME_MUTABLE, RUN_DEFAULTS, CLIError, RunConfig,
                                     resolve_run_settings, round_sizes, same_value)
from sqdf_bbo.harness.evaluate import curve_summary, evaluate_policy
from sqdf_bbo.harness.guard import agent_call, check_designs
from sqdf_bbo import distributed
from sqdf_bbo.harness import persist


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


# checkpoints name the class "sqdf_bbo.run.RunState" (where it was defined before sqdf_bbo/harness/): kept, so
# checkpoints of either version load in the other
RunState.__module__ = "sqdf_bbo.run"
checkpointable(RunState)


def _num(v):
    try:
        f = float(v)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return v


class Run:
    """State of one run; :meth:`execute` runs (or resumes) it to completion.

    ``config``: a :class:`RunConfig` (an ``argparse.Namespace`` of the command line's parser is converted);
    ``callbacks``: a :class:`~sqdf_bbo.harness.callbacks.RunCallbacks` told of every phase and its time."""

    def __init__(self, config: RunConfig | argparse.Namespace, callbacks: Optional[RunCallbacks] = None):
        from sqdf_bbo.distributed import data_parallel_from_env
        from sqdf_bbo.tasks import make_task

        if isinstance(config, argparse.Namespace):
            config = RunConfig.from_namespace(config)
        self.config = config
        self.phase = PhaseTimer(callbacks)
        self.faults = config.faults
        self.dp = data_parallel_from_env()  # None unless launched as several processes
        self.rank = 0 if self.dp is None else self.dp.rank
        self.world_size = 1 if self.dp is None else self.dp.world_size
        self.agent_overrides, self.task_overrides = dict(config.agent_overrides), dict(config.task_overrides)
        run_overrides = dict(config.run_overrides)
        self.folder = persist.RunFolder(config, self.rank)
        self.dir = self.folder.path
        self.agent_process = None  # sqdf_bbo.agent_process.AgentProcess of an isolated agent
        saved = self.folder.saved_config() if config.resume else None
        if saved is not None:  # a resumed run takes its settings from its own config.json
            self._check_task_overrides(saved)
            self.task_overrides = dict(saved.get("task_overrides") or {})
        try:
            self.task = make_task(config.task, **self.task_overrides)
        except TypeError as e:  # a built-in factory given a value of the wrong type
            raise CLIError(f"task {config.task!r}: {e}") from None
        noise = getattr(self.task, "noise_std", 0.0)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (math.isfinite(noise) and noise >= 0):
            raise CLIError(f"task {config.task!r} has noise_std={noise!r}; it must be a finite number >= 0")
        self.design_shape = tuple(int(s) for s in self.task.info.design_shape)  # the harness's own copy
        self.run_cfg = resolve_run_settings(run_overrides, self.task.info.run_defaults, config.budget)
        isolate = self._isolation(run_overrides, saved)
        try:
            self._init_agent_and_folder(saved, run_overrides, isolate)
        except BaseException:
            self.close()
            raise

    @property
    def args(self) -> RunConfig:
        """The run's :class:`RunConfig` (its former name: the command line's arguments)."""
        return self.config

    def _isolation(self, run_overrides: dict, saved: Optional[dict]) -> bool:
        """Whether the agent runs in its own process: run.isolate as given (or as the resumed run's config.json
        records it), else on for a package.module:Class plug-in and off for a built-in method."""
        given = run_overrides.get("isolate", (saved or {}).get("run", {}).get("isolate"))
        if given is None:
            return ":" in self.config.method
        return bool(self.run_cfg["isolate"] if "isolate" in run_overrides else given)

    def _agent_timeout(self) -> Optional[float]:
        t = self.run_cfg["agent_timeout_s"]
        if t is None:
            return PLUGIN_TIMEOUT_S if ":" in self.config.method else None
        return float(t) or None

    def _init_agent_and_folder(self, saved: Optional[dict], run_overrides: dict, isolate: bool) -> None:
        from sqdf_bbo.agents import resolve_method

        config = self.config
        if isolate:
            from sqdf_bbo import agent_process

            if self.dp is not None:
                raise CLIError("run.isolate=true runs the agent in one child process; launch the run as one process")
            hidden = [str(self.dir.resolve()), str(Path(config.out).resolve()), self.dir.name]
            try:
                self.agent_cls = agent_process.start(config.method, self.task.info, hidden, self._agent_timeout())
            except agent_process.AgentProcessError as e:
                raise CLIError(str(e) if e.kind != "exception" else
                               f"cannot start method {config.method!r}: {e.type_name}: {e}") from None
            self.agent_process = self.agent_cls.proc
        else:
            self.agent_cls = resolve_method(config.method)
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
        self.sizes = round_sizes(config.budget, self.run_cfg["rounds"], self.run_cfg["round_sizes"])
        if saved is not None and saved.get("round_sizes", self.sizes) != self.sizes:
            raise CLIError(f"--resume: the round sizes {self.sizes} differ from the run's config.json "
                           f"({saved['round_sizes']}); the code that computes them changed since the run started")
        self.ckpt = self.folder.state_file
        self._last_checkpoint_t = time.monotonic()  # when the newest checkpoint was saved (or the run began)
        self._checkpoint_wall_s = 0.0  # seconds spent saving checkpoints in the current round
        self.folder.open()

    # -- resuming: the run folder's own settings --
    def _refuse_change(self, key: str, new: Any, old: Any) -> None:
        raise CLIError(f"--resume: {key}={new!r} differs from the run's config.json ({key}={old!r}); a resumed run "
                       "keeps the settings it started with (drop that --set, or start a new run in another --out)")

    def _check_task_overrides(self, saved: dict) -> None:
        old = saved.get("task_overrides") or {}
        for k, v in self.task_overrides.items():
            if k not in old or not same_value(v, old[k]):
                self._refuse_change(f"task.{k}", v, old.get(k, "<not set: the task's default>"))

    def _adopt_saved_settings(self, saved: dict, run_overrides: dict) -> None:
        """Refuse any --set that differs from config.json (except :data:`RESUME_MUTABLE` run settings), then
        take every setting from config.json."""
        old_agent, old_run = saved.get("agent") or {}, saved.get("run") or {}
        for k in self.agent_overrides:
            if k not in old_agent or not same_value(self.agent_config[k], old_agent[k]):
                self._refuse_change(k, self.agent_config[k], old_agent.get(k, "<not set>"))
        for k in run_overrides:
            if k not in RESUME_MUTABLE and (k not in old_run or not same_value(self.run_cfg[k], old_run[k])):
                self._refuse_change(f"run.{k}", self.run_cfg[k], old_run.get(k, "<not set>"))
        self.agent_overrides = dict(old_agent)
        self.agent_config = self.agent_cls.resolve_config(self.task.info, self.agent_overrides)
        run = {k: v for k, v in old_run.items() if k in RUN_DEFAULTS}
        run.update({k: v for k, v in run_overrides.items() if k in RESUME_MUTABLE})
        self.run_cfg = resolve_run_settings(run, self.task.info.run_defaults, self.config.budget)

    def identity(self) -> dict:
        """What a checkpoint must belong to: task, method, budget, seed and a digest of every setting that can
        change the results (all but :data:`RESUME_MUTABLE`)."""
        settings = {"agent": self.agent_config, "task_overrides": self.task_overrides, "round_sizes": self.sizes,
                    "run": {k: v for k, v in self.run_cfg.items() if k not in RESUME_MUTABLE}}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        return {"task": self.config.task, "method": self.config.method, "budget": self.config.budget,
                "seed": self.config.seed, "settings_sha256": digest}

    def close(self) -> None:
        """Stop an isolated agent's process; release the run folder's lock (the process's end releases it too)."""
        if getattr(self, "agent_process", None) is not None:
            self.agent_process.close()
            self.agent_process = None
        if getattr(self, "folder", None) is not None:
            self.folder.release_lock()

    # -- persistence --
    def config_record(self) -> dict:
        """config.json: the run's settings, its protocol id (sqdf_bbo/protocol.py), commit, versions, machine."""
        c = self.config
        command = c.command if c.command is not None else "python -m sqdf_bbo.run " + " ".join(sys.argv[1:])
        return persist.config_record(c, self.run_cfg, self.sizes, self.agent_config, self.task_overrides, self.task,
                                     self.agent_cls, self.world_size, command)

    def write_logs(self, st: RunState) -> None:
        with self.phase("logs"):
            self.folder.write_logs(st.queries, st.rounds)

    def save_checkpoint(self, st: RunState, agent) -> None:
        """checkpoint/agent_rank{r}_ckpt{c}.{json,safetensors} (each process's agent and RNG states) first,
        then checkpoint/state.{json,safetensors} (the run state naming checkpoint c, by process 0) last, then
        the older agent files go: a kill at any moment leaves a consistent last checkpoint. No pickle
        (sqdf_bbo/checkpoint.py). Called at round ends, after each round's query phase and, in agents whose
        improve() reports progress, every ``run.checkpoint_every`` steps or ``run.checkpoint_every_s`` seconds."""
        from sqdf_bbo import checkpoint

        with self.phase("checkpoint"):
            t_start = time.monotonic()
            folder = self.ckpt.parent
            st.ckpt_id = R = st.ckpt_id + 1
            stem = persist.agent_stem(R, self.rank)
            try:
                if self.agent_process is not None:  # the agent's process encodes its state; the harness writes it
                    desc, tensors = agent.encoded_state()
                    if set(desc) != {"agent", "rng"} or not all(k.startswith(("agent", "rng")) for k in tensors):
                        raise checkpoint.CheckpointError(f"the process of method {self.config.method!r} sent a state "
                                                         "with entries other than its own")
                    desc["harness_rng"] = checkpoint.encode(persist.rng_state(), "harness_rng", tensors)
                    checkpoint.save_encoded(folder, stem, desc, tensors)
                else:
                    with agent_call(self.config.method, "state_tree (checkpoint)"):
                        tree = agent.state_tree()
                    checkpoint.save(folder, stem, {"agent": tree, "rng": persist.rng_state()})
                if self.dp is not None:
                    self.dp.barrier()
                if self.rank == 0:
                    checkpoint.save(folder, "state", {"run": st, "world_size": self.world_size,
                                                      "identity": self.identity()})
                if self.dp is not None:
                    self.dp.barrier()
            except checkpoint.CheckpointError as e:
                raise CLIError(f"cannot checkpoint the run: {e}") from None
            persist.remove_older_agent_states(folder, self.rank, stem)
            self._last_checkpoint_t = time.monotonic()
            self._checkpoint_wall_s += self._last_checkpoint_t - t_start
        self.faults.after_checkpoint(R)  # tests: a kill right after it

    def _new_agent(self):
        """The agent, built after the harness's own reference and evaluation objects, from a copy of the task
        description (TaskInfo.agent_copy): nothing it writes into reaches the harness."""
        if self.rank == 0:
            self.eval_reference  # noqa: B018 - built now, before (and apart from) the agent
        if self.agent_process is not None:
            from sqdf_bbo.agent_process import IsolatedAgent

            if self.agent_cls.evaluates_policy and self.eval_reference is None:
                raise CLIError(f"task {self.config.task!r} has no harness-side reference backbone "
                               "(Task.harness_reference), which an isolated diffusion agent's evaluation needs; "
                               "run it with run.isolate=false (in this process: trusted code only)")
            agent = IsolatedAgent(self.agent_process, self.agent_cls.describe, dict(self.agent_config),
                                  reference=self.eval_reference)
            agent.build(dict(self.agent_overrides), self.config.seed, self._exec_options)
            return agent
        with agent_call(self.config.method, "__init__"):
            return self.agent_cls(self.task.info.agent_copy(), dict(self.agent_overrides), self.config.seed)

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
            persist.check_identity(checkpoint.decode(desc["identity"], "identity", tensors)
                                   if "identity" in desc else None, self.identity(), self.dir)
            st = checkpoint.decode(desc["run"], "run", tensors)
            adesc, atensors = checkpoint.load(folder, persist.agent_stem(st.ckpt_id, self.rank))
            agent = self._new_agent()
            if self.agent_process is not None:  # the state goes to the agent's process, which loads it
                rng = checkpoint.decode(adesc["rng"], "rng", atensors)
                agent.load_state(adesc["agent"]["v"], {k: v for k, v in atensors.items() if k.startswith("agent.")},
                                 rng)
                own = adesc.get("harness_rng", adesc["rng"])  # the harness's own generators
                return st, agent, checkpoint.decode(own, "harness_rng" if "harness_rng" in adesc else "rng", atensors)
            if self.dp is not None:
                distributed.join(agent, self.dp)
            with agent_call(self.config.method, "load_state_tree (resume)"):
                agent.load_state_tree(adesc["agent"]["v"], {k[len("agent."):] if k.startswith("agent.") else k: v
                                                            for k, v in atensors.items()})
            rng = checkpoint.decode(adesc["rng"], "rng", atensors)
        except checkpoint.CheckpointError as e:
            raise CLIError(f"cannot resume {str(self.dir)!r}: {e}") from None
        return st, agent, rng

    # -- main loop --
    def execute(self, progress: Optional[bool] = None) -> dict:
        """Run (or resume) to the end: :meth:`start`, then :meth:`run_round` for every round left, then
        :meth:`finish`. Returns the final metrics (final.json). ``progress``: show the progress bar (default:
        the config's). The run folder's lock is released at the end."""
        try:
            if self.config.resume and (self.dir / "final.json").exists():
                return self.folder.read_json("final.json")
            return self._execute(self.config.progress if progress is None else progress)
        finally:
            self.close()

    def _execute(self, progress: bool) -> dict:
        env, agent, st = self.start()
        bar = self._progress(st, agent, enabled=progress and self.rank == 0)
        for r in range(st.next_round, len(self.sizes)):
            self.run_round(r, env, agent, st, bar)
            self.faults.after_round(r + 1, before_kill=bar.close)  # tests: a kill after the round
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
        return RunProgress(model, st.next_round, state, spent_s=spent, desc=f"{self.config.task}/{self.config.method}",
                           disable=not enabled)

    def start(self) -> tuple[Any, Any, RunState]:
        """(env, agent, state): restored from the last checkpoint on --resume, else fresh (seeds set,
        config.json and an empty journal written, round 0 = the pretrained model evaluated, checkpointed)."""
        import random

        from sqdf_bbo.envs import BudgetedOracleEnv
        from sqdf_bbo.journal import JournalError, QueryJournal
        from sqdf_bbo.trackers import make_tracker

        c, task, main = self.config, self.task, self.rank == 0
        env = BudgetedOracleEnv(task, budget=c.budget, batch_size=self.run_cfg["batch_size"], report_true=True)
        try:  # a fresh run (no checkpoint yet) starts an empty journal below
            self.journal = QueryJournal(self.dir / "journal.jsonl", load=c.resume and self.ckpt.exists())
        except JournalError as e:
            raise CLIError(str(e)) from None
        self.tracker = make_tracker(self.run_cfg["tracker"] if main else "none", self.dir, self.dir.name,
                                    {"task": c.task, "method": c.method, "budget": c.budget, "seed": c.seed,
                                     **self.agent_config})
        if c.resume and self.ckpt.exists():
            st, agent, rng = self.load_checkpoint()
            # the first step or proposal chunk after a resume saves (the time-based interval counts as
            # overdue): the work a kill threw away is secured once redone, so kills in quick succession
            # never cost the same work twice
            self._last_checkpoint_t = -math.inf
            if main and st.in_round:
                print(f"resuming round {st.in_round['round']} after its query phase"
                      + (f" at optimizer step {agent.round_progress['done']}"
                         if getattr(agent, "round_progress", None) else ""), file=sys.stderr)
            now = persist._git_commit()
            if main and st.code_commit and now and st.code_commit != now:
                print(f"note: checkpoint written at commit {st.code_commit[:10]}, code is at {now[:10]}; its "
                      "state matched the current code, but results may differ from an uninterrupted run",
                      file=sys.stderr)
            persist.set_rng_state(rng)
            env.set_state(st.env)
            return env, agent, st
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        random.seed(c.seed)
        env.reset(seed=c.seed)
        if main:
            self.folder.write_json("config.json", self.config_record())
            self.journal.reset()
        agent = self._new_agent()
        if self.dp is not None:
            if not distributed.supports(agent):
                raise CLIError(f"method {c.method!r} does not support several processes "
                               "(it has no PER_PROCESS_KEYS / setup_data_parallel); launch it as one process")
            distributed.join(agent, self.dp)
        st = RunState(env=env.get_state(), code_commit=persist._git_commit())
        t0 = time.time()
        if main:
            with self.phase("evaluate"):
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
        method = self.config.method
        with agent_call(method, "propose"):
            chunk = agent.proposal_chunk()
        if chunk is None or not self._checkpoint_interval_s():
            with agent_call(method, "propose"):
                designs = agent.propose(n, gen)
            return check_designs(designs, n, self.design_shape, method, "in propose")
        parts = []
        if st.proposing is not None and st.proposing["round"] == round_no:  # resumed mid-proposal
            parts = [st.proposing["designs"]]
            gen.set_state(st.proposing["generator"])
            print(f"resuming round {round_no}'s proposal at {len(parts[0])}/{n} designs", file=sys.stderr)
        done = sum(len(p) for p in parts)
        while done < n:
            m = min(chunk, n - done)
            with agent_call(method, "propose"):
                part = agent.propose(m, gen)
            part = check_designs(part, m, self.design_shape, method, "in propose")
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
        """The runner's listener on the agent's optimizer steps: a checkpoint after every
        ``run.checkpoint_every``-th step and after any step that ends when the time-based interval is overdue
        (an image-tier step can take seconds); None when both are off. Checkpoints draw no random numbers, so
        when they happen does not change the run."""
        every = int(self.run_cfg["checkpoint_every"])
        if not every and not self._checkpoint_interval_s():
            return None

        def checkpoint_if_due(done: int) -> None:
            try:
                if (every and done % every == 0) or self._checkpoint_overdue():
                    self.save_checkpoint(st, agent)
            except Exception as e:
                e.agent_call = None  # the harness's own failure, though it surfaces inside improve()
                raise

        return checkpoint_if_due

    def run_round(self, r: int, env, agent, st: RunState, bar) -> None:
        """Round r + 1: query phase (propose, query through the journal, observe; checkpoint), fine-tuning
        (improve, with mid-round checkpoints), evaluation and logs (process 0), checkpoint."""
        c, main, n = self.config, self.rank == 0, self.sizes[r]
        t0 = time.time()
        self._checkpoint_wall_s = 0.0
        if st.in_round is None:  # skipped when resuming after the query phase
            bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: sampling")
            gen = torch.Generator().manual_seed(c.seed * 100_003 + r + 1)
            with self.phase("propose"):
                designs = self._check_designs(self.propose(agent, n, gen, st, r + 1), n)
            bar.advance("propose", n)
            t_query = time.time()
            with self.phase("query"):
                observed = self._query(env, designs, st, r, bar) if main else None  # process 0 alone spends budget
                if self.dp is not None:
                    observed = self.dp.broadcast_object(observed)
            with self.phase("observe"), agent_call(c.method, "observe"):  # the agent gets copies: it may write into them
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
        # the agent reports each optimizer step: the bar counts it, the checkpointer may save
        agent.step_callback = StepCallback.of(bar.step_hook(self._mid_round_checkpointer(st, agent)))
        t_improve, ckpt_before = time.time(), self._checkpoint_wall_s
        try:
            with self.phase("improve"), agent_call(c.method, "improve"):
                train_stats = dict(agent.improve() or {})
        finally:
            agent.step_callback = None
        phases["improve"] = time.time() - t_improve - (self._checkpoint_wall_s - ckpt_before)
        bar.train_done()
        st.in_round = None
        st.next_round = r + 1
        st.wall_s += time.time() - t0
        if main:
            bar.set_postfix_str(f"round {r + 1}/{len(self.sizes)}: evaluating, best {best:.4g}")
            t_eval = time.time()
            with self.phase("evaluate"):
                ev, st.last_designs = self._evaluate(agent)
            summary = curve_summary(np.array([q["true"] for q in st.queries]), c.budget)
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
        c = self.config
        if self.rank != 0:
            self.dp.barrier()  # process 0 writes final.json
            return self.folder.read_json("final.json")
        final = {"task": c.task, "method": c.method, "seed": c.seed, "budget": c.budget,
                 **{k: v for k, v in st.rounds[-1].items() if k not in ("train", "round_size")},
                 "rounds": len(self.sizes), "wall_time_s": st.wall_s, "peak_mem_mb": persist._peak_mem_mb(),
                 "run_dir": str(self.dir)}
        for key in ("round_wall_s", "phase_wall_s", "round_invalid_share", "collapsed"):  # per-round only
            final.pop(key, None)
        from sqdf_bbo.summary import collapsed_rounds

        final.setdefault("invalid_queries", None)  # None: the task defines no validity
        final.setdefault("invalid_budget_share", None)
        final["collapsed_rounds"] = collapsed_rounds(st.rounds, self.run_cfg["n_eval"])
        if self.world_size > 1:
            final["world_size"] = self.world_size
        self.folder.write_json("final.json", final)
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
                self.faults.after_queries(env.queries_used)  # tests: a kill mid-round
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
            self.folder.save_designs(task, designs, r + 1)
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
                               method=self.config.method, config=self.agent_config if self.dp is None else None)

    def _eval_gen(self) -> torch.Generator:
        # the same eval noise every round (common random numbers across rounds and methods)
        return torch.Generator().manual_seed(10_000_019 + self.config.seed)

    def _check_designs(self, designs, n: int, call: str = "in propose") -> torch.Tensor:
        """A proposal as float32 designs, checked (:func:`check_designs`)."""
        return check_designs(designs, n, self.design_shape, self.config.method, call).float()

    def _render(self, designs, reference, rnd: int) -> None:
        with self.phase("render"):
            self.folder.render(self.task, designs, reference, rnd,
                               f"{self.config.task} / {self.config.method}, after round {rnd}")


def run_experiment(task: str, method: str = "sqdf", budget: int = 5000, seed: int = 0, out: str = "runs",
                   resume: bool = False, progress: bool = False, task_settings: Optional[dict] = None,
                   run_settings: Optional[dict] = None, faults=None, callbacks: Optional[RunCallbacks] = None,
                   **settings) -> dict:
    """Run (or with ``resume`` continue) one experiment and return its final metrics (final.json), the
    library twin of the CLI: ``settings`` are agent settings (``beta=0.1``), ``task_settings`` and
    ``run_settings`` the ``task.KEY`` / ``run.KEY`` ones; ``faults``: a
    :class:`~sqdf_bbo.harness.config.FaultInjection` (tests); ``callbacks``: a
    :class:`~sqdf_bbo.harness.callbacks.RunCallbacks` told of every phase. Bad values raise ValueError before
    any query."""
    from sqdf_bbo.harness.config import FaultInjection

    config = RunConfig(task=task, method=method, budget=budget, seed=seed, out=str(out), resume=bool(resume),
                       progress=bool(progress), agent_overrides=settings, task_overrides=task_settings or {},
                       run_overrides=run_settings or {}, faults=faults or FaultInjection())
    return Run(config, callbacks=callbacks).execute()

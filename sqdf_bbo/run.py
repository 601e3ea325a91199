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

The code lives in sqdf_bbo/harness/ (config.py: RunConfig, run settings; cli.py: this command line;
loop.py: the resumable round loop, ``run_experiment``; evaluate.py; persist.py: run folder, lock,
checkpoint files, provenance; guard.py: calls into the agent; callbacks.py: phase callbacks); this module is
the entry point and re-exports the names code imports from ``sqdf_bbo.run``.
"""
from __future__ import annotations

import os
import sys
import time  # noqa: F401 - sqdf_bbo.run.time is the time module the runner reads (tests patch its clock)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

from sqdf_bbo.agent_process import AgentProcessError  # noqa: E402,F401
from sqdf_bbo.harness.callbacks import PHASES, RunCallbacks, StepCallback  # noqa: E402,F401
from sqdf_bbo.harness.cli import (_OneLineParser, _plain_int, _positive_int, _seed, build_parser,  # noqa: E402,F401
                                  config_from_argv, main, settings_help)
from sqdf_bbo.harness.config import (MAX_BUDGET, MAX_SEED, PLUGIN_TIMEOUT_S, RESUME_MUTABLE,  # noqa: E402,F401
                                     RUN_DEFAULTS, TIMING_KEYS, CLIError, FaultInjection, RunConfig, RunSettings,
                                     _parse_value, check_budget, check_seed, parse_sets, resolve_run_settings,
                                     round_sizes, run_folder_name)
from sqdf_bbo.harness.config import same_value as _same  # noqa: E402,F401
from sqdf_bbo.harness.evaluate import curve_summary, evaluate_policy  # noqa: E402,F401
from sqdf_bbo.harness.guard import AgentEscape, agent_call, check_designs  # noqa: E402,F401
from sqdf_bbo.harness.loop import Run, RunState, _num, run_experiment  # noqa: E402,F401
from sqdf_bbo.harness.persist import _git_commit, _peak_mem_mb, _versions, load_agent  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())

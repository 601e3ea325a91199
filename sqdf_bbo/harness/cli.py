"""The command line of one run (``python -m sqdf_bbo.run`` = ``sqdf-bbo run``): the parser, ``--help-settings``
and :func:`main`, which builds a :class:`~sqdf_bbo.harness.config.RunConfig` from argv, runs it and prints the
end-of-run summary; every bad value is one ``error: ...`` line and exit status 2."""
from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Optional

from sqdf_bbo.agent_process import AgentProcessError
from sqdf_bbo.harness.config import MAX_SEED, CLIError, RunConfig, RunSettings, check_budget
from sqdf_bbo.harness.guard import AgentEscape

#: the program name in usage lines (the console script's ``sqdf-bbo run`` runs the same)
PROG = "python -m sqdf_bbo.run"
DESCRIPTION = "The main job: one task x one method x one seed, resumable."


def _plain_int(s: str) -> Optional[int]:
    """int of a string of plain digits ('1_000', '+5', ' 5' and '1e3' are not), else None."""
    import re

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


class _OneLineParser(argparse.ArgumentParser):
    """Bad values exit with status 2 and a single 'error: ...' line (no usage dump)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message}\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _OneLineParser(prog=prog, description=DESCRIPTION)
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
    # tests of resuming: a simulated kill (sqdf_bbo.harness.config.FaultInjection), not for users
    p.add_argument("--fault", dest="faults", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
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


def config_from_argv(argv: Optional[list[str]] = None) -> RunConfig:
    """The RunConfig of a command line (its arguments after the program name; None: this process's). Exits
    with status 2 and one line on a malformed option; CLIError on a bad value."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return RunConfig.from_namespace(build_parser().parse_args(argv), command=f"{PROG} " + " ".join(argv))


def main(argv: Optional[list[str]] = None, callbacks=None) -> int:
    """Run the command line ``argv`` (None: this process's); ``callbacks``: a
    :class:`~sqdf_bbo.harness.callbacks.RunCallbacks` told of the run's phases (performance scripts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.help_settings:
        try:
            print(settings_help(args.method))
        except (CLIError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    from sqdf_bbo.harness.loop import Run

    try:
        config = RunConfig.from_namespace(args, command=f"{PROG} " + " ".join(argv))
        run = Run(config, callbacks=callbacks)  # every bad value is caught here, before any work
    except (CLIError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        final = run.execute()
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

"""The ``sqdf-bbo`` console script: ``sqdf-bbo <command> [options]``, one entry point for the project's commands.

Each command is the ``main(argv)`` of an existing module, imported only when that command runs (so
``sqdf-bbo --help`` imports nothing of torch); ``sqdf-bbo <command> --help`` shows that command's options.
:data:`COMMANDS` is the one table of commands: when a module moves, change its line there.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Optional

#: command -> ("module:function" taking argv and returning an exit status, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sqdf_bbo.harness.cli:main", "one run: a task x a method x a seed, resumable (= python -m sqdf_bbo.run)"),
    "sweep": ("benchmarks.run.sweep:main", "a grid of tasks x methods x seeds x budgets, locally or on Slurm"),
    "frontier": ("benchmarks.run.frontier:main", "reward-KL frontiers: each method's knob swept, tables and plots"),
    "leaderboard": ("benchmarks.report.leaderboard:main", "tables of finished runs (final.json) under run folders"),
    "compare": ("benchmarks.run.compare:main", "your method against the committed baselines, at their protocol"),
    "report": ("benchmarks.report.frontier_readme:main", "the frontier tables and figures of README.md and the docs"),
}
PROG = "sqdf-bbo"


def resolve(command: str) -> Callable[[Optional[list[str]]], Optional[int]]:
    """The function a command runs (importing its module)."""
    module, _, function = COMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), function)


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join([f"usage: {PROG} <command> [options]   ({PROG} <command> --help: that command's options)",
                      "", "commands:", *rows])


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    sys.argv = [f"{PROG} {command}", *rest]  # usage lines and recorded commands name the command
    status = resolve(command)(rest)
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())

"""Where and under what a measurement was made: the record every benchmark writes beside its numbers.

:func:`provenance` is the one function the benchmarks call for it (perf_*, precision_check,
fault_injection, the sweep's log): the CPU model, the checkout's commit and, when asked, the load
average before and after and the command. Timings are wall-clock on whatever else the machine runs, so a
row without its machine and load says little. Imports neither torch nor anything of this project, so a
benchmark can take the record before or after its timed children at no cost.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional, Union

Load = Union[float, str]


def machine() -> str:
    """The CPU model, logical CPU count and OS, e.g. ``AMD EPYC 7B13 (2 logical CPUs, Linux)``; rows of
    two machines never compare (``precision_check`` pairs rows by it)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs, {platform.system()})"


def load_average(all_three: bool = False) -> Load:
    """The 1-minute load average (2 decimals), or with ``all_three`` the 1-, 5- and 15-minute ones as text
    (``"0.52 0.60 0.70"``). Above the number of cores the machine was shared and wall times overstate."""
    loads = os.getloadavg()
    return " ".join(f"{x:.2f}" for x in loads) if all_three else round(loads[0], 2)


def git_rev_parse(*revs: str) -> list[str]:
    """``git rev-parse`` of each rev in the checkout; [] outside git or when any rev is unknown."""
    try:
        return subprocess.run(["git", "rev-parse", *revs], capture_output=True, text=True,
                              check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []


def git_commit_short() -> str:
    """The checkout's short commit hash ("" outside git): every benchmark CSV records it."""
    return " ".join(git_rev_parse("--short", "HEAD"))


def code_tree(commit: str = "HEAD") -> str:
    """git's tree hashes of the code a run executes (``sqdf_bbo/``, ``baselines/``) at ``commit``; "" outside
    git or for a commit this clone lacks. Two commits with the same value compute the same runs, so a
    benchmark that resumes by commit can also keep rows of a commit that changed only docs or benchmarks."""
    return " ".join(git_rev_parse(f"{commit}:sqdf_bbo", f"{commit}:baselines"))


def provenance(load_before: Optional[Load] = None, command: Optional[str] = None) -> dict:
    """The record of one measurement: ``machine`` (:func:`machine`) and ``git_commit``
    (:func:`git_commit_short`); with ``load_before`` (a :func:`load_average` taken before the measurement)
    also ``load_before`` and ``load_after`` (taken now, in the same form: a number, or the three averages
    when ``load_before`` is text); with ``command``, ``command``."""
    out = {"machine": machine(), "git_commit": git_commit_short()}
    if load_before is not None:
        out.update(load_before=load_before, load_after=load_average(all_three=isinstance(load_before, str)))
    if command is not None:
        out["command"] = command
    return out

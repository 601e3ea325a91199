"""The old command paths (``python -m benchmarks.frontier``, ...) after the modules moved into ``run/``,
``report/`` and ``perf/``: each old ``benchmarks/<name>.py`` is a two-line shim that calls :func:`moved`."""
from __future__ import annotations

import importlib
import runpy
from typing import Callable


def moved(new: str, name: str) -> Callable:
    """Run module ``new`` as the program when the shim is the program (``name`` is the shim's ``__name__``);
    otherwise return a ``main(argv=None)`` that calls ``new``'s ``main`` (for entry points still naming
    the old path)."""
    if name == "__main__":
        runpy.run_module(new, run_name="__main__", alter_sys=True)

    def main(argv=None):
        return importlib.import_module(new).main(argv)

    return main

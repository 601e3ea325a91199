"""Task registry: ``make_task(name, **overrides)`` and ``list_tasks()``.

Tiers register factories here at import time. A factory takes keyword overrides and must reject
unknown ones; :func:`make_task` turns an unknown name into an error listing every registered task.
"""
from __future__ import annotations

import importlib
from typing import Callable

from sqdf_bbo.tasks.base import Task, TaskInfo

_FACTORIES: dict[str, Callable[..., Task]] = {}
# modules whose import registers tasks; a missing optional tier does not break the others
_TIER_MODULES = ["sqdf_bbo.tasks.synthetic", "sqdf_bbo.tasks.image", "sqdf_bbo.tasks.stable_diffusion"]
_loaded = False


def register_task(name: str, factory: Callable[..., Task]) -> None:
    _FACTORIES[name] = factory


def _load_tiers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _TIER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # tier not built yet
            if e.name != mod:
                raise


def list_tasks() -> list[str]:
    _load_tiers()
    return sorted(_FACTORIES)


def make_task(name: str, **overrides) -> Task:
    """Build a registered task. Unknown names / overrides raise ValueError listing what is allowed."""
    _load_tiers()
    if name not in _FACTORIES:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](**overrides)


def check_overrides(task: str, overrides: dict, allowed: dict) -> None:
    """Raise a ValueError naming any override key not in ``allowed`` (a dict of defaults)."""
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, bad))} for task {task!r}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )


__all__ = ["Task", "TaskInfo", "make_task", "list_tasks", "register_task", "check_overrides"]

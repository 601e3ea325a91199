"""Task registry: ``make_task(name, **overrides)`` and ``list_tasks()``.

Three ways a task is found, by name:
- built-in tiers register factories here at import time;
- an installed package's entry points in the group ``sqdf_bbo.tasks`` (``name = "pkg.module:factory"``)
  appear in :func:`list_tasks`, in ``gymnasium.make("sqdf_bbo/<name>-v0")`` and in sweeps;
- ``"package.module:factory"`` itself (``--task mypkg.tasks:make_task``), imported on demand.
A factory takes keyword overrides (``--set task.KEY=VALUE``), must reject unknown ones and returns a
:class:`Task`; :func:`make_task` turns an unknown name, a failing import or a factory that returns
something else into one ValueError line.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

from sqdf_bbo.tasks.base import RunDefaults, Task, TaskInfo

_FACTORIES: dict[str, Callable[..., Task]] = {}
_PLUGINS: set[str] = set()  # names registered from entry points
# modules whose import registers tasks; a missing optional tier does not break the others
_TIER_MODULES = ["sqdf_bbo.tasks.synthetic", "sqdf_bbo.tasks.image", "sqdf_bbo.tasks.stable_diffusion"]
ENTRY_POINT_GROUP = "sqdf_bbo.tasks"
_loaded = False


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Register a task factory under ``name``. Tasks registered from outside ``sqdf_bbo`` get the
    plug-in treatment: a failing factory is reported in one line."""
    _FACTORIES[name] = factory
    if not getattr(factory, "__module__", "").startswith("sqdf_bbo."):
        _PLUGINS.add(name)


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
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _FACTORIES:  # built-in names win; the plug-in's module loads only when used
            _FACTORIES[ep.name] = _lazy_factory(ep.value, f"entry point {ep.name!r} ({ep.value})")
            _PLUGINS.add(ep.name)


def _lazy_factory(spec: str, what: str) -> Callable[..., Task]:
    def make(**overrides) -> Task:
        return _import_factory(spec, what)(**overrides)
    return make


def _import_factory(spec: str, what: str) -> Callable[..., Task]:
    """The callable at ``package.module:attr``; one-line ValueError if it cannot be imported."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"{what}: expected 'package.module:factory', got {spec!r}")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - a user's module: report, don't trace back
        raise ValueError(f"{what}: cannot import {mod_name!r} ({type(e).__name__}: {e})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ValueError(f"{what}: module {mod_name!r} has no callable {attr!r}")
    return factory


def list_tasks() -> list[str]:
    _load_tiers()
    return sorted(_FACTORIES)


def make_task(name: str, **overrides) -> Task:
    """Build a registered task or a ``package.module:factory`` plug-in. Unknown names / overrides raise
    ValueError listing what is allowed; a plug-in factory that fails or returns no Task raises one line."""
    _load_tiers()
    what = f"task {name!r}"
    if name in _FACTORIES and name not in _PLUGINS:
        return _FACTORIES[name](**overrides)  # built-in: its own errors already name the task
    if name in _FACTORIES:
        factory = _FACTORIES[name]
    elif ":" in name:
        factory = _import_factory(name, what)
    else:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sorted(_FACTORIES))} "
                         "or a 'package.module:factory' task")
    try:
        task = factory(**overrides)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's factory failed: one line, not a traceback
        raise ValueError(f"{what}: the factory raised {type(e).__name__}: {e}") from None
    if not isinstance(task, Task) or not isinstance(getattr(task, "info", None), TaskInfo):
        raise ValueError(f"{what}: the factory returned {type(task).__name__}, not a sqdf_bbo.tasks.Task with a TaskInfo `info`")
    return task


def check_overrides(task: str, overrides: dict, allowed: dict) -> None:
    """Raise a ValueError naming any override key not in ``allowed`` (a dict of defaults)."""
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, bad))} for task {task!r}; "
            f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
        )


__all__ = ["Task", "TaskInfo", "RunDefaults", "make_task", "list_tasks", "register_task", "check_overrides"]

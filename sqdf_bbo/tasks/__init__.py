"""Tasks by name: ``make_task(name, **overrides)`` and ``list_tasks()`` over :mod:`sqdf_bbo.registry`.

Three ways a task is found, by name:
- an installed package's entry points in the group ``sqdf_bbo.tasks`` (``name = "pkg.module:factory"``),
  the built-in tiers included (pyproject.toml); they appear in :func:`list_tasks`, in
  ``gymnasium.make("sqdf_bbo/<name>-v0")`` and in sweeps, and a tier's module is imported only when one of
  its tasks is made;
- :func:`register_task` in the running process;
- ``"package.module:factory"`` itself (``--task mypkg.tasks:make_task``), imported on demand.
A factory takes keyword overrides (``--set task.KEY=VALUE``), must reject unknown ones and returns a
:class:`Task`; :func:`make_task` turns an unknown name, a failing import or a factory that returns
something else into one ValueError line.
"""
from __future__ import annotations

from sqdf_bbo import registry
from sqdf_bbo.registry import TASK_GROUP as ENTRY_POINT_GROUP  # noqa: F401 - the entry point group
from sqdf_bbo.registry import register_task, unregister_task
from sqdf_bbo.tasks.base import RunDefaults, Task, TaskInfo


def list_tasks() -> list[str]:
    return registry.task_names()


def make_task(name: str, **overrides) -> Task:
    """Build a registered task or a ``package.module:factory`` plug-in. Unknown names / overrides raise
    ValueError listing what is allowed; a plug-in factory that fails or returns no Task raises one line."""
    what = f"task {name!r}"
    try:
        factory = registry.get_task(name)
    except registry.RegistryError as e:
        if name in registry.task_names() or ":" in name:
            raise ValueError(str(e)) from None
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(registry.task_names())} "
                         "or a 'package.module:factory' task") from None
    except ImportError as e:
        raise ValueError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a user's module: report, don't trace back
        raise ValueError(f"{what}: cannot import it ({type(e).__name__}: {e})") from None
    if getattr(factory, "__module__", "").startswith("sqdf_bbo."):
        return factory(**overrides)  # built-in: its own errors already name the task
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


__all__ = ["Task", "TaskInfo", "RunDefaults", "make_task", "list_tasks", "register_task", "unregister_task",
           "check_overrides"]

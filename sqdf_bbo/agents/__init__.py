"""Agents by name: built-in and installed methods (:mod:`sqdf_bbo.registry`, fed by the ``sqdf_bbo.methods``
entry points), or ``package.module:ClassName`` for a user's own agent."""
from __future__ import annotations

from sqdf_bbo import registry
from sqdf_bbo.agents.base import Agent, DiffusionAgent
from sqdf_bbo.registry import METHODS, preset, register_method  # noqa: F401 - METHODS: name -> entry point


def available_methods() -> list[str]:
    """All registered method names. Each one is imported, so a missing or broken method raises ImportError
    here instead of silently dropping out of the list."""
    names = registry.method_names()
    for name in names:
        try:
            registry.get_method(name)
        except (ImportError, registry.RegistryError) as e:
            raise ImportError(f"registered method {name!r} cannot be imported: {e}") from e
    return names


def resolve_method(method: str) -> type[Agent]:
    """Class for a method name (a preset's generated class) or ``module:Class`` path; unknown names list
    what is allowed; every failure is one ValueError line."""
    if ":" in method:
        try:
            cls = registry.get_method(method)
        except ImportError as e:
            raise ValueError(f"cannot import agent {method!r}: {e}") from None
    elif method in METHODS:
        try:
            cls = registry.get_method(method)
        except ImportError as e:
            raise ValueError(f"method {method!r} is not available in this checkout ({e})") from None
    else:
        raise ValueError(
            f"unknown method {method!r}; allowed: {', '.join(registry.method_names())} "
            "or a 'package.module:ClassName' agent"
        )
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{method!r} is not a subclass of sqdf_bbo.agents.Agent")
    return cls


def make_agent(method: str, task_info, config: dict | None = None, seed: int = 0) -> Agent:
    return resolve_method(method)(task_info, config or {}, seed)


__all__ = ["Agent", "DiffusionAgent", "METHODS", "make_agent", "resolve_method", "available_methods",
           "register_method", "preset"]

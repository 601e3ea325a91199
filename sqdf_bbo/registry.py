"""Method and task registry: names -> agent classes and task factories, found through entry points.

Built-in methods and tasks are declared like a third-party package's, as entry points of the installed
distribution (pyproject.toml)::

    [project.entry-points."sqdf_bbo.methods"]
    draft-1 = "mypkg.draft:DRAFT_1"            # an Agent subclass or a Preset object
    [project.entry-points."sqdf_bbo.tasks"]
    levy = "sqdf_bbo.tasks.synthetic:make_levy"  # a factory(**overrides) -> Task

so the library names no method or task module in its code. The names are read once, from
``importlib.metadata.entry_points(group=...)``; a method's or task's module is imported only when that
name is asked for (``--help`` and start-up stay fast). In a running process, :func:`register_method` and
:func:`register_task` add names too (they live in that process only: sweeps' worker processes and
isolated agents see entry points, not these calls).

A *preset* is a variant of an agent class that differs only in setting defaults:
``register_method("draft-1", DRaFTKAgent, K=1)``, or ``DRAFT_1 = preset(DRaFTKAgent, "DRaFT1Agent", K=1)``
named by an entry point. A default may be a plain value (the field keeps its doc and rules) or a
``sqdf_bbo.settings.setting(value, doc, ...)`` (the whole field is replaced). The preset resolves to a
generated subclass whose ``Settings`` has those defaults, so it resolves to exactly the settings a
hand-written subclass would.

A name registered twice with a different target is refused (one-line :class:`RegistryError`); the same
target twice is a no-op. ``package.module:attr`` (``--method mypkg.agents:MyAgent``) still works as a name.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import typing
from collections.abc import MutableMapping
from typing import Any, Callable, Optional

METHOD_GROUP = "sqdf_bbo.methods"
TASK_GROUP = "sqdf_bbo.tasks"
_UNSET = object()


class RegistryError(ValueError):
    """A refused registration or a name that cannot be resolved (one line)."""


# ---- presets ----------------------------------------------------------------------------------------
class Preset:
    """``base`` (an Agent subclass) with other setting defaults; :meth:`agent_class` is the class to run."""

    def __init__(self, base: type, label: Optional[str] = None, defaults: Optional[dict] = None):
        if not isinstance(base, type):
            raise RegistryError(f"a preset needs an agent class, got {base!r}")
        self.base, self.label, self.defaults = base, label or base.__name__, dict(defaults or {})
        self._cls: Optional[type] = None

    def _key(self) -> tuple:
        def norm(v):
            if isinstance(v, dataclasses.Field):
                d = v.default_factory() if v.default is dataclasses.MISSING else v.default
                return ("field", repr(d), tuple(sorted((k, repr(x)) for k, x in v.metadata.items())))
            return ("value", repr(v))
        return (self.base, self.label, tuple(sorted((k, norm(v)) for k, v in self.defaults.items())))

    def __eq__(self, other) -> bool:
        return isinstance(other, Preset) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        kw = ", ".join(f"{k}={v.default if isinstance(v, dataclasses.Field) else v!r}" for k, v in self.defaults.items())
        return f"preset({self.base.__module__}:{self.base.__qualname__}, {kw})"

    def agent_class(self) -> type:
        """The generated subclass of ``base`` (built once) whose settings defaults are the preset's."""
        if self._cls is None:
            self._cls = _preset_class(self)
        return self._cls


def preset(cls: type, label: Optional[str] = None, /, **defaults) -> Preset:
    """A preset of agent class ``cls``; ``label`` is the class name shown by ``--help-settings``."""
    return Preset(cls, label, defaults)


def _preset_class(p: Preset) -> type:
    from sqdf_bbo.settings import setting

    base, owner = p.base, f"preset {p.label} of {p.base.__name__}"
    typed = getattr(base, "typed_settings", lambda: None)()
    ns: dict[str, Any] = {"__module__": base.__module__, "__qualname__": p.label, "registry_preset": p,
                          "__doc__": base.__doc__}
    if typed is None:  # a plug-in agent with a plain default_config dict
        bad = sorted(set(p.defaults) - set(getattr(base, "default_config", {})))
        if bad:
            raise RegistryError(f"{owner}: unknown setting(s) {', '.join(map(repr, bad))}")
        ns["default_config"] = {**base.default_config, **{k: (v.default if isinstance(v, dataclasses.Field) else v)
                                                           for k, v in p.defaults.items()}}
        return type(base)(p.label, (base,), ns)
    fields = {f.name: f for f in dataclasses.fields(typed)}
    bad = sorted(set(p.defaults) - set(fields))
    if bad:
        raise RegistryError(f"{owner}: unknown setting(s) {', '.join(map(repr, bad))}; allowed: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(typed)
    new = []
    for name, value in p.defaults.items():
        if not isinstance(value, dataclasses.Field):  # keep the field's doc and rules
            value = setting(value, **dict(fields[name].metadata))
        new.append((name, hints[name], value))
    settings_cls = dataclasses.make_dataclass("Settings", new, bases=(typed,))
    settings_cls.__module__, settings_cls.__qualname__ = base.__module__, f"{p.label}.Settings"
    settings_cls.__doc__ = typed.__doc__
    ns["Settings"] = settings_cls
    return type(base)(p.label, (base,), ns)


# ---- the tables ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Entry:
    spec: Optional[str]  # "module:attr" of an entry point; None: registered in this process
    origin: str
    target: Any = _UNSET
    conflict: Optional[str] = None  # a second, different registration of the name (refused on use)


class _Table:
    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self.entries: dict[str, _Entry] = {}
        self.discovered = False

    def discover(self) -> None:
        if self.discovered:
            return
        self.discovered = True
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            origin = f"entry point {ep.name} = {ep.value!r} of {dist}"
            old = self.entries.get(ep.name)
            if old is None:
                self.entries[ep.name] = _Entry(ep.value, origin)
            elif old.spec != ep.value and old.conflict is None:
                old.conflict = origin

    def names(self) -> list[str]:
        self.discover()
        return sorted(self.entries)

    def register(self, name: str, target: Any) -> None:
        if not isinstance(name, str) or not name or ":" in name:
            raise RegistryError(f"{self.kind} name must be a non-empty string without ':', got {name!r}")
        self.discover()
        old = self.entries.get(name)
        if old is not None:
            have = self.load(name)
            if have is target or have == target:
                return
            raise RegistryError(f"{self.kind} {name!r} is already registered as {_describe(have)} ({old.origin}); "
                                f"refusing {_describe(target)}")
        self.entries[name] = _Entry(None, "register_" + self.kind, target)

    def unregister(self, name: str) -> None:
        self.entries.pop(name, None)

    def load(self, name: str) -> Any:
        """The registered object of ``name`` (imports its module on first use)."""
        self.discover()
        e = self.entries.get(name)
        if e is None:
            raise RegistryError(f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self.entries))}")
        if e.conflict is not None:
            raise RegistryError(f"{self.kind} {name!r} is registered twice with different targets: {e.origin} "
                                f"and {e.conflict}; uninstall one of them")
        if e.target is _UNSET:
            e.target = import_object(e.spec, f"{self.kind} {name!r} ({e.origin})")
        return e.target

    def origin(self, name: str) -> str:
        self.discover()
        return self.entries[name].origin


def _describe(obj: Any) -> str:
    if isinstance(obj, Preset):
        return repr(obj)
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def import_object(spec: str, what: str, noun: str = "attribute") -> Any:
    """The object at ``package.module:attr`` (``attr`` may be dotted); ImportError naming ``what`` if the
    module cannot be imported, RegistryError if the attribute is missing."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise RegistryError(f"{what}: expected 'package.module:attr', got {spec!r}")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"{what}: cannot import {mod_name!r} ({type(e).__name__}: {e})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"{what}: module {mod_name!r} has no {noun} {attr!r}") from None
    return obj


class NameView(MutableMapping):
    """The names of a table as a mapping name -> ``"module:attr"`` (an entry point's) or the registered
    object's description; nothing is imported. Assigning ``view[name] = "module:attr"`` registers a lazy
    name (refused when the name has another target); deleting forgets it (tests)."""

    def __init__(self, table: _Table):
        self._table = table

    def __getitem__(self, name: str) -> str:
        self._table.discover()
        e = self._table.entries[name]
        return e.spec if e.spec is not None else _describe(e.target)

    def __setitem__(self, name: str, spec: str) -> None:
        self._table.discover()
        old = self._table.entries.get(name)
        if old is not None and old.spec != spec:
            raise RegistryError(f"{self._table.kind} {name!r} is already registered ({old.origin}); refusing {spec!r}")
        self._table.entries[name] = _Entry(spec, f"{spec!r}, assigned")

    def __delitem__(self, name: str) -> None:
        self._table.discover()
        del self._table.entries[name]

    def __iter__(self):
        return iter(self._table.names())

    def __len__(self) -> int:
        return len(self._table.names())

    def __repr__(self) -> str:
        return f"<{self._table.kind} names: {', '.join(self)}>"


_METHODS = _Table("method", METHOD_GROUP)
_TASKS = _Table("task", TASK_GROUP)
#: every method name -> where it comes from (read-only use: membership, iteration)
METHODS = NameView(_METHODS)
TASKS = NameView(_TASKS)


# ---- methods ---------------------------------------------------------------------------------------
def register_method(name: str, cls: type, /, **preset_defaults) -> None:
    """Register agent class ``cls`` as method ``name``; with keyword defaults, a preset of ``cls``
    (``register_method("draft-1", DRaFTKAgent, K=1)``). ``cls`` may also be a :class:`Preset`."""
    target = Preset(cls, None, preset_defaults) if preset_defaults else cls
    _METHODS.register(name, target)


def unregister_method(name: str) -> None:
    """Forget a name (tests, interactive use); an entry point's name comes back in a new process."""
    _METHODS.unregister(name)


def method_names() -> list[str]:
    """Every registered method name (no module is imported)."""
    return _METHODS.names()


def method_origin(name: str) -> str:
    return _METHODS.origin(name)


def _as_class(obj: Any) -> Any:
    return obj.agent_class() if isinstance(obj, Preset) else obj


def get_method(name: str) -> type:
    """The agent class of a registered name, a preset's generated class, or the object at
    ``package.module:ClassName``. Unknown names: RegistryError listing the registered ones; a module that
    cannot be imported: ImportError naming the method."""
    if ":" in name:
        return _as_class(import_object(name, f"agent {name!r}"))
    return _as_class(_METHODS.load(name))


# ---- tasks -----------------------------------------------------------------------------------------
def register_task(name: str, factory: Callable[..., Any]) -> None:
    """Register task factory ``factory(**overrides) -> Task`` as ``name``."""
    if not callable(factory):
        raise RegistryError(f"task {name!r}: the factory must be callable, got {factory!r}")
    _TASKS.register(name, factory)


def unregister_task(name: str) -> None:
    """Forget a name (tests, interactive use)."""
    _TASKS.unregister(name)


def task_names() -> list[str]:
    """Every registered task name (no module is imported)."""
    return _TASKS.names()


def get_task(name: str) -> Callable[..., Any]:
    """The factory of a registered task name or of ``package.module:factory``."""
    factory = import_object(name, f"task {name!r}", "callable") if ":" in name else _TASKS.load(name)
    if not callable(factory):
        mod, _, attr = name.partition(":")
        raise RegistryError(f"task {name!r}: module {mod!r} has no callable {attr!r}" if attr else
                            f"task {name!r}: {_describe(factory)} is not callable")
    return factory


__all__ = ["METHODS", "METHOD_GROUP", "TASKS", "TASK_GROUP", "NameView", "Preset", "RegistryError", "get_method", "get_task", "import_object",
           "method_names", "preset", "register_method", "register_task", "task_names", "unregister_method",
           "unregister_task"]

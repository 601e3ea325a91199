"""Typed agent settings: a dataclass per agent, one line of doc per field (in the spirit of CleanRL's ``Args``).

    @dataclass
    class Settings(OnlineFinetuneSettings):
        alpha: float = setting(1.0, "KL weight on the official scale", ge=0)
        buffer: str = setting("reward+gamma_PER", "replay buffer sampling", choices=("none", "random", ...))

:func:`resolve` turns user overrides (``--set`` values, already parsed by the CLI into Python literals)
into a plain ``dict`` of every field: unknown keys are refused with the allowed list, each value is
coerced to its field's type (``"3"`` -> 3 for an ``int``, ``1`` -> 1.0 for a ``float``, ``"true"`` -> True)
and range-checked, so every error is one line naming the key, the value and what is allowed, raised
when the run is built, before any oracle query. :func:`describe` prints the fields for ``--help-settings``.
Supported annotations: ``int``, ``float``, ``str``, ``bool``, ``Optional[...]``, ``Union[...]`` and
``Literal[...]`` (e.g. ``Union[int, Literal["all"]]``).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Optional, Union

_RULES = ("choices", "ge", "gt", "le", "lt")


def setting(default: Any, doc: str, *, choices: Optional[tuple] = None, ge: Optional[float] = None,
            gt: Optional[float] = None, le: Optional[float] = None, lt: Optional[float] = None) -> Any:
    """A dataclass field with a default, a one-line ``doc`` and optional range rules (None values skip them)."""
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def defaults(cls: type) -> dict:
    """Field name -> default value of a settings dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """value as type tp, or raise TypeError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise TypeError
        for a in args:  # the first member that accepts the value
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except TypeError:
                pass
        raise TypeError
    if origin is Literal:
        for a in typing.get_args(tp):
            if value == a or (isinstance(a, str) and isinstance(value, str) and value.lower() == a.lower()):
                return a
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError
    if tp is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return _coerce(float(value), int) if "." in value or "e" in value.lower() else int(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float)):
            v = float(value)
        elif isinstance(value, str):
            try:
                v = float(value)
            except ValueError:
                raise TypeError from None
        else:
            raise TypeError
        if math.isnan(v):
            raise TypeError
        return v
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if tp is Any or tp is object:
        return value
    raise TypeError


def _rule_text(meta: dict) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(repr, meta["choices"]))
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]:g}")
    return " and ".join(parts)


def check_value(name: str, value: Any, tp: Any, meta: dict) -> Any:
    """Coerce and range-check one setting; ValueError (one line) names key, value and what is allowed."""
    if value is None and "none" in (meta.get("choices") or ()):  # the CLI parses 'none' as None
        value = "none"
    try:
        v = _coerce(value, tp)
    except TypeError:
        rule = _rule_text(meta)
        raise ValueError(f"setting {name}={value!r} must be {_type_name(tp)}" + (f" ({rule})" if rule else "")) from None
    if v is None or isinstance(v, bool):
        return v
    choices = meta.get("choices")
    if choices is not None and v not in choices:
        raise ValueError(f"setting {name}={value!r} must be one of {', '.join(map(repr, choices))}")
    if isinstance(v, (int, float)):
        bad = ((meta.get("gt") is not None and not v > meta["gt"]) or (meta.get("ge") is not None and not v >= meta["ge"])
               or (meta.get("lt") is not None and not v < meta["lt"]) or (meta.get("le") is not None and not v <= meta["le"]))
        if bad:
            raise ValueError(f"setting {name}={value!r} is out of range: must be {_rule_text(meta)}")
    return v


def resolve(cls: type, overrides: dict, base: Optional[dict] = None, owner: str = "") -> dict:
    """Every field of settings dataclass ``cls``: defaults <- ``base`` (e.g. task defaults, known keys
    only) <- ``overrides`` (unknown keys refused), each coerced to its type and range-checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - set(fields))
    if bad:
        raise ValueError(f"unknown setting(s) {', '.join(map(repr, bad))}{' for ' + owner if owner else ''}; "
                         f"allowed: {', '.join(sorted(fields)) or '(none)'}")
    values = defaults(cls)
    values.update({k: v for k, v in (base or {}).items() if k in fields})
    values.update(overrides)
    return {k: check_value(k, values[k], hints[k], fields[k].metadata) for k in fields}


def describe(cls: type, title: str = "") -> str:
    """One line per field: name, type, default, doc and rule (``--help-settings``)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        d = defaults(cls)[f.name]
        rule = _rule_text(f.metadata)
        rows.append((f.name, _type_name(hints[f.name]), repr(d), f.metadata.get("doc", "") + (f" [{rule}]" if rule else "")))
    w = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    lines = [title] if title else []
    lines += [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {doc}" for a, b, c, doc in rows]
    return "\n".join(lines)

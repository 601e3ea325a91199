"""Layering: no import cycle between sqdf_bbo's subpackages/modules, and the backbones import nothing
from tasks/, pretrain/ or agents/; no import cycle between the modules of benchmarks/, whose subpackages
import one way (run -> report -> common, perf -> common), and neither sqdf_bbo nor baselines imports
benchmarks (tests that walk every import statement, module- and function-level)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sqdf_bbo"
BENCH = ROOT / "benchmarks"


def unit_of(module: str) -> str:
    """sqdf_bbo.X.Y -> X (a subpackage or top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: [file:line, ...]} over every ``import sqdf_bbo...`` in the package."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        src = unit_of(".".join(p for p in parts if p != "__init__"))
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("sqdf_bbo.") and unit_of(name) != src:
                    graph[src][unit_of(name)].append(f"{f.relative_to(PKG.parent)}:{node.lineno}")
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_units():
    graph = import_graph()
    found = cycles(graph)
    detail = {tuple(c): {a: {b: graph[a][b][:2] for b in graph[a] if b in c} for a in c} for c in found}
    assert not found, f"import cycles: {detail}"


def test_backbones_import_no_tasks_pretraining_or_agents():
    graph = import_graph()
    bad = {u: graph["backbones"][u] for u in ("tasks", "pretrain", "agents", "run") if u in graph["backbones"]}
    assert not bad, bad


def test_the_cycle_detector_finds_a_cycle():
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]


# ---- benchmarks/ -----------------------------------------------------------------------------------
def _module_name(f: Path) -> str:
    parts = f.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def imported_modules(f: Path) -> list[tuple[str, int]]:
    """(module, line) of every import statement in ``f``: ``from a.b import c`` gives ``a.b.c`` when that is
    a module file, else ``a.b``; relative imports resolved against ``f``'s package."""
    package = _module_name(f) if f.name == "__init__.py" else _module_name(f).rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                out.append((sub if is_module else base, node.lineno))
    return out


def benchmarks_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported benchmarks module: [file:line, ...]} over every file of benchmarks/."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in BENCH.rglob("*.py"):
        src = _module_name(f)
        for name, line in imported_modules(f):
            if name.startswith("benchmarks.") and name != src:
                graph[src][name].append(f"{f.relative_to(ROOT)}:{line}")
    return graph


def test_no_import_cycle_between_benchmarks_modules():
    graph = benchmarks_graph()
    found = cycles(graph)
    detail = {tuple(c): {a: {b: graph[a][b][:2] for b in graph[a] if b in c} for a in c} for c in found}
    assert not found, f"import cycles: {detail}"
    assert graph["benchmarks.run.compare"]["benchmarks.run.frontier"]  # the walk sees the imports


#: what each subpackage of benchmarks/ may import from benchmarks (itself included)
ALLOWED = {"common": {"common"}, "report": {"report", "common"}, "perf": {"perf", "common"},
           "run": {"run", "report", "common"}}


def test_benchmarks_subpackages_import_one_way():
    bad = {}
    for src, targets in benchmarks_graph().items():
        unit = src.split(".")[1] if src.count(".") >= 2 else None  # benchmarks.<unit>.<module>
        if unit is None:  # benchmarks/<old>.py shims and _moved: they import _moved only
            bad.update({f"{src} -> {t}": w for t, w in targets.items() if t != "benchmarks._moved"})
            continue
        bad.update({f"{src} -> {t}": w for t, w in targets.items() if t.split(".")[1] not in ALLOWED[unit]})
    assert not bad, bad


def test_the_library_never_imports_benchmarks():
    bad = [f"{f.relative_to(ROOT)}:{line} imports {name}"
           for top in ("sqdf_bbo", "baselines") for f in (ROOT / top).rglob("*.py")
           for name, line in imported_modules(f) if name == "benchmarks" or name.startswith("benchmarks.")]
    assert not bad, bad


def test_the_library_never_imports_baselines_and_backbones_import_no_oracle():
    bad = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in PKG.rglob("*.py")
           for name, line in imported_modules(f) if name == "baselines" or name.startswith("baselines.")]
    assert not bad, bad
    oracles = import_graph()["backbones"].get("oracles")
    assert not oracles, f"sqdf_bbo/backbones imports sqdf_bbo/oracles: {oracles}"


def test_no_string_registry_of_baselines_modules_in_the_library():
    """Built-in methods are entry points (pyproject.toml), not a table of module names in the code."""
    import re

    pattern = re.compile(r"""["']baselines[.:]""")
    bad = [f"{f.relative_to(ROOT)}:{i}" for f in PKG.rglob("*.py")
           for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not bad, bad


def test_consistency_knows_no_task_or_tier_names():
    from sqdf_bbo.tasks import list_tasks

    text = (PKG / "consistency.py").read_text(encoding="utf-8")
    names = set(list_tasks()) | {"synthetic", "image", "sd", "-manifold"}
    assert not [n for n in names if f'"{n}"' in text or f"'{n}'" in text]


def test_every_registered_name_resolves():
    """Each entry point of sqdf_bbo.methods / sqdf_bbo.tasks imports and is an agent class / a factory."""
    import importlib.metadata

    from sqdf_bbo import registry
    from sqdf_bbo.agents import Agent, available_methods

    groups = {g: [ep.name for ep in importlib.metadata.entry_points(group=g)]
              for g in (registry.METHOD_GROUP, registry.TASK_GROUP)}
    assert {"sqdf", "random", "pretrained", "draft-1", "dts-star"} <= set(groups[registry.METHOD_GROUP])
    assert {"levy-manifold", "aesthetic", "aesthetic-sd"} <= set(groups[registry.TASK_GROUP])
    for name in registry.method_names():
        cls = registry.get_method(name)
        assert isinstance(cls, type) and issubclass(cls, Agent), name
    for name in registry.task_names():
        assert callable(registry.get_task(name)), name
    assert available_methods() == registry.method_names()


def test_a_missing_method_fails_loudly_and_a_name_has_one_target():
    import pytest

    from sqdf_bbo import registry
    from sqdf_bbo.agents import available_methods, resolve_method

    registry.METHODS["ghost"] = "no_such_package.ghost:GhostAgent"
    try:
        with pytest.raises(ImportError, match="ghost"):
            available_methods()
        with pytest.raises(ValueError, match="ghost"):
            resolve_method("ghost")
    finally:
        del registry.METHODS["ghost"]
    sqdf = registry.get_method("sqdf")
    registry.register_method("sqdf", sqdf)  # the same target again: nothing happens
    with pytest.raises(registry.RegistryError, match="already registered") as e:
        registry.register_method("sqdf", registry.get_method("random"))
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(registry.RegistryError, match="already registered"):
        registry.register_method("draft-1", registry.get_method("draft-k"), K=2)
    registry.register_method("draft-1", registry.get_method("draft-1").registry_preset)  # the same preset
    assert registry.get_method("sqdf") is sqdf


def test_a_preset_is_its_base_class_with_other_defaults():
    import dataclasses

    from sqdf_bbo import registry
    from sqdf_bbo.settings import defaults

    base = registry.get_method("draft-k")
    for name, changed in (("draft-1", {"K": 1}), ("draft", {"K": "all"})):
        cls = registry.get_method(name)
        assert issubclass(cls, base) and cls.improve is base.improve
        assert [f.name for f in dataclasses.fields(cls.Settings)] == [f.name for f in dataclasses.fields(base.Settings)]
        assert defaults(cls.Settings) == {**defaults(base.Settings), **changed}
    registry.register_method("draft-3-test", base, K=3)
    try:
        cls = registry.get_method("draft-3-test")
        assert defaults(cls.Settings)["K"] == 3 and cls.__name__ == base.__name__
        assert registry.get_method("draft-3-test") is cls  # built once
    finally:
        registry.unregister_method("draft-3-test")

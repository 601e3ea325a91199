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

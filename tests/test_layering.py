"""Layering: no import cycle between sqdf_bbo's subpackages/modules, and the backbones import nothing
from tasks/, pretrain/ or agents/ (a test that walks every import statement, module- and function-level)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sqdf_bbo"


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

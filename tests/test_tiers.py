"""The slow tier (tests/conftest.py) names real files and tests, so a rename cannot move a test tier."""
from __future__ import annotations

import ast
from pathlib import Path

import conftest

TESTS = Path(__file__).parent


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_slow_file_and_test_exists():
    missing = [f for f in conftest.SLOW_FILES if not (TESTS / f).is_file()]
    for file_name, names in conftest.SLOW_TESTS.items():
        path = TESTS / file_name
        found = _test_functions(path) if path.is_file() else set()
        missing += [f"{file_name}::{n}" for n in sorted(names - found)]
    assert not missing, f"tests/conftest.py lists tests that do not exist: {missing}"


def test_slow_marks_by_file_and_by_name():
    assert conftest.is_slow("test_sweep.py", "test_anything")
    assert conftest.is_slow("test_run.py", "test_killed_run_resumes_to_the_same_result")
    assert not conftest.is_slow("test_run.py", "test_bad_cli_values_give_one_line_errors")
    assert not conftest.is_slow("test_tiers.py", "test_slow_marks_by_file_and_by_name")


def test_the_slow_marker_is_declared(pytestconfig):
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))

"""The user manual (docs/, built with mkdocs) builds without warnings, its generated pages are up to date,
and the package's own text cites no document that is not in the repository."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# documents that live outside this repository (design notes, specs); the code and the docs must explain
# themselves instead ("the paper's Eq. 5", "the official implementation", a docs page)
OUTSIDE_DOCS = re.compile(
    # a page name after "/" or "](" is a link to this site's own page (docs/methods/sqdf.md), not the outside one
    r"spec\s*§|§|shared/spec|(?<![/\w-])(?<!\]\()(?:peers2?|baselines|sqdf|DESIGN)\.md\b"
    r"|embedded-defaults|\bthe spec'?s?\b",
    re.IGNORECASE,
)
SCANNED = ["sqdf_bbo", "baselines", "benchmarks", "docs", "tests"]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".txt", ".json", ".cfg"}


def test_no_file_cites_documents_outside_the_repository():
    hits = []
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if not p.is_file() or p.suffix not in TEXT_SUFFIXES or "__pycache__" in p.parts or p == Path(__file__):
                continue
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if OUTSIDE_DOCS.search(line):
                    hits.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_generated_docs_pages_are_up_to_date():
    from benchmarks.report import docs_assets

    stale = docs_assets.stale()
    assert not stale, f"stale generated docs files {stale}: run `python -m benchmarks.report.docs_assets`"


def test_every_built_in_method_has_a_docs_page_and_a_settings_section():
    from sqdf_bbo.agents import METHODS

    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    settings = (ROOT / "docs" / "reference" / "settings.md").read_text(encoding="utf-8")
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "methods").glob("*.md"))
    for name in METHODS:
        assert f"## {name}\n" in settings, name
        assert f"`{name}`" in pages, f"no methods page mentions `{name}`"
    for p in (ROOT / "docs" / "methods").glob("*.md"):
        assert f"methods/{p.name}" in nav, f"docs/methods/{p.name} is not in mkdocs.yml's nav"


@pytest.mark.skipif(shutil.which("mkdocs") is None and subprocess.run(
    [sys.executable, "-c", "import mkdocs"], capture_output=True).returncode != 0,
    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_is_strict_clean(tmp_path):
    """--strict turns every warning (a broken link, a page missing from nav, a bad anchor) into a failure."""
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").exists()

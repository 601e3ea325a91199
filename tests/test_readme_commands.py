"""The README's two set-up commands: both pin the CPU torch, and `.ci/run` runs exactly the test one."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The bash blocks of the README's Quick start section, one command line each."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_two_commands_both_pin_torch():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert "\n" not in command, f"a Quick start command is one line: {command!r}"
        assert "torch==2.13.0" in command, f"unpinned torch in {command!r}"
    assert "python -m sqdf_bbo.run --task aesthetic --budget 5000" in commands[0]
    assert "python -m pytest" in commands[1]


def test_ci_runs_exactly_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert test_command in ci_lines, f".ci/run does not run the README's test command {test_command!r}"

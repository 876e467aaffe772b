"""The README's two commands are the project's front door; CI must run exactly the test one."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO_ROOT / "README.md").read_text())


def test_readme_opens_with_the_run_command_then_the_test_command():
    run_command, test_command = readme_commands()[:2]
    assert run_command.endswith("kdflow run") and "pip install torch==2.13.0" in run_command
    assert test_command.endswith("python -m pytest") and '".[dev,zoo]"' in test_command


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == readme_commands()[1]

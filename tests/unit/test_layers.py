"""Layers only look down: command line -> flows -> stages -> engine -> models (import-linter's contract in
pyproject.toml, imports inside functions included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("cli", "flows", "tasks", "kdflow", "models")


def lint_imports(code_root: Path) -> subprocess.CompletedProcess:
    """import-linter on the packages under `code_root`, with the repository's contract."""
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config",
                           str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=code_root, env={"PYTHONPATH": str(code_root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_repository_keeps_its_layers():
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 1 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(("module", "import_line", "broken"), [
    ("kdflow/report.py", "from flows.pipeline import pipeline", "kdflow is not allowed to import flows"),
    ("kdflow/training.py", "import tasks.distill", "kdflow is not allowed to import tasks"),
    ("kdflow/graph.py", "from cli.main import app", "kdflow is not allowed to import cli"),
    ("tasks/evaluate.py", "from flows.sweep import sweep", "tasks is not allowed to import flows"),
    ("models/mlp.py", "from kdflow.config import Params", "models is not allowed to import kdflow"),
])
def test_an_import_that_looks_up_breaks_the_contract(tmp_path, module, import_line, broken):
    """A copy of the code with one upward import, inside a function as a lazy import would be."""
    for package in LAYERS:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / module, "a") as source:
        source.write(f"\n\ndef looks_up():\n    {import_line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout and f"{module[:-3].replace('/', '.')} -> " in done.stdout

"""`kdflow run --git-branch`: the run's dvc.lock, params and git-kept outputs committed on a branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kdflow import record

GIT = ["git", "-c", "user.name=kdflow tests", "-c", "user.email=tests@kdflow.invalid"]


def git(root: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "metrics" / "test").mkdir(parents=True)
    (root / "params.yaml").write_text("seed: 1\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "params")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "params.yaml").write_text("seed: 2\n")
    (root / "metrics" / "test" / "teacher.json").write_text('{"accuracy": 0.5}\n')
    return root


def test_another_branch_gets_the_record_and_the_working_tree_and_index_stay_as_they_were(tmp_path):
    root = project(tmp_path)
    status_before = git(root, "status", "--porcelain")
    commit = record.commit_to_git(root, "kdflow-runs", "kdflow run abc")
    assert commit == git(root, "rev-parse", "kdflow-runs")
    assert git(root, "log", "-1", "--format=%s", "kdflow-runs") == "kdflow run abc"
    assert git(root, "show", "kdflow-runs:params.yaml") == "seed: 2"
    assert git(root, "show", "kdflow-runs:metrics/test/teacher.json") == '{"accuracy": 0.5}'
    assert git(root, "show", "kdflow-runs:dvc.lock") == "schema: '2.0'"
    assert git(root, "rev-parse", "kdflow-runs^") == git(root, "rev-parse", "main")
    assert git(root, "status", "--porcelain") == status_before
    assert record.commit_to_git(root, "kdflow-runs", "kdflow run again") is None  # nothing changed since


def test_the_checked_out_branch_gets_a_commit_of_the_record_only(tmp_path):
    root = project(tmp_path)
    (root / "notes.txt").write_text("not the run's\n")
    commit = record.commit_to_git(root, "main", "kdflow run abc")
    assert commit == git(root, "rev-parse", "HEAD")
    assert sorted(git(root, "show", "--name-only", "--format=", "HEAD").splitlines()) == [
        "dvc.lock", "metrics/test/teacher.json", "params.yaml"]
    assert git(root, "status", "--porcelain") == "?? notes.txt"


def test_outside_git_nothing_is_committed(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    assert record.commit_to_git(tmp_path, "kdflow-runs", "kdflow run abc") is None


def test_a_project_in_a_folder_git_ignores_gets_dvc_without_git(tmp_path):
    """A scratch project inside a checkout (benchmarks/.work): DVC refuses a .dvc git ignores, so it goes without."""
    (tmp_path / ".gitignore").write_text("/scratch\n")
    git(tmp_path, "init", "-q")
    root = tmp_path / "scratch" / "project"
    root.mkdir(parents=True)
    record.ensure_project(root)
    assert "no_scm = True" in (root / ".dvc" / "config").read_text()
    assert (root / "dvc.yaml").exists() and (root / "data" / "raw" / "README.md").exists()

"""The command line as click users expect it: --version, -h, choices checked and params refused before anything
starts, in one line that names the key."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml
from click.testing import CliRunner

from cli.main import app
from tests.conftest import REPO_ROOT


def test_version_and_short_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output == f"kdflow, version {version('kdflow')}\n"
    helped = runner.invoke(app, ["-h"])
    assert helped.exit_code == 0
    commands = helped.output.split("Commands:")[1].split()
    assert {"run", "stage", "sweep", "serve", "lr-find", "checkout", "lineage", "dvc-yaml"} <= set(commands)
    assert runner.invoke(app, ["stage", "-h"]).output.startswith("Usage: kdflow stage [OPTIONS] NAME")


@pytest.mark.parametrize(("arguments", "choices"), [
    (["stage", "teacher"], "'prepare', 'train_teacher', 'soft_labels', 'distill', 'student_hard_labels', "
                           "'student_scratch', 'finetune', 'target_scratch', 'evaluate'"),
    (["run", "--force", "teacher"], "'all', 'prepare', 'train_teacher'"),
    (["lr-find", "evaluate"], "'train_teacher', 'distill', 'student_hard_labels', 'student_scratch', 'finetune', "
                              "'target_scratch'."),
])
def test_an_unknown_stage_is_refused_before_anything_starts(tmp_path, arguments, choices):
    result = CliRunner().invoke(app, [*arguments, "--root", str(tmp_path)])
    assert result.exit_code == 2 and f"is not one of {choices}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_stage_with_a_misspelt_key_says_which_and_writes_nothing(tmp_path, tiny_params, monkeypatch):
    monkeypatch.setenv("KDFLOW_OFFLINE", "1")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**tiny_params, "sed": 1}))
    result = CliRunner().invoke(app, ["stage", "prepare", "--root", str(tmp_path)])
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1 and "sed" in error_lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(("command", "kind", "slots", "task_runner"), [
    ("run --serial", "serial", 1, "ThreadPoolTaskRunner"),
    ("run --workers 3", "processes", 3, "DaskTaskRunner"),
    ("run --dask-address tcp://host:8786", "dask", None, "DaskTaskRunner"),
])
def test_the_run_options_choose_where_the_stages_run(command, kind, slots, task_runner):
    """`kdflow run`'s --serial, --workers and --dask-address reach flows.runners, which makes and starts no task
    runner until a stage must run."""
    from flows import runners

    name, *arguments = command.split()
    chosen = app.commands[name].make_context(name, arguments).params  # parsed only: no run starts
    runner = runners.choose(chosen["serial"], chosen["workers"], chosen["dask_address"])
    assert runner.kind == kind and runner.runner is None
    if slots is not None:
        assert len(runner.slots) == slots
    made = runner.make_runner()  # made, not entered: no cluster starts
    assert type(made).__name__ == task_runner
    if kind == "dask":
        assert made.address == "tcp://host:8786"


def test_the_console_script_exits_when_a_command_leaves_an_idle_thread_pool_behind():
    # MLflow's artifact repositories keep a pool each; `kdflow checkout` hung on one while exiting.
    script = """
import atexit, sys
from concurrent.futures import ThreadPoolExecutor
from cli import main as cli_main
pools = []
@cli_main.app.command("hold-a-pool")
def hold():
    pools.append(ThreadPoolExecutor(2))
    pools[0].submit(print, "work done")
atexit.register(print, "exit handlers ran")
sys.argv = ["kdflow", "hold-a-pool"]
cli_main.main()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "work done\nexit handlers ran\n"), done.stderr

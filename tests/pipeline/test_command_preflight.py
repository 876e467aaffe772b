"""`kdflow run` and the stage commands check what they can before writing anything: the params file is the
project's, its values have the right types and it is not empty, and a Prefect API named by PREFECT_API_URL answers.
Each failure is one line naming the file, key or setting and the fix; what is written honours the umask."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import app
from tests.conftest import KDFLOW, REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kdflow_run(cwd, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **environment}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([KDFLOW, "run", *arguments], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_params_from_a_subfolder_is_refused_before_a_second_project_is_made(tmp_path, tiny_params, write_params):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    write_params(project, tiny_params)

    done = kdflow_run(project / "src", "--params", "../params.yaml")

    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: ../params.yaml: the flow records its runs in DVC, which reads {project / 'src' / 'params.yaml'}; "
        f"fix: pass --params {project / 'src' / 'params.yaml'} (copy your file there) or --root {project}")
    assert sorted(p.name for p in project.rglob("*")) == ["params.yaml", "src"]  # nothing written, here or there


def test_a_dead_prefect_api_is_one_line_naming_it_and_the_fix(tmp_path, tiny_params, write_params):
    write_params(tmp_path, tiny_params)
    url = f"http://ops:hunter2@127.0.0.1:{free_port()}/api"  # nothing listens there

    done = kdflow_run(tmp_path, PREFECT_API_URL=url, KDFLOW_OFFLINE="1")

    assert done.returncode == 1 and "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: Prefect API http://ops:***@127.0.0.1:{url.split(':')[-1]} (PREFECT_API_URL) "
                            "is unreachable (")
    assert error.endswith("; nothing was run. Start that server (`prefect server start`), correct PREFECT_API_URL, "
                          "or unset it for a temporary local server")
    assert "hunter2" not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_dead_prefect_api_named_by_a_profile_stops_the_run_and_the_server_launched_before_the_profile_loaded(
        tmp_path, tiny_params, write_params):
    """`kdflow run` launches Prefect's temporary server before Prefect's settings load; a profile that names an API
    (no PREFECT_API_URL in the environment) makes it stop that server at once and use the profile's API: a dead one
    is the same one line."""
    write_params(tmp_path, tiny_params)
    port = free_port()
    profiles = tmp_path.parent / f"{tmp_path.name}-profiles.toml"
    profiles.write_text(f'active = "ops"\n\n[profiles.ops]\nPREFECT_API_URL = "http://127.0.0.1:{port}/api"\n')
    environment = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    environment.update(PYTHONPATH=str(REPO_ROOT), PREFECT_PROFILES_PATH=str(profiles), KDFLOW_OFFLINE="1")

    done = subprocess.run([KDFLOW, "run"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment)

    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"Error: Prefect API http://127.0.0.1:{port}/api (PREFECT_API_URL) is unreachable (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    started = """
import subprocess
launched = []
class Recorded(subprocess.Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        launched.append(self)
subprocess.Popen = Recorded
from flows.server import PrefectApi
api = PrefectApi.start()
print(api.ui_url(), [process.poll() is not None for process in launched])
"""
    shown = subprocess.run([sys.executable, "-c", started], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=environment, check=True).stdout.split()
    assert shown == [f"http://127.0.0.1:{port}", "[True]"]  # launched once, stopped before start() returned


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    (None, ["seed=[1"], "Error: override 'seed=[1' does not parse: '[' is never closed; -S takes KEY=VALUE"),
    ("", [], "params.yaml: the file is empty; a run needs the sections seed, data, train_teacher"),
    ("true", [], "params.yaml: 'train_teacher.train.epochs' input should be a valid integer (got True)"),
], ids=["bad-override", "empty-params", "epochs-true"])
def test_bad_params_stop_the_stage_command_with_one_line_and_nothing_written(tmp_path, tiny_params, write_params,
                                                                             text, overrides, expected):
    if text == "true":
        tiny_params = {**tiny_params, "train_teacher": {**tiny_params["train_teacher"],
                                                        "train": {**tiny_params["train_teacher"]["train"], "epochs": True}}}
    params_path = write_params(tmp_path, tiny_params)
    if text == "":
        params_path.write_text("")
    result = CliRunner().invoke(app, ["stage", "train_teacher", "--root", str(tmp_path),
                                      *(f"-S{o}" for o in overrides)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    message = result.output.splitlines()[-1]
    assert expected in message and message.startswith("Error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_an_empty_params_file_stops_kdflow_run_instead_of_running_the_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("# nothing yet\n")
    result = CliRunner().invoke(app, ["run", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path),
                                      "--offline"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: {tmp_path / 'params.yaml'}: the file is empty; a run needs the sections seed, data, train_teacher, "
        "soft_labels, distill, finetune, evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_prepare_writes_its_files_with_the_mode_the_umask_gives(tmp_path, tiny_params, write_params):
    write_params(tmp_path, tiny_params)
    previous = os.umask(0o027)
    try:
        result = CliRunner().invoke(app, ["stage", "prepare", "--root", str(tmp_path)])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "data" / "prepared").iterdir())
    assert written and {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o640" for p in written}

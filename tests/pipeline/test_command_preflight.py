"""`kdflow run` checks what it can before writing anything: the params file is the project's, and a Prefect API
named by PREFECT_API_URL answers. Each failure is one line naming the file or setting and the fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kdflow_run(cwd, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **environment}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "kdflow", "run", *arguments], cwd=cwd, env=env,
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

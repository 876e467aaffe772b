"""Scheduling for real: a `prefect server start` on 127.0.0.1, prefect.yaml deployed to a process work pool,
a process worker running the tiny config to Completed, and `kdflow serve --cron` registering its schedule."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kdflow import graph
from tests.conftest import KDFLOW

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict, log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    """A background process in its own session, so stopping it also stops what it started."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def prefect_cli(*args: str, env: dict, timeout: int = 180) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def prefect_api(fresh_prefect_home):
    """`prefect server start` on a free port of 127.0.0.1 with its own PREFECT_HOME; the env that points at it."""
    home = fresh_prefect_home("prefect-server-home")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PYTHONPATH": str(REPO_ROOT),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PREFECT_RUNNER_POLL_INTERVAL": "2"}
    port = url.rsplit(":", 1)[1].split("/")[0]
    server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                   env, home / "server.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (home / "server.log").read_text()
            assert time.monotonic() < deadline, "the Prefect server did not become healthy in 180 s"
            time.sleep(1)
        yield url, env, home
    finally:
        stop(server)


@contextlib.contextmanager
def client_for(url: str):
    """A client of the test's server, even where the session's temporary server is the configured one."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        yield client


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", "-c", "user.name=kdflow tests", "-c", "user.email=tests@kdflow.invalid", *args],
                          cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kdflow(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([KDFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the .gitignore files DVC writes beside its outputs (git's business, not the run's)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".gitignore"}


def test_a_deployed_run_on_a_process_worker_is_versioned_in_dvc_and_a_new_clone_restores_it_byte_for_byte(
        prefect_api, tmp_path, tiny_params, write_params):
    """prefect.yaml deployed to a process work pool, a worker runs it on a git project with a local DVC remote; in a
    new clone, `kdflow checkout <run id>` (and `models:/kdflow-student@champion`) restores the run's bytes."""
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment

    from kdflow import record

    url, env, home = prefect_api
    prefect_cli("work-pool", "create", "kdflow-process", "--type", "process", env=env)
    prefect_cli("--no-prompt", "deploy", "--name", "kdflow-pipeline-nightly", env=env)
    project, remote = tmp_path / "project", tmp_path / "dvc-remote"
    project.mkdir()
    params_path = write_params(project, tiny_params)
    git("init", "-q", cwd=project)
    record.ensure_project(project)  # dvc init and the rendered dvc.yaml, as the first `kdflow run` would
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], cwd=project, check=True)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "a kdflow project", cwd=project)

    worker = start([sys.executable, "-m", "prefect", "worker", "start", "--pool", "kdflow-process"], env,
                   home / "worker.log")
    try:
        with client_for(url) as client:
            deployment = client.read_deployment_by_name("kdflow-pipeline/kdflow-pipeline-nightly")
            assert deployment.work_pool_name == "kdflow-process"
            assert deployment.entrypoint == "flows/pipeline.py:pipeline"
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
                "directory": str(REPO_ROOT)}}]
            flow_run = run_deployment(deployment.id, timeout=420, poll_interval=2,
                                      # serial: a flow parameter like the others (no worker processes to start)
                                      parameters={"params_path": str(params_path), "root": str(project),
                                                  "serial": True})
            assert flow_run.state.is_completed(), (
                f"{flow_run.state!r}\n--- worker log ---\n{(home / 'worker.log').read_text()[-4000:]}")
    finally:
        stop(worker)

    tracking_uri = f"sqlite:///{project / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=tracking_uri)
    experiment = store.get_experiment_by_name("kdflow")
    runs = store.search_runs([experiment.experiment_id], max_results=200)
    (pipeline_run,) = [r for r in runs if r.info.run_name == "pipeline"]
    assert pipeline_run.info.status == "FINISHED"
    assert pipeline_run.data.tags["kdflow.stages_run"] == ",".join(graph.STAGES)
    stages = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline_run.info.run_id}
    assert stages == set(graph.STAGES)
    assert pipeline_run.data.tags[record.REMOTE_TAG] == "local"
    assert "dvc.lock" in git("status", "--porcelain", cwd=project)
    assert any(remote.rglob("*")), "the run pushed nothing to the DVC remote"

    user_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    user_env.pop("PREFECT_API_URL", None)
    for name, ref in (("clone-by-run", pipeline_run.info.run_id), ("clone-by-model", "models:/kdflow-student@champion")):
        clone = tmp_path / name
        git("clone", "-q", str(project), str(clone), cwd=tmp_path)
        restored = kdflow("checkout", ref, "--root", str(clone), cwd=clone, env=user_env)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "restored artifacts/teacher/teacher.pt  md5 " in restored.stdout
        for folder in ("artifacts", "data/prepared"):
            assert tree_bytes(clone / folder) == tree_bytes(project / folder), (name, folder)
        assert (clone / "dvc.lock").read_bytes() == (project / "dvc.lock").read_bytes()
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=clone, env=user_env, capture_output=True,
                                text=True)
        assert status.stdout.strip() == "Data and pipelines are up to date.", status.stdout + status.stderr
    after = store.search_runs([experiment.experiment_id], max_results=200)
    assert len(after) == len(runs), "checkout ran something"


def test_kdflow_serve_without_a_prefect_api_fires_its_schedule_until_a_run_completes(copy_flowed, tmp_path,
                                                                                     fresh_prefect_home):
    """No PREFECT_API_URL: `kdflow serve` starts a Prefect server with its scheduler, says where its UI is, and the
    schedule's first run completes in its project. The project is a copy of the test run's flowed one: the schedule
    is the subject, not the training, so the served run finds every stage in DVC's record."""
    project = copy_flowed(tmp_path / "project")
    params_path = project / "params.yaml"
    env = {**os.environ, "PREFECT_HOME": str(fresh_prefect_home()), "PYTHONPATH": str(REPO_ROOT),
           "PREFECT_RUNNER_POLL_INTERVAL": "2"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    # Every 10 s: the schedule's first run is due 10 s after it is registered; later ones wait for it (limit 1).
    serve = start([KDFLOW, "serve", "--interval", "10", "--name", "kdflow-serve-test",
                   "--params", str(params_path), "--root", str(project)], env, log)
    try:
        deadline = time.monotonic() + 600
        while "Prefect UI: http://127.0.0.1:" not in log.read_text():
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "kdflow serve never said where its UI is"
            time.sleep(1)
        ui = log.read_text().split("Prefect UI: ", 1)[1].split()[0]
        with urllib.request.urlopen(ui, timeout=10) as page:
            assert page.status == 200  # the UI, not only the API
        completed = []
        with client_for(f"{ui}/api") as client:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
            from prefect.client.schemas.objects import StateType

            while not completed:
                assert serve.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, f"no scheduled run completed in 600 s\n{log.read_text()[-4000:]}"
                time.sleep(2)
                completed = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))))
            deployment = client.read_deployment(completed[0].deployment_id)
        assert deployment.name == "kdflow-serve-test"
        assert completed[0].auto_scheduled  # fired by the scheduler, not started by hand
    finally:
        stop(serve)
    from mlflow.tracking import MlflowClient

    store = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")  # the copy came without one
    experiment = store.get_experiment_by_name("kdflow")
    served = [r for r in store.search_runs([experiment.experiment_id]) if r.info.run_name == "pipeline"
              and r.info.status == "FINISHED"]
    assert served and served[0].data.tags["kdflow.stages_cached"] == ",".join(graph.STAGES)

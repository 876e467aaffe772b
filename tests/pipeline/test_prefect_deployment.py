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
def prefect_api(tmp_path_factory):
    """`prefect server start` on a free port of 127.0.0.1 with its own PREFECT_HOME; the env that points at it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
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


def test_prefect_yaml_deploys_to_a_process_pool_and_a_worker_runs_it_to_completed(
        prefect_api, tmp_path, tiny_params, write_params):
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment

    url, env, home = prefect_api
    prefect_cli("work-pool", "create", "kdflow-process", "--type", "process", env=env)
    prefect_cli("--no-prompt", "deploy", "--name", "kdflow-pipeline-nightly", env=env)
    project = tmp_path / "project"
    project.mkdir()
    params_path = write_params(project, tiny_params)

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
                                      parameters={"params_path": str(params_path), "root": str(project)})
            assert flow_run.state.is_completed(), (
                f"{flow_run.state!r}\n--- worker log ---\n{(home / 'worker.log').read_text()[-4000:]}")
    finally:
        stop(worker)

    store = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("kdflow")
    runs = store.search_runs([experiment.experiment_id], max_results=200)
    (pipeline_run,) = [r for r in runs if r.info.run_name == "pipeline"]
    assert pipeline_run.info.status == "FINISHED"
    assert pipeline_run.data.tags["kdflow.stages_run"] == "prepare,train_teacher,soft_labels,distill,finetune,evaluate"
    stages = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline_run.info.run_id}
    assert stages == {"prepare", "train_teacher", "soft_labels", "distill", "finetune", "evaluate"}
    assert (project / "metrics" / "summary.json").exists()


def test_kdflow_serve_registers_the_flow_with_its_cron_schedule(prefect_api, tmp_path, tiny_params, write_params):
    url, env, home = prefect_api
    params_path = write_params(tmp_path, tiny_params)
    serve = start([sys.executable, "-m", "kdflow", "serve", "--cron", "*/30 2 * * 1-5", "--name", "kdflow-serve-test",
                   "--params", str(params_path), "--root", str(tmp_path)], env, home / "serve.log")
    try:
        with client_for(url) as client:
            deadline = time.monotonic() + 120
            deployment = None
            while deployment is None:
                assert serve.poll() is None, (home / "serve.log").read_text()
                assert time.monotonic() < deadline, "kdflow serve registered no deployment in 120 s"
                deployments = client.read_deployments()
                deployment = next((d for d in deployments if d.name == "kdflow-serve-test"), None)
                time.sleep(1)
            assert [s.schedule.cron for s in deployment.schedules] == ["*/30 2 * * 1-5"]
            assert all(s.active for s in deployment.schedules)
            assert deployment.parameters == {"params_path": str(params_path), "root": str(tmp_path)}
            assert client.read_flow(deployment.flow_id).name == "kdflow-pipeline"
    finally:
        stop(serve)
    assert serve.returncode is not None

"""Faults, for real: stage processes killed with SIGKILL, bad checkpoints, and an MLflow server that is not there.

Stages run as `python -m tasks.<stage>` subprocesses (what `dvc repro` runs) on copies of a tiny trained project,
with one thread each so that an interrupted and an uninterrupted run compute the same numbers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdflow.artifacts import file_digest, load_checkpoint, read_json
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_main
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

STAGE_TIMEOUT_S = 600


def stage_command(stage: str, root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", f"tasks.{stage}", "--root", str(root), *(a for o in overrides for a in ("-S", o))]


def stage_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("KDFLOW_OFFLINE", None)
    return env


def start_stage(stage: str, root: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(stage_command(stage, root, *overrides), cwd=REPO_ROOT, env=stage_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_stage(stage: str, root: Path, *overrides: str) -> str:
    done = subprocess.run(stage_command(stage, root, *overrides), cwd=REPO_ROOT, env=stage_env(),
                          capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kill_when(process: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL `process` as soon as `ready()` holds; fail if it ends first."""
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the stage ended before {what}:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


# --- 8. resume after SIGKILL --------------------------------------------------------------------------------

EPOCHS = 16
TEACHER_LONGER = (f"train_teacher.train.epochs={EPOCHS}", "train_teacher.train.batch_size=16",
                  "train_teacher.train.patience=0")


def test_teacher_killed_mid_training_resumes_to_the_uninterrupted_numbers(project_copy) -> None:
    killed, straight = project_copy("killed"), project_copy("straight")
    previous_teacher = file_digest(ProjectPaths.at(killed).checkpoint("teacher"))
    uninterrupted = start_stage("train_teacher", straight, *TEACHER_LONGER)

    victim = start_stage("train_teacher", killed, *TEACHER_LONGER)
    resume_file = ProjectPaths.at(killed).resume_state("teacher")
    kill_when(victim, lambda: resume_file.exists() and load_checkpoint(resume_file)["epoch"] >= 2,
              "its resume state reached epoch 2")
    saved_epoch = load_checkpoint(resume_file)["epoch"]
    assert 2 <= saved_epoch < EPOCHS
    assert file_digest(ProjectPaths.at(killed).checkpoint("teacher")) == previous_teacher  # nothing written yet

    output = run_stage("train_teacher", killed, *TEACHER_LONGER)
    assert f"teacher: resuming after epoch {saved_epoch} from {resume_file}" in output
    assert not resume_file.exists()
    out, _ = uninterrupted.communicate(timeout=STAGE_TIMEOUT_S)
    assert uninterrupted.returncode == 0, out
    assert "resuming" not in out

    resumed, reference = ProjectPaths.at(killed), ProjectPaths.at(straight)
    resumed_state = load_checkpoint(resumed.checkpoint("teacher"))["state_dict"]
    for name, tensor in load_checkpoint(reference.checkpoint("teacher"))["state_dict"].items():
        assert torch.equal(resumed_state[name], tensor), name
    assert read_json(resumed.stage_metrics("train_teacher")) == read_json(reference.stage_metrics("train_teacher"))
    assert resumed.curve("teacher").read_text() == reference.curve("teacher").read_text()
    assert len(resumed.curve("teacher").read_text().splitlines()) == EPOCHS + 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id],
                             filter_string="tags.`kdflow.model` = 'teacher' and attributes.status = 'FINISHED'")[0]
    assert run.data.tags["kdflow.resumed_from_epoch"] == str(saved_epoch)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(1, EPOCHS + 1))
    # The killed process's stage and model runs were left RUNNING; the next run on this machine closed them.
    experiment = client.get_experiment_by_name("kdflow").experiment_id
    assert client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'") == []
    closed = client.search_runs([experiment], filter_string="attributes.status = 'KILLED'")
    assert sorted(r.info.run_name for r in closed) == ["teacher", "train_teacher"]
    assert {r.data.tags["kdflow.pid"] for r in closed} == {str(victim.pid)}


# --- 9. nothing half-written ----------------------------------------------------------------------------------


def test_soft_labels_killed_while_writing_keep_the_previous_file(project_copy) -> None:
    root = project_copy()
    target = root / "artifacts" / "soft_labels" / "transfer.parquet"
    good_bytes = target.read_bytes()
    good = pd.read_parquet(target)

    def temporaries() -> list[Path]:
        return list(target.parent.glob(".transfer.parquet.*.tmp"))

    # One row per chunk makes the write slow enough to be caught in the middle.
    victim = start_stage("soft_labels", root, "soft_labels.chunk_size=1")
    kill_when(victim, lambda: any(p.stat().st_size > 0 for p in temporaries()), "it started writing transfer.parquet")
    assert target.read_bytes() == good_bytes  # the previous good file, untouched
    assert len(temporaries()) == 1  # the half-written file stayed a temporary

    run_stage("soft_labels", root)
    assert temporaries() == [] and not list(root.rglob("*.tmp"))
    assert target.read_bytes() == good_bytes  # same teacher, same chunks: the same bytes
    pd.testing.assert_frame_equal(pd.read_parquet(target), good)


# --- 10. bad checkpoints, surfaced by the stage ------------------------------------------------------------


class Payload:
    """An object a weights_only unpickler must refuse to build."""


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def tamper(path: Path) -> None:
    payload = load_checkpoint(path)
    payload["spec"] = Payload()
    torch.save(payload, path)


@pytest.mark.parametrize(("stage", "damage", "checkpoint", "producer"), [
    ("distill", truncate, "teacher", "train_teacher"),
    ("finetune", tamper, "student_distilled", "distill"),
])
def test_a_stage_refuses_a_bad_checkpoint_naming_the_file_and_the_fix(project_copy, stage, damage, checkpoint,
                                                                      producer) -> None:
    root = project_copy()
    paths = ProjectPaths.at(root)
    path = paths.checkpoint(checkpoint)
    damage(path)
    with pytest.raises(SystemExit) as caught:
        stage_main(stage, __import__(f"tasks.{stage}", fromlist=["run"]).run, ["--root", str(root)])
    message = str(caught.value.code)
    assert message.startswith(f"error: {path}: refused to load (")
    assert "the file is truncated, tampered with or not a kdflow checkpoint" in message
    assert message.endswith(f"fix: the stage '{producer}' writes {path}: delete the file and rerun it "
                            f"(`dvc repro -f {producer}` or `kdflow run --force {producer}`)")
    written = {"distill": paths.stage_metrics("distill"), "finetune": paths.target_dir}[stage]
    assert stage == "distill" or not written.exists()  # finetune has not run in the trained project


def test_a_stage_run_before_its_upstream_names_the_missing_file_and_the_stage_that_writes_it(
        tmp_path, tiny_params, write_params, monkeypatch) -> None:
    monkeypatch.setenv("KDFLOW_OFFLINE", "1")
    write_params(tmp_path, tiny_params)
    card = ProjectPaths.at(tmp_path).dataset_card
    with pytest.raises(SystemExit) as caught:
        stage_main("soft_labels", __import__("tasks.soft_labels", fromlist=["run"]).run, ["--root", str(tmp_path)])
    assert str(caught.value.code) == (
        f"error: stage 'soft_labels' needs {card}, which does not exist\n"
        "fix: the stage 'prepare' writes it: run that stage first (`dvc repro prepare`), "
        "or the whole pipeline (`dvc repro` or `kdflow run`)")


# --- 11. MLflow server reachability ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_tracking_server_stops_the_run_before_anything_runs(tmp_path, tiny_params, write_params,
                                                                     monkeypatch) -> None:
    from click.testing import CliRunner

    from kdflow.cli import app

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    params_path = write_params(tmp_path, tiny_params)
    expected = f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ("

    result = CliRunner().invoke(app, ["run", "--params", str(params_path), "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert expected in result.output and "`kdflow run --offline`" in result.output
    with pytest.raises(SystemExit) as caught:
        stage_main("prepare", __import__("tasks.prepare", fromlist=["run"]).run, ["--root", str(tmp_path)])
    assert str(caught.value.code).startswith(f"error: {expected}")
    assert "KDFLOW_OFFLINE=1 for `dvc repro`" in str(caught.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing trained, nothing tracked


def test_offline_tracks_in_the_local_store_and_says_where(tmp_path, tiny_params, write_params, monkeypatch,
                                                          capsys) -> None:
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from kdflow.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    params_path = write_params(tmp_path, tiny_params)
    local = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    # `--offline` gets past the dead server; the bad override then stops the run before Prefect starts.
    result = CliRunner().invoke(app, ["run", "--offline", "--params", str(params_path), "--root", str(tmp_path),
                                      "-S", "seed=-1"])
    assert f"offline (KDFLOW_OFFLINE=1): MLflow runs go to the local store {local}" in result.output
    assert "seed must be in [0, 2**32)" in result.output and result.exit_code == 1

    monkeypatch.setenv("KDFLOW_OFFLINE", "1")  # what `kdflow run --offline` sets and `dvc repro` honours
    stage_main("prepare", __import__("tasks.prepare", fromlist=["run"]).run, ["--root", str(tmp_path)])
    assert f"offline (KDFLOW_OFFLINE=1): MLflow runs go to the local store {local}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=local)
    runs = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id])
    assert [r.info.run_name for r in runs] == ["prepare"]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its store in tmp_path; its URI."""
    import urllib.request

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_reachable_tracking_server_takes_the_runs(tmp_path, tiny_params, write_params, monkeypatch, capsys,
                                                 mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, tiny_params)
    stage_main("prepare", __import__("tasks.prepare", fromlist=["run"]).run, ["--root", str(project)])
    assert f"MLflow runs go to the tracking server {mlflow_server}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("prepare", "FINISHED")]
    assert not (project / "mlflow.db").exists()

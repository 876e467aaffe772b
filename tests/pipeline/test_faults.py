"""Faults, for real: stage processes killed with SIGKILL, bad checkpoints, and an MLflow server that is not there.

Stages run as `kdflow stage <name>` subprocesses (what `dvc repro` runs) on copies of a tiny trained project,
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
from tests.conftest import KDFLOW, REPO_ROOT

pytestmark = pytest.mark.slow

STAGE_TIMEOUT_S = 600


def stage_command(stage: str, root: Path, *overrides: str) -> list[str]:
    return [KDFLOW, "stage", stage, "--root", str(root), *(a for o in overrides for a in ("-S", o))]


def stage_in_process(stage: str, root: Path):
    """`kdflow stage` in this process (monkeypatches apply); its result: exit code and output."""
    from click.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, ["stage", stage, "--root", str(root)])


def stage_error(stage: str, root: Path) -> str:
    """The one-line error (no traceback) of a stage that must fail, run in this process."""
    result = stage_in_process(stage, root)
    assert result.exit_code == 1 and "Error: " in result.output, result.output
    assert "Traceback" not in result.output, result.output
    return "Error: " + result.output.split("Error: ", 1)[1].removesuffix("\n")


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
    # the same weights, the same bytes: DVC sees no change
    assert resumed.checkpoint("teacher").read_bytes() == reference.checkpoint("teacher").read_bytes()

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
    message = stage_error(stage, root)
    assert message.startswith(f"Error: {path}: refused to load (")
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
    message = stage_error("soft_labels", tmp_path)
    assert message == (
        f"Error: stage 'soft_labels' needs {card}, which does not exist\n"
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

    from cli.main import app

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    params_path = write_params(tmp_path, tiny_params)
    expected = f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ("

    result = CliRunner().invoke(app, ["run", "--params", str(params_path), "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert expected in result.output and "`kdflow run --offline`" in result.output
    message = stage_error("prepare", tmp_path)
    assert message.startswith(f"Error: {expected}")
    assert "KDFLOW_OFFLINE=1 for `dvc repro`" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing trained, nothing tracked


def test_offline_tracks_in_the_local_store_and_says_where(tmp_path, tiny_params, write_params, monkeypatch) -> None:
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from cli.main import app

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
    output = stage_in_process("prepare", tmp_path).output
    assert f"offline (KDFLOW_OFFLINE=1): MLflow runs go to the local store {local}" in output
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


def test_reachable_tracking_server_takes_the_runs_and_its_password_is_never_shown(
        tmp_path, tiny_params, write_params, monkeypatch, mlflow_server) -> None:
    """A user:password in MLFLOW_TRACKING_URI reaches the server (which takes any) and appears nowhere: not in the
    output, not in a run's tags or params."""
    from mlflow.tracking import MlflowClient

    password = "pa$$w0rd"
    with_credentials = mlflow_server.replace("http://", "http://kd:pa%24%24w0rd@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_credentials)
    monkeypatch.delenv("KDFLOW_OFFLINE", raising=False)
    for moved in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # where kdflow hands MLflow the login
        monkeypatch.setenv(moved, "")
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, tiny_params)
    output = stage_in_process("prepare", project).output
    shown = mlflow_server.replace("http://", "http://kd:***@")
    assert f"MLflow runs go to the tracking server {shown}" in output
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("kdflow").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("prepare", "FINISHED")]
    assert not (project / "mlflow.db").exists()
    recorded = [*runs[0].data.tags.values(), *runs[0].data.params.values(), output]
    assert not [text for text in recorded if password in text or "pa%24%24w0rd" in text]


# --- issue 14: nothing wrong, nothing lost, nothing run that should not be --------------------------------------


def failed_stage(stage: str, root: Path, *overrides: str) -> str:
    """Run a stage that must fail; its error, which must be one line, the last, and no traceback (MLflow may log
    its store's creation before it)."""
    done = subprocess.run(stage_command(stage, root, *overrides), cwd=REPO_ROOT, env=stage_env(),
                          capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return lines[-1]


def rerun_fix(stage: str) -> str:
    return f"fix: rerun the stage '{stage}', which writes it (`dvc repro {stage}` or `kdflow run`)"


def test_a_checkpoint_naming_a_custom_factory_runs_nothing_and_is_refused(project_copy) -> None:
    """weights_only=True keeps objects out, not a spec: `logging:basicConfig(filename=...)` would open the file."""
    from kdflow.config import load_params

    root = project_copy()
    paths = ProjectPaths.at(root)
    path, marker = paths.checkpoint("teacher"), root / "chosen-by-the-file"
    payload = load_checkpoint(path)
    payload["spec"] = {"arch": "custom", "factory": "logging:basicConfig", "options": {"filename": str(marker)}}
    torch.save(payload, path)

    message = failed_stage("soft_labels", root)
    expected = load_params(root / "params.yaml").train_teacher.model.model_dump(mode="json")
    assert message == (
        f"Error: {path}: saved for the architecture {payload['spec']}, but params.yaml gives {expected}; it is not "
        f"loaded (nor its spec built); fix: the stage 'train_teacher' writes {path}: delete the file and rerun it "
        "(`dvc repro -f train_teacher` or `kdflow run --force train_teacher`)")
    assert not marker.exists()


def test_distill_after_the_teacher_was_retrained_names_the_stale_soft_labels(project_copy) -> None:
    root = project_copy()
    paths = ProjectPaths.at(root)
    old_teacher = file_digest(paths.checkpoint("teacher"))
    students = {p: p.read_bytes() for p in paths.students_dir.iterdir()}
    # another learning rate: fewer epochs could keep the same best epoch, and so the same bytes
    run_stage("train_teacher", root, "train_teacher.train.lr=0.001")
    new_teacher = file_digest(paths.checkpoint("teacher"))
    assert new_teacher != old_teacher

    assert failed_stage("distill", root) == (
        f"Error: {paths.soft_labels_manifest}: made from artifacts/teacher/teacher.pt md5 {old_teacher}, which is "
        f"now md5 {new_teacher}: stale; {rerun_fix('soft_labels')}")
    assert {p: p.read_bytes() for p in paths.students_dir.iterdir()} == students


def test_finetune_after_the_data_was_prepared_again_names_the_stale_student(project_copy) -> None:
    root = project_copy()
    paths = ProjectPaths.at(root)
    old_val, old_card = file_digest(paths.split("source_val")), file_digest(paths.dataset_card)
    run_stage("prepare", root, "data.val_fraction=0.2")
    new_val, new_card = file_digest(paths.split("source_val")), file_digest(paths.dataset_card)
    assert new_val != old_val

    # The card records every split's md5, so it is the first of the student's inputs found to differ.
    assert failed_stage("finetune", root) == (
        f"Error: {paths.checkpoint('student_distilled')}: made from data/prepared/dataset_card.json md5 {old_card}, "
        f"which is now md5 {new_card}: stale; {rerun_fix('distill')}")
    assert not paths.target_dir.exists()


def test_soft_labels_missing_samples_are_one_line_from_the_command(project_copy) -> None:
    import pyarrow.parquet as pq

    from kdflow.artifacts import write_json, write_parquet

    root = project_copy()
    paths = ProjectPaths.at(root)
    target = paths.soft_labels("transfer")
    frame = pd.read_parquet(target)
    write_parquet(target, frame.iloc[1:])
    manifest = read_json(paths.soft_labels_manifest)
    manifest["files"]["transfer"]["md5"] = file_digest(target)  # consistent with its manifest, yet short of rows
    write_json(paths.soft_labels_manifest, manifest)
    assert pq.read_metadata(target).num_rows == len(frame) - 1

    assert failed_stage("distill", root) == (
        f"Error: {target}: no soft labels for 1 of the split's samples (e.g. {frame['sample_id'][0]}); "
        f"{rerun_fix('soft_labels')}")


def truncated(target, recorded: str, record: str, writer: str) -> str:
    """Cut `target` short; the one line a stage prints for it, against the md5 `record` holds."""
    truncate(target)
    return (f"Error: {target}: md5 {file_digest(target)}, not the md5 {recorded} {record} records: changed or "
            f"damaged since {writer} wrote them; {rerun_fix(writer)}")


def damage_soft_labels(paths: ProjectPaths) -> str:
    recorded = read_json(paths.soft_labels_manifest)["files"]["transfer"]["md5"]
    return truncated(paths.soft_labels("transfer"), recorded, "manifest.json", "soft_labels")


def damage_split(paths: ProjectPaths) -> str:
    recorded = read_json(paths.dataset_card)["splits"]["source_train"]["md5"]
    return truncated(paths.split("source_train"), recorded, "dataset_card.json", "prepare")


def garbage_card(paths: ProjectPaths) -> str:
    paths.dataset_card.write_text("<html>not json</html>")
    return (f"Error: {paths.dataset_card}: not valid JSON (Expecting value: line 1 column 1 (char 0)); "
            f"{rerun_fix('prepare')}")


def wrong_card(paths: ProjectPaths) -> str:
    paths.dataset_card.write_text('{"input_shape": "forty"}')
    return (f"Error: {paths.dataset_card}: not a dataset card (input_shape, source_classes, target_classes and every "
            f"split's md5 are missing or malformed); {rerun_fix('prepare')}")


def garbage_store(paths: ProjectPaths) -> str:
    store = paths.root / "mlflow.db"
    store.write_bytes(b"not a database " * 100)
    return (f"Error: {store}: not a readable MLflow store (file is not a database); nothing was run; fix: move it "
            f"aside (`mv {store} {store}.damaged`) and rerun: a new store is made, and the runs the damaged one held "
            "stay in that file")


@pytest.mark.parametrize(("stage", "damage"), [
    ("distill", damage_soft_labels), ("train_teacher", damage_split), ("soft_labels", garbage_card),
    ("distill", wrong_card), ("distill", garbage_store),
], ids=["truncated-soft-labels", "truncated-split", "garbage-card", "wrong-card", "garbage-mlflow-db"])
def test_a_bad_artifact_is_one_line_naming_the_file_and_the_fix(project_copy, stage, damage) -> None:
    root = project_copy()
    paths = ProjectPaths.at(root)
    checkpoints = {m: file_digest(paths.checkpoint(m)) for m in ("teacher", "student_distilled")}
    expected = damage(paths)
    assert failed_stage(stage, root) == expected
    assert {m: file_digest(paths.checkpoint(m)) for m in checkpoints} == checkpoints  # nothing replaced


def test_a_second_run_refuses_the_state_a_live_run_trains_from_and_leaves_it(project_copy) -> None:
    root = project_copy()
    state = ProjectPaths.at(root).resume_state("teacher")
    first = start_stage("train_teacher", root, "train_teacher.train.epochs=2000", "train_teacher.train.patience=0")
    try:
        deadline = time.monotonic() + STAGE_TIMEOUT_S
        while not state.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.05)
        message = failed_stage("train_teacher", root, "train_teacher.train.epochs=2000", "train_teacher.train.patience=0")
        assert message == (
            f"Error: {state}: in use by a training that is still running (pid {first.pid} on {socket.gethostname()}); "
            "not resumed from, nor touched; fix: wait for that run to finish (or stop it) before running the stage again")
        assert first.poll() is None and state.exists()
    finally:
        first.kill()
        first.wait()


def test_prepare_reads_a_file_whose_name_mlflow_keys_cannot_hold(tmp_path, tiny_params, write_params,
                                                                 write_image_csv) -> None:
    """`(`, `)` and `'` are not allowed in MLflow tag keys; the file's path must still reach its run and lineage."""
    from mlflow.tracking import MlflowClient

    from kdflow.lineage import INPUT_PREFIX, chain, format_chain, tagged_files

    raw = "data/raw/digits (v2)'s.csv"
    write_image_csv(tmp_path / raw, rows_per_class=30)
    data = {**tiny_params["data"],
            "source": {"kind": "file", "path": raw, "feature_prefix": "pixel_", "label": "digit", "reshape": [1, 8, 8]},
            "transfer": {"kind": "file", "path": raw, "feature_prefix": "pixel_", "label": "digit"}}
    teacher = {**tiny_params["train_teacher"], "model": {"arch": "cnn2d", "channels": [8, 8]}}
    write_params(tmp_path, {**tiny_params, "data": data, "train_teacher": teacher})
    run_stage("prepare", tmp_path)
    run_stage("train_teacher", tmp_path)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdflow").experiment_id
    (teacher_run,) = client.search_runs([experiment], filter_string="tags.`kdflow.model` = 'teacher'")
    (prepare_run,) = client.search_runs([experiment], filter_string="tags.`kdflow.stage` = 'prepare'")
    md5 = file_digest(tmp_path / raw)
    assert tagged_files(prepare_run.data.tags, INPUT_PREFIX) == {raw: md5}
    runs = chain(client, teacher_run.info.run_id)
    assert [r.info.run_id for r in runs][0] == prepare_run.info.run_id
    assert f"  in   {raw}  md5 {md5}" in format_chain(client, runs).splitlines()


def refuse_writes_under(monkeypatch, directory: Path) -> None:
    """Make `directory` read-only as far as new files go (the tests run as root, whom chmod does not stop)."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(directory):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(("stage", "folder"), [("prepare", "data/prepared"), ("train_teacher", "artifacts/teacher")])
def test_a_read_only_output_folder_stops_the_stage_before_it_writes_or_trains(project_copy, monkeypatch, stage,
                                                                              folder) -> None:
    import kdflow.stage

    monkeypatch.setenv("KDFLOW_OFFLINE", "1")
    root = project_copy()
    directory = root / folder
    before = {p: p.read_bytes() for p in directory.iterdir()}
    refuse_writes_under(monkeypatch, directory)
    monkeypatch.setattr(kdflow.stage, "fit_batches", lambda *a, **k: pytest.fail("trained into a read-only folder"))
    message = stage_error(stage, root)
    assert message == (f"Error: {directory}: cannot write there (Read-only file system); fix: make the "
                                      "folder writable (or free space on its disk) and rerun")
    assert {p: p.read_bytes() for p in directory.iterdir()} == before
    assert not (root / "mlflow.db").exists()  # no run was even started

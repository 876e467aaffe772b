"""What every kdflow run tells MLflow about itself, against a SQLite store in tmp_path: its commit and whether the
tree was dirty, its source and user, its input files as datasets; and the experiment's kind, which decides the
page MLflow's UI opens it on."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdflow import tracking
from kdflow.config import load_params
from kdflow.layout import SPLITS, ProjectPaths
from kdflow.artifacts import ArtifactError
from kdflow.stage import stage_run, training_stage_run

GIT = ["git", "-c", "user.name=kdflow tests", "-c", "user.email=tests@kdflow.invalid"]


def git_repository(root: Path) -> str:
    """A repository at `root` with one commit of `tracked.txt`; returns HEAD."""
    (root / "tracked.txt").write_text("one\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*GIT, "add", "tracked.txt"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "one"], cwd=root, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A git repository as project root, also the working directory (where MLflow's default ./mlruns would go)."""
    monkeypatch.chdir(tmp_path)
    git_repository(tmp_path)
    return tmp_path


def store(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking.local_uri(root))


def test_the_commit_stays_a_sha_and_a_dirty_tree_is_a_tag_of_its_own(tmp_path):
    head = git_repository(tmp_path)
    clean = tracking.git_commit(tmp_path)
    assert (clean.sha, clean.dirty, str(clean)) == (head, False, head)
    assert clean.tags() == {"mlflow.source.git.commit": head, "mlflow.source.git.dirty": "false"}

    (tmp_path / "tracked.txt").write_text("two\n")
    dirty = tracking.git_commit(tmp_path)
    assert (dirty.sha, dirty.dirty, str(dirty)) == (head, True, f"{head}-dirty")
    assert dirty.tags() == {"mlflow.source.git.commit": head, "mlflow.source.git.dirty": "true"}
    assert tracking.git_commit(tmp_path, ignore=("tracked.txt",)).dirty is False

    no_commit = tmp_path / "no-commit"  # a repository without a commit has no HEAD to name
    subprocess.run(["git", "init", "-q", str(no_commit)], check=True)
    assert tracking.git_commit(no_commit) is None


def test_runs_name_their_source_user_and_commit_and_children_share_the_source(project):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    (project / "tracked.txt").write_text("changed\n")
    with tracking.start_run(project, "stage", source="tasks/distill.py") as run:
        with run.child("model") as child:
            pass
    client = store(project)
    for run_id in (run.run_id, child.run_id):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.source.name"] == "tasks/distill.py"
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.git.commit"] == head
        assert tags["mlflow.source.git.dirty"] == "true"


def test_the_experiment_is_for_model_training_and_keeps_its_artifacts_beside_the_store(project):
    with tracking.start_run(project, "stage", source="tasks/prepare.py"):
        pass
    experiment = store(project).get_experiment_by_name("kdflow")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (project / "mlartifacts").as_uri()


def experiment_of(root: str) -> str:
    return tracking.project_client(Path(root))[1]


def test_commands_started_together_in_a_fresh_project_make_one_store_and_one_experiment(tmp_path):
    """Two `kdflow run` (or a run and `dvc repro`) started at once in a new project: MLflow builds a new database by
    migrating it, and without one maker at a time one of them failed midway (alembic: 'expected to match one row')."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(4) as pool:
        experiments = pool.map(experiment_of, [str(tmp_path)] * 4)
    assert len(set(experiments)) == 1
    client = MlflowClient(tracking_uri=tracking.local_uri(tmp_path))
    assert [e.name for e in client.search_experiments()] == ["kdflow", "Default"]


def schema(database: Path) -> dict:
    """Each table's and index's definition as a set of its lines: MLflow's migrations list a table's constraints in
    another order when they ran in the same process before (the same schema, other text)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    return {(kind, name): {line.strip().rstrip(",") for line in (sql or "").splitlines()} for kind, name, sql in rows}


def test_a_new_project_store_is_a_copy_of_the_template_mlflow_itself_migrated_once(tmp_path, monkeypatch):
    """A fresh project's mlflow.db starts as a copy of an empty store MLflow's own migrations made once (in
    $XDG_CACHE_HOME/kdflow), not migrated anew by every new project: the same schema as MLflow makes, and each
    project's own Default and kdflow experiments, its artifacts beside its store."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, second = tmp_path / "first", tmp_path / "second"
    tracking.project_client(first)
    (template,) = (tmp_path / "cache" / "kdflow").glob("mlflow-*.db")
    made = template.stat().st_mtime_ns
    tracking.project_client(second)
    assert template.stat().st_mtime_ns == made  # made once, copied since
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'own.db'}").search_experiments()  # MLflow makes its own
    assert schema(first / "mlflow.db") == schema(second / "mlflow.db") == schema(tmp_path / "own.db")
    assert schema(template) == schema(tmp_path / "own.db")
    for root in (first, second):
        client = MlflowClient(tracking_uri=tracking.local_uri(root))
        assert [e.name for e in client.search_experiments()] == ["kdflow", "Default"]
        assert client.get_experiment_by_name("kdflow").artifact_location == (root / "mlartifacts").as_uri()


def test_a_damaged_template_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tracking.store_template()
    template.write_bytes(template.read_bytes()[:4096])  # truncated
    assert tracking.store_template() == template
    tracking.project_client(tmp_path / "project")
    client = MlflowClient(tracking_uri=tracking.local_uri(tmp_path / "project"))
    assert [e.name for e in client.search_experiments()] == ["kdflow", "Default"]


def test_a_cache_folder_that_takes_no_file_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tracking.store_template() is None
    tracking.project_client(tmp_path / "project")
    client = MlflowClient(tracking_uri=tracking.local_uri(tmp_path / "project"))
    assert [e.name for e in client.search_experiments()] == ["kdflow", "Default"]


def log_new_file_together(root: str, barrier, rounds: int) -> int:
    """In a run of its own, log `rounds` new files as datasets, each when every process is ready to log it too."""
    with tracking.start_run(Path(root), "stage", source="tasks/distill.py") as run:
        for index in range(rounds):
            barrier.wait(timeout=60)  # a process that failed breaks it for the others
            run.log_datasets(tracking.file_datasets(Path(root), {f"artifacts/file{index}.parquet": f"{index:032x}"}))
        return len(run.client.get_run(run.run_id).inputs.dataset_inputs)


def test_runs_logging_the_same_new_file_at_once_each_link_it_and_the_store_holds_it_once(tmp_path):
    """Models trained at once and sweep trials log the same soft labels as datasets at the same moment; MLflow's
    store looks a dataset up and then inserts it, so two at once failed one trial on its unique key."""
    import multiprocessing

    processes, rounds = 2, 6
    context = multiprocessing.get_context("fork")  # no store is open here: each child opens its own
    with context.Manager() as manager, context.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        linked = pool.starmap(log_new_file_together, [(str(tmp_path), barrier, rounds)] * processes)
    assert linked == [rounds] * processes
    client = store(tmp_path)
    (experiment,) = [e for e in client.search_experiments() if e.name == "kdflow"]
    runs = client.search_runs([experiment.experiment_id])
    linked_files = {d.dataset.name: d.dataset.digest for r in runs for d in r.inputs.dataset_inputs}
    assert linked_files == {f"artifacts/file{index}.parquet": f"{index:032x}" for index in range(rounds)}


def test_an_experiment_made_before_gets_the_kind_and_a_kind_chosen_in_the_ui_stays(project):
    client = store(project)
    experiment_id = client.create_experiment("kdflow")
    with tracking.start_run(project, "stage", source="tasks/prepare.py"):
        pass
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    with tracking.start_run(project, "stage", source="tasks/prepare.py"):
        pass
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "genai_development"


def write_teacher_inputs(project: Path) -> dict[str, bytes]:
    """What train_teacher reads, {path: bytes}: two splits and a dataset card that records their md5s."""
    splits = {"data/prepared/source_train.parquet": b"train rows", "data/prepared/source_val.parquet": b"val rows"}
    card = {"input_shape": [40], "source_classes": ["0", "1"], "target_classes": ["2", "3"],
            "splits": {name: {"md5": hashlib.md5(splits.get(f"data/prepared/{name}.parquet", b"")).hexdigest()}
                       for name in SPLITS}}
    files = {**splits, "data/prepared/dataset_card.json": json.dumps(card).encode()}
    for name, content in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(content)
    return files


def test_stage_and_model_runs_log_their_input_files_as_fetchable_datasets(project, tiny_params, write_params):
    import mlflow.data

    params = load_params(write_params(project, tiny_params))
    paths = ProjectPaths.at(project)
    files = write_teacher_inputs(project)
    with stage_run(paths, "train_teacher", params, None) as tracked:
        with tracked.child("teacher") as model_run:
            pass
    client = store(project)
    for run_id in (tracked.run_id, model_run.run_id):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.source.name"] == "tasks/train_teacher.py"
        datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(datasets) == set(files)
        for name, content in files.items():
            dataset = datasets[name]
            assert dataset.dataset.digest == hashlib.md5(content).hexdigest()  # DVC's digest of the file
            assert dataset.dataset.source_type == "local"
            assert Path(mlflow.data.get_source(dataset).load()).read_bytes() == content


def test_metrics_link_to_a_logged_model_and_name_the_dataset_they_were_measured_on(project):
    digest = hashlib.md5(b"test rows").hexdigest()
    (project / "test.parquet").write_bytes(b"test rows")
    test_set = tracking.file_datasets(project, {"test.parquet": digest}, "test")[0]
    with tracking.start_run(project, "model", source="tasks/evaluate.py") as run:
        model = run.client.create_logged_model(run.experiment_id, name="model", source_run_id=run.run_id)
        run.log_datasets([test_set])
        run.log_datasets([test_set])  # evaluating again logs the same input once
        run.log_metrics({"test_accuracy": 0.75}, model_id=model.model_id, dataset=test_set)
    client = store(project)
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, {t.key: t.value for t in i.tags}) for i in inputs] == \
        [("test.parquet", {"mlflow.data.context": "test"})]
    assert client.get_run(run.run_id).data.metrics["test_accuracy"] == 0.75
    [metric] = client.get_logged_model(model.model_id).metrics
    assert (metric.key, metric.value, metric.dataset_name, metric.dataset_digest, metric.run_id) == \
        ("test_accuracy", 0.75, "test.parquet", digest, run.run_id)
    assert not (project / "mlruns").exists()


def finished_process_id() -> int:
    """The id of a process that has exited (and been reaped): no process has it now."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_run_whose_process_died_is_closed_as_killed_by_the_next_run_and_a_live_ones_is_left(project, monkeypatch):
    import os
    import socket

    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    client, experiment_id = tracking.project_client(project)
    host = socket.gethostname()
    dead_pid = finished_process_id()
    dead = client.create_run(experiment_id, tags={tracking.HOST_TAG: host, tracking.PID_TAG: str(dead_pid)})
    alive = client.create_run(experiment_id, tags={tracking.HOST_TAG: host, tracking.PID_TAG: str(os.getpid())})
    elsewhere = client.create_run(experiment_id, tags={tracking.HOST_TAG: "another-host", tracking.PID_TAG: str(dead_pid)})
    with tracking.start_run(project, "stage", source="tasks/prepare.py"):
        pass
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert client.get_run(dead.info.run_id).data.tags["kdflow.closed_because"] == (
        "its process ended without closing the run")
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # another machine's pids mean nothing here


def test_a_run_that_raises_is_failed_and_a_run_nests_under_the_parent_the_environment_names(project, monkeypatch):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    with tracking.start_run(project, "pipeline", source="flows/pipeline.py") as parent:
        pass
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent.run_id)  # what a stage run by `dvc repro` inside a flow sees
    with pytest.raises(RuntimeError, match="disk full"):
        with tracking.start_run(project, "prepare", source="tasks/prepare.py") as failed:
            raise RuntimeError("disk full")
    run = store(project).get_run(failed.run_id)
    assert run.info.status == "FAILED" and run.data.tags[MLFLOW_PARENT_RUN_ID] == parent.run_id


def test_evaluation_finds_the_newest_run_that_trained_the_checkpoint(project):
    with tracking.start_run(project, "distill", source="tasks/distill.py") as stage:
        with stage.child("student_distilled", tags={"kdflow.checkpoint_md5": "a" * 32}) as older:
            pass
        time.sleep(0.01)  # start times are in milliseconds: "newest" must not be a tie
        with stage.child("student_distilled", tags={"kdflow.checkpoint_md5": "a" * 32}) as newer:
            pass
        with stage.child("student_scratch", tags={"kdflow.checkpoint_md5": "b" * 32}):
            pass
        assert older.run_id != newer.run_id
        assert tracking.find_model_run(stage, "a" * 32) == newer.run_id
        assert tracking.find_model_run(stage, "c" * 32) is None


def test_a_training_stage_checks_its_inputs_once_before_its_declaration_reads_them_and_opens_no_run_if_it_fails(
        project, tiny_params, write_params, monkeypatch):
    from kdflow import consistency

    params = load_params(write_params(project, tiny_params))
    paths = ProjectPaths.at(project)
    files = write_teacher_inputs(project)
    weights = project / "data/raw/teacher.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    checked, check_inputs = [], consistency.check_inputs

    def counted_check(paths, inputs):
        checked.append([p.relative_to(project).as_posix() for p in inputs])
        return check_inputs(paths, inputs)

    monkeypatch.setattr(consistency, "check_inputs", counted_check)
    read = []

    def declare() -> str:
        read.append(len(checked))  # how many checks came before
        return "declared"

    with training_stage_run(paths, "train_teacher", params, None, declare, extra_inputs=[weights]) as (
            tracked, declared):
        assert declared == "declared" and read == [1]
    assert checked == [["data/prepared/dataset_card.json", "data/prepared/source_train.parquet",
                        "data/prepared/source_val.parquet"],
                       ["data/raw/teacher.pt"]]  # once each; the weights after the declaration named them
    assert set(tracked.input_digests) == {*files, "data/raw/teacher.pt"}

    (project / "data/prepared/source_val.parquet").write_bytes(b"other rows")  # not what the card records
    read.clear()
    with pytest.raises(ArtifactError, match="source_val.parquet: md5 .* changed or damaged since prepare"):
        with training_stage_run(paths, "train_teacher", params, None, declare):
            pass
    assert read == []

    runs = len(store(project).search_runs([tracked.experiment_id]))

    def refuse() -> None:
        raise ValueError("weights that do not fit")

    (project / "data/prepared/source_val.parquet").write_bytes(files["data/prepared/source_val.parquet"])
    with pytest.raises(ValueError, match="weights that do not fit"):
        with training_stage_run(paths, "train_teacher", params, None, refuse):
            pass
    assert len(store(project).search_runs([tracked.experiment_id])) == runs  # no run opened

"""The tiny config through the real Prefect flow, MLflow store and files, in a temporary project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdflow import graph
from kdflow.layout import MODELS, SPLITS
from kdflow.tracking import git_commit
from tests.conftest import KDFLOW

pytestmark = pytest.mark.slow

TEST_METRICS = {"test_accuracy", "test_macro_f1", "test_nll", "test_ece", "parameters", "latency_ms"}
EPOCH_METRICS = {"train_loss", "val_loss", "val_accuracy"}
STAGE_ORDER = list(graph.STAGES)


@pytest.fixture(scope="module")
def flow_project(flowed_project):
    """The test run's one cold flow run of the tiny config (read only): its root, params file and result."""
    root, result = flowed_project
    return root, root / "params.yaml", result


@pytest.fixture(scope="module")
def rerun_project(copy_flowed, tmp_path_factory):
    """A copy of that run's project, in which the tests below run the flow again, in turn."""
    root = copy_flowed(tmp_path_factory.mktemp("rerun") / "project")
    return root, root / "params.yaml"


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdflow")
    return client, experiment


def test_cold_run_runs_every_stage_and_writes_every_artifact(flow_project):
    root, _, result = flow_project
    assert result["ran"] == STAGE_ORDER
    assert result["cached"] == []
    for split in SPLITS:
        assert (root / "data" / "prepared" / f"{split}.parquet").stat().st_size > 0
    for model in MODELS:
        assert (root / "plots" / "curves" / f"{model}.csv").read_text().startswith("epoch,train_loss,val_loss")
    assert (root / "artifacts" / "teacher" / "teacher.pt").exists()
    assert (root / "artifacts" / "soft_labels" / "transfer.parquet").exists()
    report = json.loads((root / "artifacts" / "target" / "transfer_report.json").read_text())
    assert report["copied"] and set(report["reinitialised"]) == {"head.weight", "head.bias"}
    for picture in ("accuracy_cost.png", "confusion_target.png", "reliability.png", "learning_curves.png"):
        assert (root / "reports" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (root / "reports" / "report.md").read_text()
    assert all(f"| {model} |" in markdown for model in MODELS)
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"


def test_summary_holds_every_model_under_the_same_metric_names(flow_project):
    root, _, result = flow_project
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert summary == result["summary"]
    assert set(summary["models"]) == set(MODELS)
    for name, metrics in summary["models"].items():
        assert TEST_METRICS <= set(metrics), name
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert {m for m, v in summary["models"].items() if "test_agreement" in v} == {
        "student_distilled", "student_hard_labels", "student_scratch"}
    comparisons = summary["comparisons"]
    models = summary["models"]
    assert comparisons["distilled_vs_scratch_points"] == pytest.approx(
        100 * (models["student_distilled"]["test_accuracy"] - models["student_scratch"]["test_accuracy"]))


def test_mlflow_holds_one_parent_with_nested_stage_and_model_runs(flow_project):
    root, _, result = flow_project
    client, experiment = mlflow_client(root)
    runs = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id], max_results=200)}
    parent = runs[result["mlflow_run_id"]]
    assert parent.info.run_name == "pipeline" and parent.info.status == "FINISHED"
    assert parent.data.params["distill.temperature"] == str(tiny_params_value(root, "distill", "temperature"))
    stages = {r.info.run_name: r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(stages) == set(STAGE_ORDER)
    assert stages["distill"].data.params["distill.alpha"] == "1.0"
    assert len(stages["prepare"].data.tags["kdflow.data.transfer.md5"]) == 32
    assert stages["prepare"].data.tags["mlflow.source.name"] == "tasks/prepare.py"
    commit = git_commit(root)  # a temporary folder: no repository, so no commit to name
    assert stages["prepare"].data.tags.get("mlflow.source.git.commit") == (commit.sha if commit else None)

    model_runs = {r.info.run_name: r for r in runs.values() if r.data.tags.get("kdflow.model")}
    assert set(model_runs) == set(MODELS)
    for name, run in model_runs.items():
        assert TEST_METRICS | EPOCH_METRICS <= set(run.data.metrics), name
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, int(run.data.metrics["epochs_run"]) + 1))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert artifacts == {f"checkpoint/{name}.pt"}
    assert model_runs["student_distilled"].data.params["temperature"] == str(
        float(tiny_params_value(root, "distill", "temperature")))
    evaluate_artifacts = {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id, "report")}
    assert {"report/summary.json", "report/report.md", "report/accuracy_cost.png", "report/confusion_target.png",
            "report/reliability.png", "report/learning_curves.png"} <= evaluate_artifacts


def tiny_params_value(root, section, key):
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())[section][key]


def test_unchanged_rerun_is_skipped_by_dvcs_record_and_a_changed_temperature_reruns_downstream_only(flow_project,
                                                                                                    rerun_project):
    from flows.pipeline import pipeline

    root, params_path = rerun_project
    cold_distill = json.loads((flow_project[0] / "metrics" / "distill.json").read_text())
    summary_before = (root / "metrics" / "summary.json").read_bytes()
    students_before = (root / "artifacts" / "students" / "student_distilled.pt").read_bytes()

    # One stage after another in this process: what DVC's record decides is the subject, not where stages run.
    warm = pipeline(params_path=str(params_path), root=str(root), serial=True)
    assert warm["ran"] == [] and warm["cached"] == STAGE_ORDER
    assert (root / "metrics" / "summary.json").read_bytes() == summary_before

    # -S is written into params.yaml, as `dvc exp run -S` writes it, so dvc.lock records what the stages ran with.
    changed = pipeline(params_path=str(params_path), root=str(root), overrides=["distill.temperature=8"], serial=True)
    assert changed["ran"] == ["distill", "finetune", "evaluate"]
    # The baselines read no temperature: they stay as they are.
    assert changed["cached"] == ["prepare", "train_teacher", "soft_labels", "student_hard_labels", "student_scratch",
                                 "target_scratch"]
    assert yaml.safe_load(params_path.read_text())["distill"]["temperature"] == 8
    assert dvc(root, "status").strip() == "Data and pipelines are up to date."

    # Back to the first temperature: DVC's run cache holds those stages' outputs, so they are restored, not rerun.
    back = pipeline(params_path=str(params_path), root=str(root), overrides=["distill.temperature=4.0"], serial=True)
    assert back["ran"] == [] and back["cached"] == STAGE_ORDER
    assert (root / "artifacts" / "students" / "student_distilled.pt").read_bytes() == students_before
    assert json.loads((root / "metrics" / "distill.json").read_text()) == cold_distill

    forced = pipeline(params_path=str(params_path), root=str(root), force=["train_teacher"], serial=True)
    assert forced["ran"][0] == "train_teacher" and forced["cached"][0] == "prepare"


def dvc(root, *arguments: str) -> str:
    """The dvc command line, as a user runs it in the project (`python` on PATH is this interpreter)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *arguments], cwd=root, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_after_the_flow_dvc_sees_everything_current_and_repro_runs_nothing(copy_flowed, tmp_path):
    root = copy_flowed(tmp_path / "project")
    assert dvc(root, "status").strip() == "Data and pipelines are up to date."
    output = dvc(root, "repro")
    assert "Running stage" not in output and "Data and pipelines are up to date." in output
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGE_ORDER
    teacher_out = lock["stages"]["train_teacher"]["outs"][0]
    assert teacher_out["path"] == "artifacts/teacher/teacher.pt"
    assert (root / ".dvc" / "cache" / "files" / "md5" / teacher_out["md5"][:2] / teacher_out["md5"][2:]).read_bytes() \
        == (root / teacher_out["path"]).read_bytes()
    assert not (root / ".kdflow" / "prefect").exists(), "a second cache beside DVC's"


def test_the_stale_stages_are_those_dvc_status_lists(copy_flowed, tmp_path):
    """What `kdflow run` asks before forking its workers: nothing after the flow; after a new temperature, distill
    alone (its dependants' inputs change when it reruns), as `dvc status` says."""
    from kdflow import record

    root = copy_flowed(tmp_path / "project")
    assert record.stale_stages(root) == []
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"]["temperature"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert record.stale_stages(root) == ["distill"]
    listed = [line.removesuffix(":") for line in dvc(root, "status").splitlines() if not line.startswith("\t")]
    assert listed == ["distill"]


def test_a_run_forks_its_workers_server_early_only_when_a_stage_will_run(copy_flowed, tmp_path, monkeypatch):
    """`kdflow run` starts its workers' fork server while Prefect's server starts: not for a rerun with every stage
    current (it would only compete for the cores), nor for a serial run or a remote cluster; for a forced or
    changed stage, and for a first run without asking DVC."""
    from flows import runners

    forked = []
    # the fork server itself is process-wide (Dask's config, multiprocessing's server): recorded, not started here
    monkeypatch.setattr(runners, "prefork_local_workers", forked.append)
    root = copy_flowed(tmp_path / "project")

    def forks(project: Path, **choices) -> bool:
        forked.clear()
        runners.start_workers_early(project, **{"serial": False, "dask_address": None, "force": False,
                                                "overrides": False, **choices})
        return forked == ["flows.pipeline"]

    assert not forks(root)
    assert forks(root, force=True) and forks(root, overrides=True)
    assert not forks(root, serial=True, force=True) and not forks(root, dask_address="tcp://host:8786", force=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"]["temperature"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert forks(root)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert forks(fresh) and not (fresh / ".dvc").exists()  # decided without DVC


def test_the_flow_decides_at_once_the_stages_no_rerun_can_change(copy_flowed, tmp_path):
    """What the flow skips without asking DVC stage by stage: the current stages none of whose inputs a stage that
    runs writes. After a new temperature, distill runs, so the fine-tune of its student and the evaluation wait
    to be decided; forcing the teacher leaves only what reads the prepared data alone; a first run has none."""
    from kdflow import record

    root = copy_flowed(tmp_path / "project")
    names = STAGE_ORDER
    assert record.current_stages(root, names, set()) == set(names)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["distill"]["temperature"] += 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert record.current_stages(root, names, set()) == set(names) - {"distill", "finetune", "evaluate"}
    assert record.current_stages(root, names, {"train_teacher"}) == {"prepare", "student_scratch", "target_scratch"}
    (root / "dvc.lock").unlink()
    assert record.current_stages(root, names, set()) == set()


def test_a_deleted_output_is_restored_from_dvcs_run_cache_as_dvc_repro_would(copy_flowed, tmp_path):
    from flows.pipeline import pipeline

    root = copy_flowed(tmp_path / "project")
    params_path = root / "params.yaml"
    report = (root / "reports" / "report.md").read_bytes()
    (root / "reports" / "report.md").unlink()
    result = pipeline(params_path=str(params_path), root=str(root))
    assert result["ran"] == [] and result["cached"] == STAGE_ORDER
    assert (root / "reports" / "report.md").read_bytes() == report


def test_a_second_run_beside_a_running_one_stops_naming_it_and_the_outputs_stay_intact(copy_flowed, tmp_path,
                                                                                       prefect_server):
    """Two `kdflow run --force evaluate` started together in one project, and `dvc repro` beside them: whichever
    comes second stops at once with a message naming the process that holds the outputs; the first finishes and
    DVC's record is whole."""
    root = copy_flowed(tmp_path / "project")
    params_path = root / "params.yaml"
    # This worker's PREFECT_HOME (tests/conftest.py), whose database exists: two temporary servers creating one at
    # once would race.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    kdflow_run = [KDFLOW, "run", "--params", str(params_path), "--root", str(root), "--force", "evaluate", "--serial"]
    runs = [subprocess.Popen(kdflow_run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    rwlock = root / ".dvc" / "tmp" / "rwlock"
    try:
        deadline = time.monotonic() + 300
        while not (rwlock.exists() and any(f'"pid": {run.pid}' in rwlock.read_text() for run in runs)):
            assert all(run.poll() is None for run in runs), [run.communicate() for run in runs]
            assert time.monotonic() < deadline, "no run took the lock"
            time.sleep(0.05)
        holder = next(run for run in runs if f'"pid": {run.pid}' in rwlock.read_text())
        beside = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "evaluate"], cwd=root, env=env,
                                capture_output=True, text=True, timeout=300)
        assert holder.poll() is None, "the holder ended before dvc tried: the test proves nothing"
    finally:
        outputs = [run.communicate(timeout=600) for run in runs]
    (other,) = [run for run in runs if run is not holder]
    out, err = outputs[runs.index(other)]
    assert holder.returncode == 0, outputs[runs.index(holder)]
    assert other.returncode == 1, out + err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"Error: {root}: ") and "is being written by another run (pid " in message
    assert f"pid {holder.pid}: " in message and "kdflow" in message and " run --params" in message
    assert "Traceback" not in out + err
    assert beside.returncode != 0 and f"(PID {holder.pid})" in beside.stderr and " run --params" in beside.stderr
    assert dvc(root, "status").strip() == "Data and pipelines are up to date."

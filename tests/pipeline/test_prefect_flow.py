"""The tiny config through the real Prefect flow, MLflow store and files, in a temporary project."""

from __future__ import annotations

import json

import pytest

from kdflow.layout import MODELS, SPLITS
from kdflow.tracking import git_commit

pytestmark = pytest.mark.slow

TEST_METRICS = {"test_accuracy", "test_macro_f1", "test_nll", "test_ece", "parameters", "latency_ms"}
EPOCH_METRICS = {"train_loss", "val_loss", "val_accuracy"}


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory, tiny_params, write_params, prefect_server):
    """One cold flow run of the tiny config; the tests below read what it left."""
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("flow-project")
    params_path = write_params(root, tiny_params)
    result = pipeline(params_path=str(params_path), root=str(root))
    result["summary_distill"] = json.loads((root / "metrics" / "distill.json").read_text())
    return root, params_path, result


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdflow")
    return client, experiment


def test_cold_run_runs_every_stage_and_writes_every_artifact(flow_project):
    root, _, result = flow_project
    assert result["ran"] == ["prepare", "train_teacher", "soft_labels", "distill", "finetune", "evaluate"]
    assert result["cached"] == []
    for split in SPLITS:
        assert (root / "data" / "prepared" / f"{split}.parquet").stat().st_size > 0
    for model in MODELS:
        assert (root / "plots" / "curves" / f"{model}.csv").read_text().startswith("epoch,train_loss,val_loss")
    assert (root / "artifacts" / "teacher" / "teacher.pt").exists()
    assert (root / "artifacts" / "soft_labels" / "transfer.parquet").exists()
    report = json.loads((root / "artifacts" / "target" / "transfer_report.json").read_text())
    assert report["copied"] and set(report["reinitialised"]) == {"head.weight", "head.bias"}
    for picture in ("learning_curves.png", "comparison.png"):
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
    assert set(stages) == {"prepare", "train_teacher", "soft_labels", "distill", "finetune", "evaluate"}
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
    assert {"report/summary.json", "report/report.md", "report/comparison.png"} <= evaluate_artifacts


def tiny_params_value(root, section, key):
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())[section][key]


def test_unchanged_rerun_comes_from_cache_and_a_changed_temperature_reruns_downstream_only(flow_project):
    from flows.pipeline import pipeline

    root, params_path, cold = flow_project
    summary_before = (root / "metrics" / "summary.json").read_bytes()

    warm = pipeline(params_path=str(params_path), root=str(root))
    assert warm["ran"] == [] and len(warm["cached"]) == 6
    assert (root / "metrics" / "summary.json").read_bytes() == summary_before

    changed = pipeline(params_path=str(params_path), root=str(root), overrides=["distill.temperature=8"])
    assert changed["ran"] == ["distill", "finetune", "evaluate"]
    assert changed["cached"] == ["prepare", "train_teacher", "soft_labels"]

    # Prefect still holds the first run's results for the default temperature, but the files on disk are now from
    # temperature 8: those stages must run again rather than report a cache hit over the wrong files.
    back = pipeline(params_path=str(params_path), root=str(root))
    assert back["ran"] == ["distill", "finetune", "evaluate"]
    assert (root / "metrics" / "summary.json").read_bytes() != b""
    assert json.loads((root / "metrics" / "distill.json").read_text()) == cold["summary_distill"]

    forced = pipeline(params_path=str(params_path), root=str(root), force=["train_teacher"])
    assert forced["ran"][0] == "train_teacher" and forced["cached"][0] == "prepare"


def test_missing_output_reruns_its_stage(flow_project):
    from flows.pipeline import pipeline

    root, params_path, _ = flow_project
    (root / "reports" / "report.md").unlink()
    result = pipeline(params_path=str(params_path), root=str(root))
    assert result["ran"] == ["evaluate"]
    assert (root / "reports" / "report.md").exists()

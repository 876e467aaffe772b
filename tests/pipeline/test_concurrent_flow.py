"""The flow with its models trained at once, on a real local Dask cluster of two worker processes, against the same
flow run serially: the same bytes, the same MLflow run tree, the same lineage per model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdflow import graph, lineage
from kdflow.layout import MODELS, ProjectPaths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(flowed_project, tmp_path_factory, tiny_params, write_params, prefect_server):
    """The tiny config once on a 2-worker Dask cluster (the test run's shared cold run), once serially, each in a
    project of its own."""
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("serial")
    return {"dask": flowed_project,
            "serial": (root, pipeline(params_path=str(write_params(root, tiny_params)), root=str(root), serial=True))}


def client_for(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("kdflow").experiment_id


def test_both_runners_write_the_same_bytes_and_test_accuracy(two_runs):
    (dask_root, dask), (serial_root, serial) = two_runs["dask"], two_runs["serial"]
    assert dask["ran"] == serial["ran"] == list(graph.STAGES)
    assert (dask["schedule"], dask["slots"], serial["schedule"]) == ("dask", 2, "serial")
    locks = [yaml.safe_load((root / "dvc.lock").read_text())["stages"] for root in (dask_root, serial_root)]
    assert list(locks[0]) == list(locks[1]) == list(graph.STAGES)  # recorded in any order, listed in one
    for stage in graph.STAGES:
        if stage == "evaluate":  # its report holds measured latency
            continue
        assert locks[0][stage]["outs"] == locks[1][stage]["outs"], stage
    for model in MODELS:  # the checkpoints themselves, not only DVC's word for them
        paths = [ProjectPaths.at(root).checkpoint(model) for root in (dask_root, serial_root)]
        assert paths[0].read_bytes() == paths[1].read_bytes(), model
    accuracy = [{m: v["test_accuracy"] for m, v in run["summary"]["models"].items()} for run in (dask, serial)]
    assert accuracy[0] == accuracy[1]


def test_the_mlflow_run_tree_has_a_stage_run_per_model_under_the_pipeline(two_runs):
    root, result = two_runs["dask"]
    client, experiment_id = client_for(root)
    runs = {run.info.run_id: run for run in client.search_runs([experiment_id], max_results=500)}
    parent = runs[result["mlflow_run_id"]]
    assert parent.data.tags["kdflow.schedule"] == "dask" and parent.data.tags["kdflow.slots"] == "2"
    assert set(parent.data.metrics) >= {f"seconds.{stage}" for stage in graph.STAGES}
    stage_runs = {run.data.tags["kdflow.stage"]: run for run in runs.values()
                  if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(stage_runs) == set(graph.STAGES)
    models = {run.data.tags["kdflow.model"]: run for run in runs.values() if run.data.tags.get("kdflow.model")}
    assert set(models) == set(MODELS)
    for model, run in models.items():
        stage = stage_runs[graph.trainer(model)]
        assert run.data.tags["mlflow.parentRunId"] == stage.info.run_id, model
        assert run.info.status == stage.info.status == "FINISHED"


def test_each_models_lineage_is_its_own_upstream_stages(two_runs):
    root, _ = two_runs["dask"]
    client, experiment_id = client_for(root)
    for model in MODELS:
        [run] = client.search_runs([experiment_id], filter_string=f"tags.`kdflow.model` = '{model}'")
        stage = graph.trainer(model)
        chain = [r.data.tags["kdflow.stage"] for r in lineage.chain(client, run.info.run_id)]
        assert chain == [*graph.upstream(stage), stage], model
    # The student from scratch read only prepared data: its chain skips the teacher it no longer waits for.
    assert graph.upstream("student_scratch") == ["prepare"]


def test_an_unchanged_rerun_takes_every_stage_from_dvcs_record(copy_flowed, tmp_path, prefect_server):
    from flows.pipeline import pipeline

    root = copy_flowed(tmp_path / "project")
    again = pipeline(params_path=str(root / "params.yaml"), root=str(root), serial=True)
    assert again["ran"] == [] and again["cached"] == list(graph.STAGES)

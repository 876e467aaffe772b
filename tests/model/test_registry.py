"""A registered model's logged model belongs to its run's experiment (`kdflow`) and keeps its files beside the
project's store, never in MLflow's `Default` experiment under ./mlruns; a SQLite store in tmp_path."""

from __future__ import annotations

import os

import mlflow.pytorch
import torch
from mlflow.tracking import MlflowClient

from kdflow import registry, tracking
from kdflow.config import MLPSpec
from models import build_model


def test_the_logged_model_belongs_to_the_kdflow_experiment_and_its_artifact_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where MLflow's Default experiment would put ./mlruns
    torch.manual_seed(0)
    model = build_model(MLPSpec(arch="mlp", hidden=[4]), (6,), 3).eval()
    test_x, test_y = torch.randn(12, 6), torch.arange(12) % 3
    with tracking.start_run(tmp_path, "teacher", source="tasks/train_teacher.py") as run:
        run.log_params({"arch": "mlp"})
    uri = tracking.local_uri(tmp_path)
    candidate = registry.Candidate("teacher", model, test_x, test_y, run.run_id, "checkpoint md5", "test md5")

    decision = registry.register(run.client, uri, candidate)

    client = MlflowClient(tracking_uri=uri)
    logged = client.get_logged_model(decision.model_id)
    assert logged.experiment_id == run.experiment_id == client.get_experiment_by_name("kdflow").experiment_id
    assert logged.artifact_location.startswith((tmp_path / "mlartifacts").as_uri() + "/")
    assert (logged.source_run_id, logged.name, logged.params) == (run.run_id, "teacher", {"arch": "mlp"})
    assert [output.model_id for output in client.get_run(run.run_id).outputs.model_outputs] == [decision.model_id]
    version = client.get_model_version("kdflow-teacher", decision.version)
    assert version.source == f"models:/{decision.model_id}"
    assert not (tmp_path / "mlruns").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the process-wide URI is set back as it was: unset
    loaded = mlflow.pytorch.load_model(logged.artifact_location)
    torch.testing.assert_close(loaded(test_x), model(test_x))

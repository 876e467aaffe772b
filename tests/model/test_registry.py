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
    selection = registry.Selection(registry.ROLES[0], {"teacher": 0.5})
    candidate = registry.Candidate(selection, model, test_x, test_y, run.run_id, "checkpoint md5", "val md5")

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


def test_a_champion_saved_with_pickle_is_refused_not_unpickled(tmp_path, monkeypatch):
    """Another hand logged a pickled model as the champion: loading it would run the code its pickle names, even
    with MLflow's own switch turned on in the environment; the new candidate takes the title instead."""
    from kdflow.registry import ROLES, Candidate, Selection

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    torch.manual_seed(0)
    model = build_model(MLPSpec(arch="mlp", hidden=[4]), (6,), 3).eval()
    val_x, val_y = torch.randn(12, 6), torch.arange(12) % 3
    uri = tracking.local_uri(tmp_path)
    with tracking.start_run(tmp_path, "teacher", source="tasks/train_teacher.py") as run:
        pass
    client = MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    try:
        pickled = mlflow.pytorch.log_model(model, name="pickled", run_id=run.run_id, serialization_format="pickle")
        client.create_registered_model("kdflow-teacher")
        version = client.create_model_version("kdflow-teacher", pickled.model_uri, run_id=run.run_id).version
        client.set_registered_model_alias("kdflow-teacher", "champion", version)
    finally:
        mlflow.set_tracking_uri(None)
    selection = Selection(ROLES[0], {"teacher": 0.5})
    candidate = Candidate(selection, model, val_x, val_y, run.run_id, "checkpoint md5", "val md5")

    decision = registry.register(run.client, uri, candidate)

    assert decision.alias == "champion" and decision.champion_accuracy is None
    assert decision.reason.startswith(f"champion v{version} refused: Deserializing model using pickle is disallowed")
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"  # the user's setting, put back

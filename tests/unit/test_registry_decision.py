"""kdflow.registry's decision against a SQLite store in tmp_path: a version becomes champion only when it beats
the current champion on the candidate's validation set, scored here; otherwise challenger. Models with known
accuracies: the test inputs are one-hot class indicators, so a linear model's accuracy is set by its weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdflow import registry, tracking
from kdflow.registry import ROLES, Selection

STUDENT = ROLES[1]

CLASSES = 3
VAL_Y = torch.arange(CLASSES).repeat(4)
VAL_X = torch.eye(CLASSES)[VAL_Y]


def predicting(mapping: list[int]) -> nn.Module:
    """A linear model that predicts class mapping[c] for the indicator of class c."""
    model = nn.Linear(CLASSES, CLASSES)
    with torch.no_grad():
        model.weight.copy_(torch.eye(CLASSES)[mapping].T)
        model.bias.zero_()
    return model.eval()


def test_champion_only_on_beating_the_champion_on_the_same_validation_set(tmp_path):
    client, experiment_id = tracking.project_client(tmp_path)
    uri = tracking.tracking_uri(tmp_path)

    def register(model: nn.Module) -> registry.Decision:
        run_id = client.create_run(experiment_id, run_name="student_distilled").info.run_id
        selection = Selection(STUDENT, {"student_distilled": 0.9, "student_hard_labels": 0.8, "student_scratch": 0.5})
        candidate = registry.Candidate(selection, model, VAL_X, VAL_Y, run_id, "0" * 32, "1" * 32)
        return registry.register(client, uri, candidate)

    first = register(predicting([0, 1, 0]))  # 2 of 3 classes right
    assert (first.registered_name, first.version, first.alias, first.reason) == (
        "kdflow-student", "1", "champion", "no champion yet")
    assert first.candidate_accuracy == pytest.approx(2 / 3) and first.champion_accuracy is None

    better = register(predicting([0, 1, 2]))
    assert (better.version, better.alias, better.reason) == ("2", "champion", "beats champion v1 on validation")
    assert (better.candidate_accuracy, better.champion_accuracy) == (pytest.approx(1.0), pytest.approx(2 / 3))

    equal = register(predicting([0, 1, 2]))  # a tie keeps the champion
    assert (equal.alias, equal.reason, equal.champion_version) == ("challenger", "does not beat champion v2 on validation", "2")

    assert str(client.get_model_version_by_alias("kdflow-student", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("kdflow-student", "challenger").version) == "3"
    tags = client.get_model_version("kdflow-student", "3").tags
    assert tags["kdflow.decision"] == "challenger: does not beat champion v2 on validation"
    assert float(tags["kdflow.champion_val_accuracy"]) == pytest.approx(1.0)
    assert "kdflow.champion_test_accuracy" not in tags
    assert registry.describe(better) == ("kdflow-student v2 (student_distilled) -> champion (beats champion v1 on "
                                         "validation; val_accuracy 1.0000 vs champion 0.6667)")


def make_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()


def ensure_together(uri: str, barrier, rounds: int) -> int:
    """Make `rounds` new registered models, each when every process is ready to make it too."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for index in range(rounds):
        barrier.wait(timeout=60)  # a process that failed breaks it for the others
        registry.ensure_registered_model(client, f"kdflow-model-{index}", "made by whichever process came first")
    return rounds


def test_projects_evaluating_at_once_on_one_store_make_each_registered_model_once(tmp_path):
    """Two projects' evaluate stages against one store (a server's, here its SQLite database) both found the
    registered model missing and both made it: the second one's create failed, and its evaluate with it."""
    import multiprocessing

    from mlflow.tracking import MlflowClient

    processes, rounds = 2, 6
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("fork")  # no store is open here: each child opens its own
    with context.Manager() as manager, context.Pool(processes) as pool:
        pool.apply(make_store, (uri,))  # once, before they start: two processes making one database race
        barrier = manager.Barrier(processes)
        assert pool.starmap(ensure_together, [(uri, barrier, rounds)] * processes) == [rounds] * processes
    names = {m.name for m in MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()}
    assert names == {f"kdflow-model-{index}" for index in range(rounds)}

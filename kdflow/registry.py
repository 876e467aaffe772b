"""MLflow Model Registry: teacher, distilled student and target model, each a version with a signature and an example.

A new version takes the alias `champion` only when it beats the current champion on its task's test set, both
scored here on the same samples (a logged number may come from another test set); otherwise it becomes
`challenger`. The decision and both accuracies are logged in the evaluate run and on the version.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from kdflow.metrics import accuracy
from kdflow.training import predict_logits

# Pipeline model -> registered model name.
REGISTERED_MODELS = {"teacher": "kdflow-teacher", "student_distilled": "kdflow-student",
                     "target_finetuned": "kdflow-target"}
CHAMPION, CHALLENGER = "champion", "challenger"
INPUT_EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class Candidate:
    model_name: str  # the pipeline's name, e.g. "target_finetuned"
    model: torch.nn.Module
    test_x: torch.Tensor
    test_y: torch.Tensor
    run_id: str  # the model's own MLflow run, which the logged model belongs to
    checkpoint_md5: str
    test_set_md5: str


@dataclass(frozen=True)
class Decision:
    registered_name: str
    version: str
    alias: str
    candidate_accuracy: float
    champion_accuracy: float | None  # None: there was no champion yet
    champion_version: str | None
    reason: str
    model_id: str  # the logged model the version points at, in the candidate's run


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging and loading and its SQL registry store resolve the store through the process-wide
    tracking URI rather than the client's, so point it at ours for the duration; afterwards MLflow resolves it
    from MLFLOW_TRACKING_URI again (which `set_tracking_uri` also sets, and None unsets), put back as it was."""
    import mlflow

    environment = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if environment is not None:
            os.environ["MLFLOW_TRACKING_URI"] = environment


def _log_model(client, candidate: Candidate) -> str:
    """Log the model into its run in the safe `pt2` format (no pickled code); returns the logged model's id.

    The logged model is created in its run's experiment: left to `log_model`, it would go to the process's
    active experiment (MLflow's `Default`, with its files under ./mlruns)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    run = client.get_run(candidate.run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=candidate.model_name,
                                        source_run_id=candidate.run_id, params=run.data.params)
    example = candidate.test_x[:INPUT_EXAMPLE_ROWS].numpy()
    with torch.inference_mode():
        output = candidate.model(candidate.test_x[:INPUT_EXAMPLE_ROWS]).numpy()
    mlflow.pytorch.log_model(
        candidate.model, name=candidate.model_name, run_id=candidate.run_id, model_id=logged.model_id,
        signature=infer_signature(example, output), input_example=example, serialization_format="pt2",
        # Explicit, because inferring them imports and inspects the whole environment (slow, and not needed).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    return logged.model_id


def _champion_accuracy(client, registered_name: str, candidate: Candidate) -> tuple[str | None, float | None, str]:
    """The current champion's version and its accuracy on the candidate's test set."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(registered_name, CHAMPION)
    except MlflowException:
        return None, None, "no champion yet"
    model = mlflow.pytorch.load_model(f"models:/{registered_name}@{CHAMPION}")
    with torch.inference_mode():  # an exported (pt2) program has no eval(); it was exported in eval mode
        logits = model(candidate.test_x)
    if logits.shape[1] <= int(candidate.test_y.max()):
        return str(champion.version), None, f"champion v{champion.version} predicts {logits.shape[1]} classes, too few for this test set"
    return str(champion.version), accuracy(logits, candidate.test_y), ""


def register(client, tracking_uri: str, candidate: Candidate) -> Decision:
    """Log, register and alias one model; the caller logs the decision."""
    from mlflow.exceptions import MlflowException

    registered_name = REGISTERED_MODELS[candidate.model_name]
    with _global_tracking_uri(tracking_uri):
        model_id = _log_model(client, candidate)
        try:
            client.get_registered_model(registered_name)
        except MlflowException:
            client.create_registered_model(registered_name, description=f"kdflow's {candidate.model_name}")
        champion_version, champion_accuracy, reason = _champion_accuracy(client, registered_name, candidate)
        candidate_accuracy = accuracy(predict_logits(candidate.model, candidate.test_x), candidate.test_y)
        version = client.create_model_version(
            registered_name, f"models:/{model_id}", run_id=candidate.run_id, model_id=model_id,
            tags={"kdflow.checkpoint_md5": candidate.checkpoint_md5, "kdflow.test_set_md5": candidate.test_set_md5,
                  "kdflow.test_accuracy": candidate_accuracy},
        ).version
    version = str(version)  # an int from a SQL store, a string over REST
    if champion_version is None or champion_accuracy is None:
        alias = CHAMPION
    elif candidate_accuracy > champion_accuracy:
        alias, reason = CHAMPION, f"beats champion v{champion_version}"
    else:
        alias, reason = CHALLENGER, f"does not beat champion v{champion_version}"
    client.set_registered_model_alias(registered_name, alias, version)
    client.set_model_version_tag(registered_name, version, "kdflow.decision", f"{alias}: {reason}")
    if champion_accuracy is not None:
        client.set_model_version_tag(registered_name, version, "kdflow.champion_test_accuracy", champion_accuracy)
    return Decision(registered_name, version, alias, candidate_accuracy, champion_accuracy, champion_version, reason,
                    model_id)


def log_decisions(tracked, decisions: list[Decision]) -> None:
    """Each decision and both accuracies in the evaluate run: tags for the words, metrics for the numbers."""
    tags, metrics = {}, {}
    for decision in decisions:
        prefix = f"registry.{decision.registered_name}"
        tags[f"{prefix}.version"] = decision.version
        tags[f"{prefix}.decision"] = f"{decision.alias}: {decision.reason}"
        metrics[f"{prefix}.candidate_test_accuracy"] = decision.candidate_accuracy
        if decision.champion_accuracy is not None:
            tags[f"{prefix}.champion_version"] = decision.champion_version
            metrics[f"{prefix}.champion_test_accuracy"] = decision.champion_accuracy
    tracked.set_tags(tags)
    tracked.log_metrics(metrics)


def describe(decision: Decision) -> str:
    champion = "none" if decision.champion_accuracy is None else f"{decision.champion_accuracy:.4f}"
    return (f"{decision.registered_name} v{decision.version} -> {decision.alias} ({decision.reason}; "
            f"test_accuracy {decision.candidate_accuracy:.4f} vs champion {champion})")

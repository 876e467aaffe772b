"""MLflow Model Registry: one registered model per role (teacher, student, target), its champion chosen by evidence.

Each role's candidates are the models the run trained for it: the technique's model first, then its baselines
(distilled vs hard-label and from-scratch students; fine-tuned vs from-scratch target model). The run's best
candidate on the role's validation set is registered, a tie going to the technique; it takes the alias `champion`
only when it beats the current champion on that validation set, both scored here on the same samples; otherwise it
becomes `challenger`. The test set never decides: it stays an unbiased measure of what was chosen.
"""

from __future__ import annotations

import contextlib
import os
import unittest.mock
from dataclasses import dataclass
from typing import Iterator

import torch

from kdflow.layout import CATALOGUE, models_of
from kdflow.metrics import accuracy
from kdflow.tracking import already_exists
from kdflow.training import predict_logits

CHAMPION, CHALLENGER = "champion", "challenger"
INPUT_EXAMPLE_ROWS = 5
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"  # MLflow's; kdflow holds it off while it loads a champion


@dataclass(frozen=True)
class Role:
    registered_name: str
    technique: str | None  # what beating the baselines would show, e.g. "distillation"; None: no baseline
    candidates: tuple[str, ...]  # the technique's model first, then its baselines

    @property
    def val_split(self) -> str:
        """The validation set of the candidates' task: each role's candidates share one (the catalogue's)."""
        return f"{CATALOGUE[self.candidates[0]].task}_val"


ROLES = (
    Role("kdflow-teacher", None, models_of("teacher")),
    Role("kdflow-student", "distillation", models_of("student")),
    Role("kdflow-target", "transfer", models_of("target")),
)


@dataclass(frozen=True)
class Selection:
    """A role's candidates scored on validation, and the one the run puts forward."""
    role: Role
    val_accuracy: dict[str, float]  # candidate -> accuracy on the role's validation set

    @property
    def winner(self) -> str:
        return max(self.role.candidates, key=lambda name: self.val_accuracy[name])  # a tie: the earlier, the technique

    def reason(self) -> str:
        if len(self.role.candidates) == 1:
            return "the run's only candidate"
        scores = ", ".join(f"{name} {self.val_accuracy[name]:.2%}" for name in
                           sorted(self.role.candidates, key=lambda name: -self.val_accuracy[name]))
        return f"best validation accuracy of the run's candidates ({scores})"

    def verdict(self) -> str | None:
        """Whether the technique beat its baselines on validation, in words; None for a role without baselines."""
        if self.role.technique is None:
            return None
        model, *baselines = self.role.candidates
        best = max(baselines, key=lambda name: self.val_accuracy[name])
        ours, theirs = self.val_accuracy[model], self.val_accuracy[best]
        if self.winner == model:
            return (f"{self.role.technique} held up: {model} {ours:.2%} on validation vs {theirs:.2%} for its best "
                    f"baseline {best}")
        return (f"{self.role.technique} lost to its baseline: {best} {theirs:.2%} on validation vs {ours:.2%} for "
                f"{model}, so {best} is the {self.role.registered_name} candidate")


@dataclass(frozen=True)
class Candidate:
    selection: Selection
    model: torch.nn.Module  # the selection's winner
    val_x: torch.Tensor
    val_y: torch.Tensor
    run_id: str  # the model's own MLflow run, which the logged model belongs to
    checkpoint_md5: str
    val_set_md5: str

    @property
    def model_name(self) -> str:
        return self.selection.winner


@dataclass(frozen=True)
class Decision:
    registered_name: str
    model_name: str
    version: str
    alias: str
    candidate_accuracy: float  # on validation, as the champion's
    champion_accuracy: float | None  # None: there was no champion yet
    champion_version: str | None
    reason: str
    selection: Selection
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
    example = candidate.val_x[:INPUT_EXAMPLE_ROWS].numpy()
    with torch.inference_mode():
        output = candidate.model(candidate.val_x[:INPUT_EXAMPLE_ROWS]).numpy()
    mlflow.pytorch.log_model(
        candidate.model, name=candidate.model_name, run_id=candidate.run_id, model_id=logged.model_id,
        signature=infer_signature(example, output), input_example=example, serialization_format="pt2",
        # Explicit, because inferring them imports and inspects the whole environment (slow, and not needed).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    return logged.model_id


def _champion_accuracy(client, registered_name: str, candidate: Candidate) -> tuple[str | None, float | None, str]:
    """The current champion's version and its accuracy on the candidate's validation set."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(registered_name, CHAMPION)
    except MlflowException:
        return None, None, "no champion yet"
    # Only the pickle-free pt2 format kdflow logs: unpickling a champion logged by another hand runs code it names.
    try:
        with unittest.mock.patch.dict(os.environ, {PICKLE_SWITCH: "false"}):  # put back as it was after
            model = mlflow.pytorch.load_model(f"models:/{registered_name}@{CHAMPION}")
    except MlflowException as exc:
        return str(champion.version), None, f"champion v{champion.version} refused: {str(exc).splitlines()[0]}"
    with torch.inference_mode():  # an exported (pt2) program has no eval(); it was exported in eval mode
        logits = model(candidate.val_x)
    if logits.shape[1] <= int(candidate.val_y.max()):
        return (str(champion.version), None,
                f"champion v{champion.version} predicts {logits.shape[1]} classes, too few for this validation set")
    return str(champion.version), accuracy(logits, candidate.val_y), ""


def ensure_registered_model(client, name: str, description: str) -> None:
    """The registered model `name`, made when missing. Two projects evaluating at once against one server can both
    find it missing; the second one's create then says it exists, which is all it wanted."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if not already_exists(exc):
            raise


def register(client, tracking_uri: str, candidate: Candidate) -> Decision:
    """Log, register and alias the run's candidate for one role; the caller logs the decision."""
    registered_name = candidate.selection.role.registered_name
    with _global_tracking_uri(tracking_uri):
        model_id = _log_model(client, candidate)
        ensure_registered_model(client, registered_name, f"kdflow's best of "
                                f"{', '.join(candidate.selection.role.candidates)}, chosen on validation")
        champion_version, champion_accuracy, reason = _champion_accuracy(client, registered_name, candidate)
        candidate_accuracy = accuracy(predict_logits(candidate.model, candidate.val_x), candidate.val_y)
        version = client.create_model_version(
            registered_name, f"models:/{model_id}", run_id=candidate.run_id, model_id=model_id,
            tags={"kdflow.model": candidate.model_name, "kdflow.checkpoint_md5": candidate.checkpoint_md5,
                  "kdflow.val_set_md5": candidate.val_set_md5, "kdflow.val_accuracy": candidate_accuracy,
                  "kdflow.selection": candidate.selection.reason()},
        ).version
    version = str(version)  # an int from a SQL store, a string over REST
    if champion_version is None or champion_accuracy is None:
        alias = CHAMPION
    elif candidate_accuracy > champion_accuracy:
        alias, reason = CHAMPION, f"beats champion v{champion_version} on validation"
    else:
        alias, reason = CHALLENGER, f"does not beat champion v{champion_version} on validation"
    client.set_registered_model_alias(registered_name, alias, version)
    client.set_model_version_tag(registered_name, version, "kdflow.decision", f"{alias}: {reason}")
    if champion_accuracy is not None:
        client.set_model_version_tag(registered_name, version, "kdflow.champion_val_accuracy", champion_accuracy)
    return Decision(registered_name, candidate.model_name, version, alias, candidate_accuracy, champion_accuracy,
                    champion_version, reason, candidate.selection, model_id)


def log_decisions(tracked, decisions: list[Decision]) -> None:
    """Each decision, why, and the numbers behind it in the evaluate run: tags for the words, metrics for numbers."""
    tags, metrics = {}, {}
    for decision in decisions:
        prefix = f"registry.{decision.registered_name}"
        tags[f"{prefix}.version"] = decision.version
        tags[f"{prefix}.model"] = decision.model_name
        tags[f"{prefix}.decision"] = f"{decision.alias}: {decision.reason}"
        tags[f"{prefix}.selection"] = decision.selection.reason()
        metrics[f"{prefix}.candidate_val_accuracy"] = decision.candidate_accuracy
        metrics.update({f"{prefix}.val_accuracy.{name}": value
                        for name, value in decision.selection.val_accuracy.items()})
        if decision.champion_accuracy is not None:
            tags[f"{prefix}.champion_version"] = decision.champion_version
            metrics[f"{prefix}.champion_val_accuracy"] = decision.champion_accuracy
        if decision.selection.verdict() is not None:
            tags[f"kdflow.verdict.{decision.selection.role.technique}"] = decision.selection.verdict()
    tracked.set_tags(tags)
    tracked.log_metrics(metrics)


def describe(decision: Decision) -> str:
    champion = "none" if decision.champion_accuracy is None else f"{decision.champion_accuracy:.4f}"
    return (f"{decision.registered_name} v{decision.version} ({decision.model_name}) -> {decision.alias} "
            f"({decision.reason}; val_accuracy {decision.candidate_accuracy:.4f} vs champion {champion})")

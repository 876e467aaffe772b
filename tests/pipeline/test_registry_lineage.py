"""Model registry (champion/challenger) and run lineage, through the real stages and a real MLflow SQLite store."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from kdflow.checkpoints import load_model, save_model
from kdflow.config import load_params
from kdflow.datasets import load_split
from kdflow.layout import ProjectPaths
from tasks import distill, evaluate, finetune, prepare, soft_labels, train_teacher

pytestmark = pytest.mark.slow

STAGES = [prepare, train_teacher, soft_labels, distill, finetune, evaluate]
GIT = ["git", "-c", "user.name=kdflow tests", "-c", "user.email=tests@kdflow.invalid"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_params, write_params):
    """The tiny config through every stage once, as `dvc repro` runs them, in a git repository (for the commit)."""
    root = tmp_path_factory.mktemp("registry-project")
    params_path = write_params(root, tiny_params)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*GIT, "add", "params.yaml"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "tiny"], cwd=root, check=True)
    params, paths = load_params(params_path), ProjectPaths.at(root)
    for stage in STAGES:
        stage.run(params, paths)
    return root, params, paths


def client_for(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client, client.get_experiment_by_name("kdflow").experiment_id


def runs_named(client, experiment_id, name):
    return client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time DESC"])


def test_teacher_student_and_target_are_registered_with_signature_and_example(project):
    import mlflow
    import mlflow.pytorch

    root, _, paths = project
    client, experiment_id = client_for(root)
    for registered, model_name, test_split in [("kdflow-teacher", "teacher", "source_test"),
                                               ("kdflow-student", "student_distilled", "source_test"),
                                               ("kdflow-target", "target_finetuned", "target_test")]:
        champion = client.get_model_version_by_alias(registered, "champion")
        assert str(champion.version) == "1"
        assert champion.run_id == runs_named(client, experiment_id, model_name)[0].info.run_id
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        try:
            info = mlflow.models.get_model_info(f"models:/{registered}/1")
            loaded = mlflow.pytorch.load_model(f"models:/{registered}@champion")
        finally:
            mlflow.set_tracking_uri(None)
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 40)
        assert info.saved_input_example_info is not None
        model, _ = load_model(paths.checkpoint(model_name))
        test = load_split(paths.split(test_split), (40,))
        torch.testing.assert_close(loaded(test.x), model(test.x))


def constant_predictor(paths: ProjectPaths, digit_index: int) -> None:
    """Overwrite the fine-tuned target model with one that always predicts `digit_index` (zero weights, one bias)."""
    model, meta = load_model(paths.checkpoint("target_finetuned"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.head.bias[digit_index] = 1.0
    save_model(paths.checkpoint("target_finetuned"), model, meta["spec"], tuple(meta["input_shape"]),
               meta["class_names"])


def test_champion_moves_only_to_a_version_that_beats_it_on_the_target_test_set(project):
    root, params, paths = project
    client, experiment_id = client_for(root)
    labels = load_split(paths.split("target_test")).y.numpy()
    shares = np.bincount(labels) / len(labels)  # a constant predictor's accuracy is its class's share
    rarest, commonest = int(shares.argmin()), int(shares.argmax())
    assert shares[rarest] < shares[commonest]

    def evaluate_with(digit_index):
        constant_predictor(paths, digit_index)
        evaluate.run(params, paths)
        evaluate_run = runs_named(client, experiment_id, "evaluate")[0]
        version = evaluate_run.data.tags["registry.kdflow-target.version"]
        return evaluate_run, version, evaluate_run.data.tags["registry.kdflow-target.decision"], evaluate_run.data.metrics

    def alias(name):
        return str(client.get_model_version_by_alias("kdflow-target", name).version)

    # An operator retires the trained champion; the next version takes the title unopposed.
    client.delete_registered_model_alias("kdflow-target", "champion")
    _, weak, decision, metrics = evaluate_with(rarest)
    assert decision == "champion: no champion yet" and alias("champion") == weak
    assert metrics["registry.kdflow-target.candidate_test_accuracy"] == pytest.approx(shares[rarest])
    assert "registry.kdflow-target.champion_test_accuracy" not in metrics

    _, strong, decision, metrics = evaluate_with(commonest)
    assert decision == f"champion: beats champion v{weak}" and alias("champion") == strong
    assert metrics["registry.kdflow-target.candidate_test_accuracy"] == pytest.approx(shares[commonest])
    assert metrics["registry.kdflow-target.champion_test_accuracy"] == pytest.approx(shares[rarest])
    assert client.get_model_version("kdflow-target", strong).tags["kdflow.decision"] == decision

    _, worse, decision, metrics = evaluate_with(rarest)
    assert decision == f"challenger: does not beat champion v{strong}"
    assert alias("champion") == strong and alias("challenger") == worse
    assert metrics["registry.kdflow-target.candidate_test_accuracy"] == pytest.approx(shares[rarest])
    assert metrics["registry.kdflow-target.champion_test_accuracy"] == pytest.approx(shares[commonest])

    evaluate_run, tie, decision, _ = evaluate_with(commonest)  # a tie is not a win
    assert decision == f"challenger: does not beat champion v{strong}"
    assert alias("champion") == strong and alias("challenger") == tie
    # teacher and student were re-registered unchanged on every evaluation: ties, so the first stays champion
    assert str(client.get_model_version_by_alias("kdflow-teacher", "champion").version) == "1"
    assert evaluate_run.data.tags["registry.kdflow-teacher.decision"] == "challenger: does not beat champion v1"


def test_every_run_carries_commit_input_digests_and_upstream_run_ids(project):
    from kdflow.artifacts import file_digest

    root, _, paths = project
    client, experiment_id = client_for(root)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    stage_runs = {name: runs_named(client, experiment_id, name)[-1]
                  for name in ("prepare", "train_teacher", "soft_labels", "distill", "finetune")}
    ids = {name: run.info.run_id for name, run in stage_runs.items()}
    for run in client.search_runs([experiment_id], max_results=500):
        assert run.data.tags["mlflow.source.git.commit"].startswith(head), run.info.run_name
    distill_tags = stage_runs["distill"].data.tags
    assert distill_tags["kdflow.upstream.soft_labels"] == ids["soft_labels"]
    assert distill_tags["kdflow.upstream.train_teacher"] == ids["train_teacher"]
    assert distill_tags["kdflow.upstream.prepare"] == ids["prepare"]
    assert distill_tags["kdflow.input.artifacts/soft_labels/transfer.parquet.md5"] == \
        stage_runs["soft_labels"].data.tags["kdflow.output.artifacts/soft_labels/transfer.parquet.md5"]
    assert stage_runs["soft_labels"].data.tags["kdflow.input.artifacts/teacher/teacher.pt.md5"] == \
        runs_named(client, experiment_id, "teacher")[-1].data.tags["kdflow.checkpoint_md5"]
    target_run = runs_named(client, experiment_id, "target_finetuned")[-1]
    assert target_run.data.tags["kdflow.upstream.distill"] == ids["distill"]
    assert target_run.data.tags["kdflow.input.data/prepared/target_train.parquet.md5"] == \
        file_digest(paths.split("target_train"))
    assert not any(key.startswith("kdflow.upstream.") for key in stage_runs["prepare"].data.tags)


def test_lineage_command_prints_the_chain_from_data_to_target_model(project):
    root, _, _ = project
    client, experiment_id = client_for(root)
    target_run = runs_named(client, experiment_id, "target_finetuned")[-1]
    output = subprocess.run([sys.executable, "-m", "kdflow", "lineage", target_run.info.run_id, "--root", str(root)],
                            capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    lines = output.stdout.splitlines()
    assert lines[0] == "data -> teacher -> soft labels -> student -> target model"
    for step, stage in [("data", "prepare"), ("teacher", "train_teacher"), ("soft labels", "soft_labels"),
                        ("student", "distill"), ("target model", "finetune")]:
        run_id = runs_named(client, experiment_id, stage)[-1].info.run_id
        assert any(line.startswith(f"{step}: {stage} run {run_id}") for line in lines), (step, lines)
    distill_id = runs_named(client, experiment_id, "distill")[-1].info.run_id
    assert any("artifacts/students/student_distilled.pt" in line and line.endswith(f"<- distill run {distill_id}")
               for line in lines)
    assert any(line.strip().startswith(f"model target_finetuned run {target_run.info.run_id}") for line in lines)

    unknown = subprocess.run([sys.executable, "-m", "kdflow", "lineage", "0" * 32, "--root", str(root)],
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "0" * 32 in unknown.stderr

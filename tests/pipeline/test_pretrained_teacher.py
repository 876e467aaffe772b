"""A teacher started from saved weights: `epochs: 0` labels with exactly those weights, and its run names them."""

from __future__ import annotations

import torch
import pytest
from safetensors.torch import load_file, save_file

from kdflow.artifacts import file_digest
from kdflow.checkpoints import load_model
from kdflow.config import load_params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.metrics import accuracy
from kdflow.pretrained import WeightsError
from kdflow.training import predict_logits
from models import build_model
from tasks import train_teacher

pytestmark = pytest.mark.slow
WEIGHTS = "data/raw/teacher.safetensors"


def teacher_runs(root, tag: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kdflow")
    return client, client.search_runs([experiment.experiment_id], f"tags.{tag}", order_by=["attributes.start_time DESC"])


def test_a_teacher_from_weights_with_no_epochs_scores_as_the_weights_do(project_copy, tiny_params, write_params):
    root = project_copy()
    paths = ProjectPaths.at(root)
    card = read_dataset_card(paths.dataset_card)
    shape = card.input_shape
    trained, _ = load_model(paths.checkpoint("teacher"), load_params(root / "params.yaml").train_teacher.model)
    paths.raw_dir.mkdir(parents=True, exist_ok=True)
    save_file(trained.state_dict(), root / WEIGHTS)
    teacher = {**tiny_params["train_teacher"], "weights": WEIGHTS, "train": {"epochs": 0}}
    params = load_params(write_params(root, {**tiny_params, "train_teacher": teacher}))

    metrics = train_teacher.run(params, paths)

    direct = build_model(params.train_teacher.model, shape, len(card.source_classes)).eval()
    direct.load_state_dict(load_file(root / WEIGHTS))
    test, val = (load_split(paths.split(name), shape) for name in ("source_test", "source_val"))
    labelled, _ = load_model(paths.checkpoint("teacher"), params.train_teacher.model)
    assert accuracy(predict_logits(labelled, test.x), test.y) == accuracy(predict_logits(direct, test.x), test.y)
    assert metrics["teacher_val_accuracy"] == accuracy(predict_logits(direct, val.x), val.y)
    assert metrics["teacher_best_epoch"] == 0
    for name, tensor in load_file(root / WEIGHTS).items():
        assert torch.equal(labelled.state_dict()[name], tensor), name
    _, runs = teacher_runs(root, "kdflow.stage = 'train_teacher'")
    assert runs[0].data.tags["kdflow.teacher_weights.md5"] == file_digest(root / WEIGHTS)
    assert runs[0].data.tags["kdflow.teacher_weights.path"] == WEIGHTS

    # The same weights as a registered model: read from the checkpoint its run logged, named by URI and version.
    client, models = teacher_runs(root, "kdflow.model = 'teacher'")
    checkpoint_md5 = models[0].data.tags["kdflow.checkpoint_md5"]
    client.create_registered_model("kdflow-teacher")
    version = client.create_model_version("kdflow-teacher", f"runs:/{models[0].info.run_id}/checkpoint",
                                          run_id=models[0].info.run_id, tags={"kdflow.checkpoint_md5": checkpoint_md5})
    client.set_registered_model_alias("kdflow-teacher", "champion", version.version)
    uri = {**teacher, "weights": "models:/kdflow-teacher@champion"}
    assert train_teacher.run(load_params(write_params(root, {**tiny_params, "train_teacher": uri})), paths) == metrics
    _, runs = teacher_runs(root, "kdflow.stage = 'train_teacher'")
    assert {key: runs[0].data.tags[f"kdflow.teacher_weights.{key}"] for key in ("uri", "version", "md5")} == {
        "uri": "models:/kdflow-teacher@champion", "version": str(version.version), "md5": checkpoint_md5}


class Pickled:
    """Any class: a file that names it would run code on load."""


def test_weights_that_would_run_code_or_miss_layers_are_refused_before_anything_is_written(
        project_copy, tiny_params, write_params):
    root = project_copy()
    paths = ProjectPaths.at(root)
    before = file_digest(paths.checkpoint("teacher"))
    paths.raw_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"conv.weight": torch.zeros(1), "hook": Pickled()}, root / "data/raw/teacher.pt")
    teacher = {**tiny_params["train_teacher"], "weights": "data/raw/teacher.pt", "train": {"epochs": 0}}
    params = load_params(write_params(root, {**tiny_params, "train_teacher": teacher}))
    with pytest.raises(WeightsError, match=r"^data/raw/teacher.pt \(train_teacher.weights\): refused to load "
                                           r"\(UnpicklingError: .*\); fix: save a plain state dict"):
        train_teacher.run(params, paths)
    torch.save({"not.a.layer": torch.zeros(3)}, root / "data/raw/teacher.pt")
    with pytest.raises(WeightsError, match=r"^data/raw/teacher.pt \(train_teacher.weights\): the weights do not give "
                                           r"\d+ of the teacher's tensors, e.g. '.+' \(not in the weights\)"):
        train_teacher.run(params, paths)
    assert file_digest(paths.checkpoint("teacher")) == before


@pytest.mark.parametrize(("teacher", "message"), [
    ({"weights": "data/raw/missing.pt"},
     "Error: data/raw/missing.pt (train_teacher.weights): no such file; fix: put the weights there or correct "
     "train_teacher.weights"),
    ({"model": {"arch": "hf", "config": {"model_type": "no_such_type"}}},
     "Error: arch hf: cannot build 'no_such_type' ("),
])
def test_the_stage_command_says_what_is_wrong_in_one_line(project_copy, tiny_params, write_params, teacher, message):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from cli.main import app

    root = project_copy()
    write_params(root, {**tiny_params, "train_teacher": {**tiny_params["train_teacher"], **teacher}})
    result = CliRunner().invoke(app, ["stage", "train_teacher", "--root", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1].startswith(message), result.output
    if "weights" in teacher:  # read while the stage declares its training, before any MLflow run opens
        assert MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_experiment_by_name("kdflow") is None

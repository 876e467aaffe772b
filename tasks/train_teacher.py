"""Stage `train_teacher`: pretrain the teacher on the labelled source task, early stopping on validation.

With `train_teacher.weights` the teacher starts from those weights (kdflow.pretrained); with `epochs: 0` as well,
it is not trained at all and only labels the transfer set. The runs name where the weights came from.
"""

from __future__ import annotations

import tempfile

import torch

from kdflow.batches import Rows, training_data
from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.pretrained import Weights, load_into, read_weights
from kdflow.sources import resolve
from kdflow.stage import train_model, training_stage_run, write_stage_metrics
from kdflow.training import Training
from models import build_model


def starting_weights(params: Params, paths: ProjectPaths) -> Weights | None:
    """The weights the teacher starts from, read and checked (a registered model's are downloaded and dropped)."""
    if params.train_teacher.weights is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        return read_weights(params.train_teacher.weights, paths.root, scratch)


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the teacher, on the labelled source task, from its starting weights if any."""
    spec = params.train_teacher
    card = read_dataset_card(paths.dataset_card)
    input_shape, classes = card.input_shape, card.source_classes
    train = training_data([Rows(paths.split("source_train"))], ["label"], input_shape, spec.train)
    val = load_split(paths.split("source_val"), input_shape)
    weights = starting_weights(params, paths)

    def teacher() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        model = build_model(spec.model, input_shape, len(classes))
        if weights is not None:
            load_into(model, weights, spec.weights, whole=spec.train.epochs == 0)
        return model

    origin = {}
    if weights is not None:  # weights that do not fit stop the stage here, before it writes or tracks anything
        origin = {**weights.origin, "layers_copied": len(load_into(
            build_model(spec.model, input_shape, len(classes)), weights, spec.weights, whole=spec.train.epochs == 0).copied)}
    return [Training("teacher", teacher, spec.model, spec.train, train, (val.x, val.y),
                     params.seed, input_shape, classes, extra_params={f"weights_{k}": v for k, v in origin.items()})]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    weights = params.train_teacher.weights
    local = [resolve(paths.root, weights)] if weights and not weights.startswith("models:/") else []
    with training_stage_run(paths, "train_teacher", params, parent_run_id, lambda: trainings(params, paths),
                            extra_inputs=local) as (tracked, [training]):
        tracked.set_tags({f"kdflow.teacher_weights.{key.removeprefix('weights_')}": value
                          for key, value in training.extra_params.items()})
        result = train_model(tracked, paths, training)
        metrics = {"teacher_val_accuracy": result.best["val_accuracy"], "teacher_val_loss": result.best["val_loss"],
                   "teacher_best_epoch": result.best_epoch}
        write_stage_metrics(paths, "train_teacher", metrics)
        tracked.log_metrics(metrics)
    return metrics

"""Stage `train_teacher`: pretrain the teacher on the labelled source task, early stopping on validation."""

from __future__ import annotations

import torch

from kdflow.batches import Rows, training_data
from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_run, train_model, write_stage_metrics
from kdflow.training import Training
from models import build_model


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the teacher, on the labelled source task."""
    spec = params.train_teacher
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    classes = card["source_classes"]
    train = training_data([Rows(paths.split("source_train"))], ["label"], input_shape, spec.train)
    val = load_split(paths.split("source_val"), input_shape)

    def teacher() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        return build_model(spec.model, input_shape, len(classes))

    return [Training("teacher", teacher, spec.model, spec.train, train, (val.x, val.y),
                     params.seed, input_shape, classes)]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    with stage_run(paths, "train_teacher", params, parent_run_id) as tracked:
        result = train_model(tracked, paths, trainings(params, paths)[0])
        metrics = {"teacher_val_accuracy": result.best["val_accuracy"], "teacher_val_loss": result.best["val_loss"],
                   "teacher_best_epoch": result.best_epoch}
        write_stage_metrics(paths, "train_teacher", metrics)
        tracked.log_metrics(metrics)
    return metrics

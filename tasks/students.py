"""What the three student stages share: the sets the teacher labelled, and declaring and training one student.

Each student is a stage of its own (distill, student_hard_labels, student_scratch), so each starts as soon as its
inputs exist: the student from scratch needs only the prepared data. All three share the architecture, the initial
weights (the seed) and the optimiser settings (`distill.student`, `distill.train`); each stage's `trainings`
declares its one student as a kdflow.training.Training.
"""

from __future__ import annotations

from typing import Callable

import torch

from kdflow.batches import Rows, TrainingData, training_data
from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.graph import SOFT_LABELLED
from kdflow.layout import ProjectPaths
from kdflow.stage import train_model, training_stage_run, write_stage_metrics
from kdflow.training import Training
from models import build_model


def distillation_rows(paths: ProjectPaths) -> list[Rows]:
    """The splits the student learns from, each with its teacher logits (labels are -1 on the transfer set)."""
    return [Rows(paths.split(name), paths.soft_labels(name)) for name in SOFT_LABELLED]


def distillation_data(params: Params, paths: ProjectPaths, input_shape: tuple[int, ...]) -> TrainingData:
    """source_train + transfer with the teacher's logits and the true labels as targets; held in memory or
    streamed from disk by its size (train.memory_budget_mb)."""
    return training_data(distillation_rows(paths), ["logits", "label"], input_shape, params.distill.train)


def student(params: Params, paths: ProjectPaths, name: str,
            data: Callable[[tuple[int, ...]], TrainingData], **declared) -> Training:
    """Student `name`: the shared architecture and initialisation, trained on `data(input_shape)` and validated
    on source_val; `declared` are Training's other fields (loss_fn, extra_params)."""
    spec = params.distill
    card = read_dataset_card(paths.dataset_card)
    input_shape, classes = card.input_shape, card.source_classes
    val = load_split(paths.split("source_val"), input_shape)

    def fresh_student() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        return build_model(spec.student, input_shape, len(classes))

    return Training(name, fresh_student, spec.student, spec.train, data(input_shape), (val.x, val.y), params.seed,
                    input_shape, classes, **declared)


def train_student(params: Params, paths: ProjectPaths, parent_run_id: str | None, stage: str,
                  trainings: Callable[[Params, ProjectPaths], list[Training]],
                  extra_metrics: Callable[[Training], dict] = lambda training: {}) -> dict:
    """Train the one student stage `stage` declares (its `trainings`) in the stage's MLflow run. Writes the
    stage's metrics: the student's best validation accuracy, its training samples and `extra_metrics(training)`
    (computed before the training, so it may refuse the model)."""
    with training_stage_run(paths, stage, params, parent_run_id, lambda: trainings(params, paths)) as (
            tracked, [training]):
        metrics = extra_metrics(training)
        result = train_model(tracked, paths, training)
        metrics = {**metrics, f"{training.name}_val_accuracy": result.best["val_accuracy"],
                   f"{training.name}_train_samples": training.data.num_samples}
        write_stage_metrics(paths, stage, metrics)
        tracked.log_metrics(metrics)
    return metrics

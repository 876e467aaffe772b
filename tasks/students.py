"""What the three student stages share: the set the teacher labelled, and training one student on it.

Each student is a stage of its own (distill, student_hard_labels, student_scratch), so each starts as soon as its
inputs exist: the student from scratch needs only the prepared data. All three share the architecture, the initial
weights (the seed) and the optimiser settings (`distill.student`, `distill.train`).
"""

from __future__ import annotations

import numpy as np
import torch

from kdflow.artifacts import ArtifactError
from kdflow.config import Params
from kdflow.datasets import Split, load_split, read_dataset_card, read_table
from kdflow.graph import SOFT_LABELLED
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_run, train_model, write_stage_metrics
from kdflow.training import LossFn, cross_entropy_loss
from models import build_model


def teacher_logits_for(split: Split, path) -> torch.Tensor:
    """The stored logits of `split`'s samples, matched by sample_id."""
    frame = read_table(path).to_pandas()
    if "sample_id" not in frame:
        raise ArtifactError(path, "not a soft-label file (no sample_id column)")
    frame = frame.set_index("sample_id")
    missing = np.setdiff1d(split.sample_id, frame.index.to_numpy(dtype=str))
    if len(missing):
        raise ArtifactError(path, f"no soft labels for {len(missing)} of the split's samples (e.g. {missing[0]})")
    return torch.tensor(frame.loc[split.sample_id].to_numpy(np.float32))


def distillation_set(paths: ProjectPaths, input_shape: tuple[int, ...]):
    """The splits the student learns from, and their concatenated inputs, true labels (-1 on transfer) and teacher logits."""
    sets = {name: load_split(paths.split(name), input_shape) for name in SOFT_LABELLED}
    x = torch.cat([sets[name].x for name in SOFT_LABELLED])
    labels = torch.cat([sets[name].y for name in SOFT_LABELLED])
    logits = torch.cat([teacher_logits_for(sets[name], paths.soft_labels(name)) for name in SOFT_LABELLED])
    return sets, x, labels, logits


def fresh_student(params: Params, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The student every student stage starts from: the same architecture and initial weights."""
    torch.manual_seed(params.seed)
    return build_model(params.distill.student, input_shape, num_classes)


def train_student(params: Params, paths: ProjectPaths, parent_run_id: str | None, stage: str, name: str,
                  training_set, loss_fn: LossFn = cross_entropy_loss, extra_params: dict | None = None,
                  extra_metrics=lambda model: {}) -> dict:
    """Train student `name` in stage `stage`'s MLflow run; `training_set(input_shape)` gives (x, targets).
    Writes the stage's metrics: the student's best validation accuracy, its training samples and
    `extra_metrics(model)` (checked before the training, so it may refuse the model)."""
    spec = params.distill
    card = read_dataset_card(paths.dataset_card)
    input_shape, classes = tuple(card["input_shape"]), card["source_classes"]
    with stage_run(paths, stage, params, parent_run_id) as tracked:
        model = fresh_student(params, input_shape, len(classes))
        metrics = extra_metrics(model)
        x, targets = training_set(input_shape)
        val = load_split(paths.split("source_val"), input_shape)
        result = train_model(tracked, paths, name, model, spec.student, spec.train, x, targets, seed=params.seed,
                             val=(val.x, val.y), input_shape=input_shape, class_names=classes, loss_fn=loss_fn,
                             extra_params=extra_params)
        metrics = {**metrics, f"{name}_val_accuracy": result.best["val_accuracy"], f"{name}_train_samples": len(x)}
        write_stage_metrics(paths, stage, metrics)
        tracked.log_metrics(metrics)
    return metrics

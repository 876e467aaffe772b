"""Stage `distill`: the student learns from the teacher's soft labels (Hinton KD), beside two baselines.

- student_distilled: KD loss on source_train + transfer (see kdflow.losses for what alpha weighs).
- student_hard_labels: cross-entropy on the teacher's argmax over the same samples.
- student_scratch: cross-entropy on the source labels alone.
All three share the architecture, the initial weights and the optimiser settings.
"""

from __future__ import annotations

import torch

from kdflow.batches import Rows, TrainingData, argmax_targets, training_data
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.graph import SOFT_LABELLED
from kdflow.layout import ProjectPaths
from kdflow.losses import kd_loss
from kdflow.stage import stage_run, train_model, write_stage_metrics
from kdflow.training import Training
from models import build_model, count_parameters


class StudentTooLarge(ValueError):
    pass


def distillation_rows(paths: ProjectPaths) -> list[Rows]:
    """The splits the student learns from, each with its teacher logits (labels are -1 on the transfer set)."""
    return [Rows(paths.split(name), paths.soft_labels(name)) for name in SOFT_LABELLED]


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the distilled student and its two baselines, one architecture and initialisation."""
    spec = params.distill
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    classes = card["source_classes"]
    # Each set is held in memory or streamed from disk by its size (train.memory_budget_mb).
    rows = distillation_rows(paths)
    distilled = training_data(rows, ["logits", "label"], input_shape, spec.train)
    val = load_split(paths.split("source_val"), input_shape)

    def fresh_student() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        return build_model(spec.student, input_shape, len(classes))

    def student(name: str, data: TrainingData, **declared) -> Training:
        return Training(name, fresh_student, spec.student, spec.train, data, (val.x, val.y), params.seed,
                        input_shape, classes, **declared)

    return [
        student("student_distilled", distilled,
                loss_fn=lambda out, t: kd_loss(out, t[0], t[1], spec.temperature, spec.alpha),
                extra_params={"temperature": spec.temperature, "alpha": spec.alpha}),
        student("student_hard_labels", argmax_targets(distilled, rows, input_shape, spec.train)),
        student("student_scratch", training_data([Rows(paths.split("source_train"))], ["label"], input_shape,
                                                 spec.train)),
    ]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.distill
    with stage_run(paths, "distill", params, parent_run_id) as tracked:
        teacher, _ = load_model(paths.checkpoint("teacher"), expected_spec(params, "teacher"))
        students = trainings(params, paths)
        ratio = count_parameters(students[0].build()) / count_parameters(teacher)
        if ratio > spec.max_param_ratio:
            raise StudentTooLarge(
                f"params.yaml: distill.student has {ratio:.2f}x the teacher's parameters, above "
                f"distill.max_param_ratio={spec.max_param_ratio}; make the student smaller"
            )
        results = {student.name: train_model(tracked, paths, student) for student in students}
        metrics = {"student_teacher_param_ratio": ratio, "distill_train_samples": students[0].data.num_samples,
                   **{f"{name}_val_accuracy": result.best["val_accuracy"] for name, result in results.items()}}
        write_stage_metrics(paths, "distill", metrics)
        tracked.log_metrics(metrics)
    return metrics

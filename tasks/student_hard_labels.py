"""Stage `student_hard_labels`: the distilled student's baseline on the teacher's argmax labels, cross-entropy, over
the same samples (source_train + transfer)."""

from __future__ import annotations

from kdflow.batches import argmax_targets
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.training import Training
from tasks.students import distillation_data, distillation_rows, student, train_student

MODEL = "student_hard_labels"


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the student on the teacher's hard labels."""

    def hard_labels(input_shape):
        return argmax_targets(distillation_data(params, paths, input_shape), distillation_rows(paths), input_shape,
                              params.distill.train)

    return [student(params, paths, MODEL, hard_labels)]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    return train_student(params, paths, parent_run_id, "student_hard_labels", trainings)

"""Stage `student_hard_labels`: the distilled student's baseline on the teacher's argmax labels, cross-entropy, over
the same samples (source_train + transfer)."""

from __future__ import annotations

from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_main
from tasks.students import distillation_set, train_student

MODEL = "student_hard_labels"


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    def training_set(input_shape):
        _, x, _, logits = distillation_set(paths, input_shape)
        return x, [logits.argmax(1)]

    return train_student(params, paths, parent_run_id, "student_hard_labels", MODEL, training_set)


if __name__ == "__main__":
    stage_main("student_hard_labels", run)

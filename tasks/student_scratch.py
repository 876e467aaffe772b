"""Stage `student_scratch`: the distilled student's baseline on the source labels alone, cross-entropy. It needs
only the prepared data, so it trains while the teacher does."""

from __future__ import annotations

from kdflow.batches import Rows, training_data
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.training import Training
from tasks.students import student, train_student

MODEL = "student_scratch"


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the student on the labelled source set."""
    return [student(params, paths, MODEL, lambda input_shape: training_data(
        [Rows(paths.split("source_train"))], ["label"], input_shape, params.distill.train))]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    return train_student(params, paths, parent_run_id, "student_scratch", trainings)

"""Stage `student_scratch`: the distilled student's baseline on the source labels alone, cross-entropy. It needs
only the prepared data, so it trains while the teacher does."""

from __future__ import annotations

from kdflow.config import Params
from kdflow.datasets import load_split
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_main
from tasks.students import train_student

MODEL = "student_scratch"


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    def training_set(input_shape):
        source = load_split(paths.split("source_train"), input_shape)
        return source.x, [source.y]

    return train_student(params, paths, parent_run_id, "student_scratch", MODEL, training_set)


if __name__ == "__main__":
    stage_main("student_scratch", run)

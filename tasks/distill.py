"""Stage `distill`: the student learns from the teacher's soft labels (Hinton KD) on source_train + transfer
(see kdflow.losses for what alpha weighs). Its baselines are stages of their own, tasks.student_hard_labels and
tasks.student_scratch, with the same architecture, initial weights and optimiser settings (tasks.students).
"""

from __future__ import annotations

from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.losses import kd_loss
from kdflow.training import Training
from models import count_parameters
from tasks.students import distillation_data, student, train_student

MODEL = "student_distilled"


class StudentTooLarge(ValueError):
    pass


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the distilled student, on the teacher's logits and the true labels."""
    spec = params.distill
    return [student(params, paths, MODEL, lambda input_shape: distillation_data(params, paths, input_shape),
                    loss_fn=lambda out, t: kd_loss(out, t[0], t[1], spec.temperature, spec.alpha),
                    extra_params={"temperature": spec.temperature, "alpha": spec.alpha})]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.distill

    def size_check(training: Training) -> dict:
        teacher, _ = load_model(paths.checkpoint("teacher"), expected_spec(params, "teacher"))
        ratio = count_parameters(training.build()) / count_parameters(teacher)
        if ratio > spec.max_param_ratio:
            raise StudentTooLarge(
                f"params.yaml: distill.student has {ratio:.2f}x the teacher's parameters, above "
                f"distill.max_param_ratio={spec.max_param_ratio}; make the student smaller"
            )
        return {"student_teacher_param_ratio": ratio}

    return train_student(params, paths, parent_run_id, "distill", trainings, extra_metrics=size_check)

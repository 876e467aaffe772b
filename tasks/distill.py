"""Stage `distill`: the student learns from the teacher's soft labels (Hinton KD) on source_train + transfer.

See kdflow.losses for what alpha weighs. Its baselines are stages of their own (tasks.student_hard_labels,
tasks.student_scratch), from the same initial weights and optimiser settings (tasks.students).
"""

from __future__ import annotations

from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.losses import kd_loss
from kdflow.stage import stage_main
from models import count_parameters
from tasks.students import distillation_set, train_student

MODEL = "student_distilled"


class StudentTooLarge(ValueError):
    pass


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.distill

    def training_set(input_shape):
        _, x, labels, logits = distillation_set(paths, input_shape)
        return x, [logits, labels]

    def size_check(student) -> dict:
        teacher, _ = load_model(paths.checkpoint("teacher"), expected_spec(params, "teacher"))
        ratio = count_parameters(student) / count_parameters(teacher)
        if ratio > spec.max_param_ratio:
            raise StudentTooLarge(
                f"params.yaml: distill.student has {ratio:.2f}x the teacher's parameters, above "
                f"distill.max_param_ratio={spec.max_param_ratio}; make the student smaller"
            )
        return {"student_teacher_param_ratio": ratio}

    return train_student(params, paths, parent_run_id, "distill", MODEL, training_set,
                         loss_fn=lambda out, t: kd_loss(out, t[0], t[1], spec.temperature, spec.alpha),
                         extra_params={"temperature": spec.temperature, "alpha": spec.alpha}, extra_metrics=size_check)


if __name__ == "__main__":
    stage_main("distill", run)

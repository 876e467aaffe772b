"""Stage `distill`: the student learns from the teacher's soft labels (Hinton KD), beside two baselines.

- student_distilled: KD loss on source_train + transfer (see kdflow.losses for what alpha weighs).
- student_hard_labels: cross-entropy on the teacher's argmax over the same samples.
- student_scratch: cross-entropy on the source labels alone.
All three share the architecture, the initial weights and the optimiser settings.
"""

from __future__ import annotations

import numpy as np
import torch

from kdflow.artifacts import ArtifactError
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.datasets import Split, load_split, read_dataset_card, read_table
from kdflow.graph import SOFT_LABELLED
from kdflow.layout import ProjectPaths
from kdflow.losses import kd_loss
from kdflow.stage import stage_run, train_model, write_stage_metrics
from kdflow.training import Training
from models import build_model, count_parameters


class StudentTooLarge(ValueError):
    pass


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


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the distilled student and its two baselines, one architecture and initialisation."""
    spec = params.distill
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    classes = card["source_classes"]
    sets, x, labels, logits = distillation_set(paths, input_shape)
    val = load_split(paths.split("source_val"), input_shape)

    def fresh_student() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        return build_model(spec.student, input_shape, len(classes))

    def student(name: str, x: torch.Tensor, targets: list[torch.Tensor], **declared) -> Training:
        return Training(name, fresh_student, spec.student, spec.train, x, targets, (val.x, val.y), params.seed,
                        input_shape, classes, **declared)

    source = sets["source_train"]
    return [
        student("student_distilled", x, [logits, labels],
                loss_fn=lambda out, t: kd_loss(out, t[0], t[1], spec.temperature, spec.alpha),
                extra_params={"temperature": spec.temperature, "alpha": spec.alpha}),
        student("student_hard_labels", x, [logits.argmax(1)]),
        student("student_scratch", source.x, [source.y]),
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
        metrics = {"student_teacher_param_ratio": ratio, "distill_train_samples": len(students[0].x),
                   **{f"{name}_val_accuracy": result.best["val_accuracy"] for name, result in results.items()}}
        write_stage_metrics(paths, "distill", metrics)
        tracked.log_metrics(metrics)
    return metrics

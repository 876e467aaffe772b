"""What each training stage trains first (model, data, loss, param groups), for the learning-rate range test.

It lives with the stages, whose set-up it reuses (distill's distillation set, finetune's transfer and param groups),
so kdflow.lr_finder, in the engine, takes a Problem and imports no stage.
"""

from __future__ import annotations

import torch

from kdflow import graph
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import Params
from kdflow.consistency import check_inputs
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.losses import kd_loss
from kdflow.lr_finder import STAGES, Problem
from models import build_model
from tasks.students import distillation_set
from tasks.finetune import SOURCE_MODEL, param_groups, transferred_model, unfreeze_schedule


def stage_problem(stage: str, params: Params, paths: ProjectPaths) -> Problem:
    """The model, data and loss `stage` trains first: the teacher, the distilled student, the fine-tuned model."""
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    check_inputs(paths, graph.STAGES[stage].read_files(paths))  # what the stage itself reads, as it checks them
    torch.manual_seed(params.seed)
    if stage == "train_teacher":
        spec = params.train_teacher
        train = load_split(paths.split("source_train"), input_shape)
        model = build_model(spec.model, input_shape, len(card["source_classes"]))
        return Problem(model, train.x, [train.y], spec.train)
    if stage == "distill":
        spec = params.distill
        _, x, labels, logits = distillation_set(paths, input_shape)
        model = build_model(spec.student, input_shape, len(card["source_classes"]))
        return Problem(model, x, [logits, labels], spec.train,
                       loss_fn=lambda out, t: kd_loss(out, t[0], t[1], spec.temperature, spec.alpha))
    if stage == "finetune":
        arch = expected_spec(params, SOURCE_MODEL)
        source, _ = load_model(paths.checkpoint(SOURCE_MODEL), arch)
        train = load_split(paths.split("target_train"), input_shape)
        model, _ = transferred_model(params, source, arch, input_shape, len(card["target_classes"]))
        hook = unfreeze_schedule(model, params.finetune)
        if hook is not None:
            hook(1)  # the first epoch's trainable blocks
        return Problem(model, train.x, [train.y], params.finetune.train,
                       param_groups=param_groups(model, params.finetune))
    raise ValueError(f"lr-find: unknown stage '{stage}'; choose one of {', '.join(STAGES)}")

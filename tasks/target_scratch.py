"""Stage `target_scratch`: the fine-tuned model's baseline, the same architecture trained from scratch on the few
target labels. It needs only the prepared data, so it trains while the teacher does."""

from __future__ import annotations

import torch

from kdflow.checkpoints import expected_spec
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.stage import train_model, training_stage_run, write_stage_metrics
from kdflow.training import Training
from models import build_model
from tasks.finetune import SOURCE_MODEL, target_task

MODEL = "target_scratch"


def trainings(params: Params, paths: ProjectPaths) -> list[Training]:
    """What the stage trains: the fine-tuned model's architecture (the distilled student's), from scratch."""
    arch = expected_spec(params, SOURCE_MODEL)
    input_shape, classes, train, val = target_task(params, paths)

    def scratch() -> torch.nn.Module:
        torch.manual_seed(params.seed)
        return build_model(arch, input_shape, len(classes))

    return [Training(MODEL, scratch, arch, params.finetune.train, train, (val.x, val.y), params.seed, input_shape,
                     classes)]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    with training_stage_run(paths, "target_scratch", params, parent_run_id, lambda: trainings(params, paths)) as (
            tracked, [training]):
        scratch = train_model(tracked, paths, training)
        metrics = {"target_scratch_val_accuracy": scratch.best["val_accuracy"]}
        write_stage_metrics(paths, "target_scratch", metrics)
        tracked.log_metrics(metrics)
    return metrics

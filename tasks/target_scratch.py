"""Stage `target_scratch`: the fine-tuned model's baseline, the same architecture trained from scratch on the few
target labels. It needs only the prepared data, so it trains while the teacher does."""

from __future__ import annotations

import torch

from kdflow.checkpoints import expected_spec
from kdflow.config import Params
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_main, stage_run, train_model, write_stage_metrics
from models import build_model
from tasks.finetune import SOURCE_MODEL, target_task

MODEL = "target_scratch"


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    with stage_run(paths, "target_scratch", params, parent_run_id) as tracked:
        arch = expected_spec(params, SOURCE_MODEL)  # the fine-tuned model's architecture
        input_shape, classes, train, val = target_task(paths)
        torch.manual_seed(params.seed)
        scratch = train_model(tracked, paths, MODEL, build_model(arch, input_shape, len(classes)), arch,
                              params.finetune.train, train.x, [train.y], seed=params.seed, val=(val.x, val.y),
                              input_shape=input_shape, class_names=classes)
        metrics = {"target_scratch_val_accuracy": scratch.best["val_accuracy"]}
        write_stage_metrics(paths, "target_scratch", metrics)
        tracked.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("target_scratch", run)

"""Stage `train_teacher`: pretrain the teacher on the labelled source task, early stopping on validation.

With `train_teacher.weights` the teacher starts from those weights (kdflow.pretrained); with `epochs: 0` as well,
it is not trained at all and only labels the transfer set. The run's tags name where the weights came from.
"""

from __future__ import annotations

import tempfile

import torch

from kdflow.config import Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.pretrained import load_into, read_weights
from kdflow.stage import stage_main, stage_run, train_model, write_stage_metrics
from models import build_model


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.train_teacher
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    classes = card["source_classes"]
    with tempfile.TemporaryDirectory() as scratch:
        # Read and checked before the run starts: bad weights stop the stage with nothing written.
        weights = read_weights(spec.weights, paths.root, scratch) if spec.weights else None
        local = [weights.file] if weights and "path" in weights.origin else []
        torch.manual_seed(params.seed)
        teacher = build_model(spec.model, input_shape, len(classes))
        if weights is not None:
            report = load_into(teacher, weights, spec.weights, whole=spec.train.epochs == 0)
        with stage_run(paths, "train_teacher", params, parent_run_id, extra_inputs=local) as tracked:
            origin = {f"kdflow.teacher_weights.{key}": value for key, value in (weights.origin if weights else {}).items()}
            if weights is not None:
                origin["kdflow.teacher_weights.layers_copied"] = len(report.copied)
                tracked.set_tags(origin)
            train, val = (load_split(paths.split(name), input_shape) for name in ("source_train", "source_val"))
            result = train_model(tracked, paths, "teacher", teacher, spec.model, spec.train, train.x, [train.y],
                                 seed=params.seed, val=(val.x, val.y), input_shape=input_shape, class_names=classes,
                                 extra_params={f"weights_{key}": value for key, value in (weights.origin if weights else {}).items()})
            metrics = {"teacher_val_accuracy": result.best["val_accuracy"], "teacher_val_loss": result.best["val_loss"],
                       "teacher_best_epoch": result.best_epoch}
            write_stage_metrics(paths, "train_teacher", metrics)
            tracked.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("train_teacher", run)

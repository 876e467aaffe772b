"""Stage `finetune`: the distilled student becomes the target-task model (its from-scratch baseline is the stage
tasks.target_scratch).

Layers whose name and shape match are copied from the student; the rest, and every layer named by
`finetune.reinit` (the head by default), keep a fresh initialisation. Strategies:
- full: everything trains, the backbone at `backbone_lr_mult` times the head's learning rate;
- linear_probe: the backbone is frozen, only the head trains;
- gradual_unfreeze: the head first, then one more backbone block from the top every `unfreeze_every` epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdflow.artifacts import write_json
from kdflow.batches import Rows, training_data
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import FinetuneSpec, Params, Section
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.stage import train_model, training_stage_run, write_stage_metrics
from kdflow.training import Training
from kdflow.transfer import (TransferError, TransferReport, backbone_blocks, copy_matching_layers, head_and_backbone,
                             set_trainable_blocks)
from models import build_model
from models.adapters import layout

SOURCE_MODEL = "student_distilled"


def describe_arch(spec) -> str:
    """'mlp hidden=[64, 64] dropout=0.0': the arch and its options, for messages."""
    options = spec.model_dump(mode="json", exclude={"arch"})
    return " ".join([spec.arch, *(f"{key}={value}" for key, value in options.items())])


def param_groups(model: torch.nn.Module, spec: FinetuneSpec) -> list[dict]:
    head, backbone = head_and_backbone(model)
    groups = [{"params": head}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": spec.train.lr * spec.backbone_lr_mult})
    return groups


def trainable_from_top(spec: FinetuneSpec, epoch: int) -> int | None:
    """How many backbone blocks, from the top, train in `epoch` (1-based); None: all (strategy full)."""
    if spec.strategy == "full":
        return None
    return 0 if spec.strategy == "linear_probe" else (epoch - 1) // spec.unfreeze_every


def unfreeze_schedule(model: torch.nn.Module, spec: FinetuneSpec):
    """The `before_epoch` hook that sets which blocks train in each epoch, per strategy."""
    if spec.strategy == "full":
        return None
    return lambda epoch: set_trainable_blocks(model, trainable_from_top(spec, epoch))


def block_schedule(model: torch.nn.Module, spec: FinetuneSpec) -> dict:
    """The model's head and blocks and, per epoch, the blocks that train: what the transfer report shows."""
    found = layout(model)
    by_epoch = {}
    for epoch in range(1, spec.train.epochs + 1):
        count = trainable_from_top(spec, epoch)
        by_epoch[str(epoch)] = list(found.blocks if count is None else found.blocks[max(len(found.blocks) - count, 0):])
    return {"head": list(found.head), "blocks": list(found.blocks), "trainable_blocks_by_epoch": by_epoch}


def transferred_model(params: Params, source: torch.nn.Module, arch, input_shape: tuple[int, ...], num_classes: int):
    """The target model initialised from `source` by whole-layer transfer, and the report of what was copied."""
    torch.manual_seed(params.seed)
    target = build_model(arch, input_shape, num_classes)
    return target, copy_matching_layers(source.state_dict(), target, params.finetune.reinit)


@dataclass
class Transfer:
    """The distilled student, ready to initialise target models, and the report of what a transfer copies."""

    source: torch.nn.Module
    arch: Section
    report: TransferReport


def transfer_from_student(params: Params, paths: ProjectPaths, input_shape: tuple[int, ...],
                          num_classes: int) -> Transfer:
    """Load the distilled student and try the transfer once: a target it cannot initialise fails here, saying why."""
    source_checkpoint = paths.checkpoint(SOURCE_MODEL)
    arch = expected_spec(params, SOURCE_MODEL)
    source, _ = load_model(source_checkpoint, arch)
    try:
        _, report = transferred_model(params, source, arch, input_shape, num_classes)
    except TransferError as exc:
        raise TransferError(
            f"finetune: {exc}: source {SOURCE_MODEL} ({describe_arch(arch)}, {source_checkpoint}), target model "
            f"({describe_arch(arch)}, finetune.reinit {params.finetune.reinit}); fix: re-initialise fewer layers "
            "(take backbone prefixes out of finetune.reinit), or distil a student with a backbone (arch linear has "
            "only a head), rather than fine-tune a model that learnt nothing from the source") from None
    return Transfer(source, arch, report)


def target_task(params: Params, paths: ProjectPaths):
    """What both target models train on: input shape, class names, the target training set (in memory or streamed,
    kdflow.batches) and the target validation split."""
    card = read_dataset_card(paths.dataset_card)
    input_shape = card.input_shape
    train = training_data([Rows(paths.split("target_train"))], ["label"], input_shape, params.finetune.train)
    val = load_split(paths.split("target_val"), input_shape)
    return input_shape, card.target_classes, train, val


def trainings(params: Params, paths: ProjectPaths, transfer: Transfer | None = None) -> list[Training]:
    """What the stage trains: the target model fine-tuned from the distilled student (`transfer`, made here when
    not given). Its from-scratch baseline is the stage tasks.target_scratch."""
    spec = params.finetune
    input_shape, classes, train, val = target_task(params, paths)
    transfer = transfer or transfer_from_student(params, paths, input_shape, len(classes))
    report = transfer.report
    return [
        Training("target_finetuned",
                 lambda: transferred_model(params, transfer.source, transfer.arch, input_shape, len(classes))[0],
                 arch=transfer.arch, train=spec.train, data=train, val=(val.x, val.y), seed=params.seed,
                 input_shape=input_shape, class_names=classes,
                 param_groups=lambda model: param_groups(model, spec),
                 before_epoch=lambda model: unfreeze_schedule(model, spec),
                 extra_params={"strategy": spec.strategy, "backbone_lr_mult": spec.backbone_lr_mult,
                               "layers_copied": len(report.copied), "layers_reinitialised": len(report.reinitialised)}),
    ]


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.finetune

    def transfer_and_trainings() -> tuple[Transfer, list[Training]]:
        card = read_dataset_card(paths.dataset_card)
        transfer = transfer_from_student(params, paths, card.input_shape, len(card.target_classes))
        return transfer, trainings(params, paths, transfer)

    with training_stage_run(paths, "finetune", params, parent_run_id, transfer_and_trainings) as (
            tracked, (transfer, [training])):
        report = transfer.report
        report_path = write_json(paths.transfer_report,
                                 {"source": SOURCE_MODEL, "strategy": spec.strategy, **report.as_dict(),
                                  **block_schedule(transfer.source, spec)})
        print("\n".join(["transfer from " + SOURCE_MODEL, *report.lines()]))
        tracked.log_artifact(report_path)
        finetuned = train_model(tracked, paths, training)
        metrics = {
            "target_finetuned_val_accuracy": finetuned.best["val_accuracy"],
            "target_finetuned_best_epoch": finetuned.best_epoch,
            "layers_copied": len(report.copied),
            "backbone_blocks": len(backbone_blocks(transfer.source)),
        }
        write_stage_metrics(paths, "finetune", metrics)
        tracked.log_metrics(metrics)
    return metrics

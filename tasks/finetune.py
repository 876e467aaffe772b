"""Stage `finetune`: the distilled student becomes the target-task model (its from-scratch baseline is the stage
tasks.target_scratch).

Layers whose name and shape match are copied from the student; the rest, and every layer named by
`finetune.reinit` (the head by default), keep a fresh initialisation. Strategies:
- full: everything trains, the backbone at `backbone_lr_mult` times the head's learning rate;
- linear_probe: the backbone is frozen, only the head trains;
- gradual_unfreeze: the head first, then one more backbone block from the top every `unfreeze_every` epochs.
"""

from __future__ import annotations

import torch

from kdflow.artifacts import write_json
from kdflow.checkpoints import expected_spec, load_model
from kdflow.config import FinetuneSpec, Params
from kdflow.datasets import load_split, read_dataset_card
from kdflow.layout import ProjectPaths
from kdflow.stage import stage_main, stage_run, train_model, write_stage_metrics
from kdflow.transfer import TransferError, backbone_blocks, copy_matching_layers, set_trainable_blocks
from models import build_model

SOURCE_MODEL = "student_distilled"


def describe_arch(spec) -> str:
    """'mlp hidden=[64, 64] dropout=0.0': the arch and its options, for messages."""
    options = spec.model_dump(mode="json", exclude={"arch"})
    return " ".join([spec.arch, *(f"{key}={value}" for key, value in options.items())])


def param_groups(model: torch.nn.Module, spec: FinetuneSpec) -> list[dict]:
    backbone = list(model.backbone.parameters())
    groups = [{"params": list(model.head.parameters())}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": spec.train.lr * spec.backbone_lr_mult})
    return groups


def unfreeze_schedule(model: torch.nn.Module, spec: FinetuneSpec):
    """The `before_epoch` hook that sets which blocks train in each epoch, per strategy."""
    if spec.strategy == "full":
        return None
    if spec.strategy == "linear_probe":
        return lambda epoch: set_trainable_blocks(model, 0)
    return lambda epoch: set_trainable_blocks(model, (epoch - 1) // spec.unfreeze_every)


def transferred_model(params: Params, source: torch.nn.Module, arch, input_shape: tuple[int, ...], num_classes: int):
    """The target model initialised from `source` by whole-layer transfer, and the report of what was copied."""
    torch.manual_seed(params.seed)
    target = build_model(arch, input_shape, num_classes)
    return target, copy_matching_layers(source.state_dict(), target, params.finetune.reinit)


def target_task(paths: ProjectPaths):
    """What both target models train on: input shape, class names, and the target train and validation splits."""
    card = read_dataset_card(paths.dataset_card)
    input_shape = tuple(card["input_shape"])
    train, val = (load_split(paths.split(name), input_shape) for name in ("target_train", "target_val"))
    return input_shape, card["target_classes"], train, val


def run(params: Params, paths: ProjectPaths, parent_run_id: str | None = None) -> dict:
    spec = params.finetune
    source_checkpoint = paths.checkpoint(SOURCE_MODEL)
    with stage_run(paths, "finetune", params, parent_run_id) as tracked:
        arch = expected_spec(params, SOURCE_MODEL)
        source, _ = load_model(source_checkpoint, arch)
        input_shape, classes, train, val = target_task(paths)

        try:
            target, report = transferred_model(params, source, arch, input_shape, len(classes))
        except TransferError as exc:
            raise TransferError(
                f"finetune: {exc}: source {SOURCE_MODEL} ({describe_arch(arch)}, {source_checkpoint}), target model "
                f"({describe_arch(arch)}, finetune.reinit {spec.reinit}); fix: re-initialise fewer layers (take "
                "backbone prefixes out of finetune.reinit), or distil a student with a backbone (arch linear has "
                "only a head), rather than fine-tune a model that learnt nothing from the source") from None
        report_path = write_json(paths.target_dir / "transfer_report.json",
                                 {"source": SOURCE_MODEL, "strategy": spec.strategy, **report.as_dict()})
        print("\n".join(["transfer from " + SOURCE_MODEL, *report.lines()]))
        tracked.log_artifact(report_path)

        finetuned = train_model(
            tracked, paths, "target_finetuned", target, arch, spec.train, train.x, [train.y],
            param_groups=param_groups(target, spec), before_epoch=unfreeze_schedule(target, spec),
            extra_params={"strategy": spec.strategy, "backbone_lr_mult": spec.backbone_lr_mult,
                          "layers_copied": len(report.copied), "layers_reinitialised": len(report.reinitialised)},
            seed=params.seed, val=(val.x, val.y), input_shape=input_shape, class_names=classes,
        )
        metrics = {
            "target_finetuned_val_accuracy": finetuned.best["val_accuracy"],
            "target_finetuned_best_epoch": finetuned.best_epoch,
            "layers_copied": len(report.copied),
            "backbone_blocks": len(backbone_blocks(target)),
        }
        write_stage_metrics(paths, "finetune", metrics)
        tracked.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("finetune", run)

"""Transfer learning: initialise a target model from a source model's weights, layer by layer.

A parameter or buffer is copied when the source has one of the same name and shape and its name does not start
with one of the `reinit` prefixes (the head, by default: its classes mean something else in the target task).
Everything else keeps the target's fresh initialisation, and the report says which and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)  # target name -> reason

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        rows = [f"copied          {name}" for name in self.copied]
        rows += [f"re-initialised  {name}  ({reason})" for name, reason in self.reinitialised.items()]
        return rows


class TransferError(ValueError):
    """The target shares no layer with the source: a silent from-scratch run would be a lie."""


def copy_matching_layers(
    source_state: dict[str, torch.Tensor], target: nn.Module, reinit: list[str] | tuple[str, ...] = ()
) -> TransferReport:
    report = TransferReport()
    target_state = target.state_dict()
    for name, tensor in target_state.items():
        if any(name == prefix or name.startswith(prefix + ".") for prefix in reinit):
            report.reinitialised[name] = "re-initialised by request (finetune.reinit)"
        elif name not in source_state:
            report.reinitialised[name] = "not in the source model"
        elif source_state[name].shape != tensor.shape:
            report.reinitialised[name] = (
                f"shape mismatch: source {tuple(source_state[name].shape)}, target {tuple(tensor.shape)}"
            )
        else:
            target_state[name] = source_state[name].clone()
            report.copied.append(name)
    if not report.copied:
        raise TransferError("the target model shares no layer (same name and shape) with the source model")
    target.load_state_dict(target_state)
    return report


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.backbone.children())


def set_trainable_blocks(model: nn.Module, trainable_from_top: int) -> None:
    """Freeze the backbone except its top `trainable_from_top` blocks; the head always trains."""
    blocks = backbone_blocks(model)
    first_trainable = max(len(blocks) - trainable_from_top, 0)
    for index, block in enumerate(blocks):
        for parameter in block.parameters():
            parameter.requires_grad_(index >= first_trainable)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)

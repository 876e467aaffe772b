"""Transfer learning: initialise a target model from a source model's weights, layer by layer.

A parameter or buffer is copied when the source has one of the same name and shape and its name does not start
with one of the `reinit` prefixes (the head, by default: its classes mean something else in the target task).
`head` in `reinit` names the model's classifier whatever its family calls it (models.adapters: timm's classifier,
torchvision's final layer, a Hugging Face classification head).
Everything else keeps the target's fresh initialisation, and the report says which and why, and which source
tensors were skipped (left unused).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from models.adapters import layout


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    reinitialised: dict[str, str] = field(default_factory=dict)  # target name -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # source name -> why it was not used

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        rows = [f"copied          {name}" for name in self.copied]
        rows += [f"re-initialised  {name}  ({reason})" for name, reason in self.reinitialised.items()]
        rows += [f"skipped         {name}  ({reason})" for name, reason in self.skipped.items()]
        return rows


class TransferError(ValueError):
    """The target shares no layer with the source: a silent from-scratch run would be a lie."""


def copy_matching_layers(
    source_state: dict[str, torch.Tensor], target: nn.Module, reinit: list[str] | tuple[str, ...] = ()
) -> TransferReport:
    """Copy whole layers: a layer (a module's tensors: weight, bias, buffers) is copied only if all match."""
    report = TransferReport()
    target_state = target.state_dict()
    head = layout(target).head
    reinit = [name for prefix in reinit for name in (head if prefix == "head" else (prefix,))]
    layers: dict[str, list[str]] = {}
    for name in target_state:
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    for layer, names in layers.items():
        reasons: dict[str, str] = {}
        if any(layer == prefix or layer.startswith(prefix + ".") for prefix in reinit):
            reasons = dict.fromkeys(names, "re-initialised by request (finetune.reinit)")
        elif any(name not in source_state for name in names):
            reasons = dict.fromkeys(names, "not in the source model")
        elif any(source_state[n].shape != target_state[n].shape for n in names):
            for name in names:
                source_shape, target_shape = tuple(source_state[name].shape), tuple(target_state[name].shape)
                reasons[name] = (f"shape mismatch: source {source_shape}, target {target_shape}"
                                 if source_shape != target_shape else f"layer '{layer}' has a shape mismatch")
        for name in names:
            if name in reasons:
                report.reinitialised[name] = reasons[name]
            else:
                target_state[name] = source_state[name].clone()
                report.copied.append(name)
    for name in source_state:
        if name not in report.copied:
            report.skipped[name] = ("the target's layer is re-initialised" if name in target_state
                                    else "no layer of this name in the target")
    if not report.copied:
        raise TransferError("the target model shares no layer (same name and shape) with the source model")
    target.load_state_dict(target_state)
    return report


def backbone_blocks(model: nn.Module) -> tuple[str, ...]:
    """The names of the backbone's blocks that have weights, bottom to top (a flatten or pooling block has none)."""
    return layout(model).blocks


def set_trainable_blocks(model: nn.Module, trainable_from_top: int) -> list[str]:
    """Freeze the backbone except its top `trainable_from_top` blocks; the head always trains. Returns the names
    of the blocks that train."""
    found = layout(model)
    first_trainable = max(len(found.blocks) - trainable_from_top, 0)
    for name, parameter in model.named_parameters():
        block = found.block_of(name)
        parameter.requires_grad_(block is None or block >= first_trainable)
    return list(found.blocks[first_trainable:])


def head_and_backbone(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The head's parameters and the rest's, for a lower learning rate on the backbone."""
    found = layout(model)
    head = [p for name, p in model.named_parameters() if found.in_head(name)]
    return head, [p for name, p in model.named_parameters() if not found.in_head(name)]

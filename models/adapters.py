"""Where each family of models keeps its classifier head and its blocks, found through the family's own notion.

- the project's own architectures (and a user's factory): `head`, and the blocks of the `backbone` Sequential;
- timm: the module `get_classifier()` returns;
- Hugging Face: the classification layers beside the base model (BERT's `classifier`, DistilBERT's
  `pre_classifier` and `classifier`);
- torchvision and any other module: the last Linear layer.
Blocks, bottom to top, are the modules outside the head that hold weights: the base model's children, with its
stack of layers (a ResNet's `layer1`..`layer4`, a ViT's `blocks.0`.., BERT's `encoder.layer.0`..) one block each.
A parameter no block holds (a ViT's `cls_token`) belongs to the lowest block.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.zoo import HFSequenceClassifier, last_linear


@dataclass(frozen=True)
class Layout:
    head: tuple[str, ...]  # module names of the classifier head
    blocks: tuple[str, ...]  # module names of the backbone's blocks with weights, bottom to top

    def holds(self, module: str, parameter: str) -> bool:
        return bool(module) and (parameter == module or parameter.startswith(module + "."))

    def in_head(self, parameter: str) -> bool:
        return any(self.holds(name, parameter) for name in self.head)

    def block_of(self, parameter: str) -> int | None:
        """The index of the block holding `parameter` (0 for one no block holds); None for the head's."""
        if self.in_head(parameter):
            return None
        return next((i for i, name in enumerate(self.blocks) if self.holds(name, parameter)), 0)


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _stack(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The module's stack of layers: its largest ModuleList or Sequential child that itself holds a sequence of
    blocks with weights, searched one level down too (BERT's `encoder.layer`)."""
    found = []
    for name, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and sum(map(_has_weights, child)) > 1:
            found.append((name, child))
        else:
            found += [(f"{name}.{inner}", grandchild) for inner, grandchild in child.named_children()
                      if isinstance(grandchild, nn.ModuleList) and sum(map(_has_weights, grandchild)) > 1]
    if not found:
        return None
    return max(found, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _block_names(base: nn.Module) -> list[str]:
    """The base model's children, bottom to top, its stack of layers expanded into its layers. A ResNet's four
    stages are four Sequentials side by side: none is "the" stack, so each stays one block."""
    stack = _stack(base)
    sequences = [c for c in base.children() if isinstance(c, (nn.ModuleList, nn.Sequential)) and _has_weights(c)]
    if stack is None or (len(sequences) > 1 and "." not in stack[0]):
        return [name for name, _ in base.named_children()]
    names: list[str] = []
    outer, _, inner = stack[0].partition(".")
    for name, child in base.named_children():
        if name != outer:
            names.append(name)
            continue
        around = child.named_children() if inner else [("", child)]
        for other, grandchild in around:
            if other == inner:
                names += [_join(_join(name, other), str(i)) for i in range(len(grandchild))]
            else:
                names.append(_join(name, other))
    return names


def _layout(model: nn.Module, base: nn.Module, prefix: str, head: tuple[str, ...]) -> Layout:
    """Only blocks that hold weights outside the head (a container of the head alone is no block)."""
    parameters = [name for name, _ in model.named_parameters()]
    draft = Layout(head, ())
    blocks = [_join(prefix, name) for name in _block_names(base)]
    kept = tuple(block for block in blocks
                 if any(draft.holds(block, p) and not draft.in_head(p) for p in parameters))
    return Layout(head, kept)


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def layout(model: nn.Module) -> Layout:
    if isinstance(model, HFSequenceClassifier):
        inner = model.model
        base_name = inner.base_model_prefix
        head = tuple(f"model.{name}" for name, child in inner.named_children()
                     if name != base_name and _has_weights(child))
        return _layout(model, inner.base_model, f"model.{base_name}", head)
    backbone, own_head = getattr(model, "backbone", None), getattr(model, "head", None)
    if isinstance(backbone, nn.Sequential) and isinstance(own_head, nn.Module):
        return Layout(("head",), tuple(f"backbone.{i}" for i, block in enumerate(backbone) if _has_weights(block)))
    if callable(getattr(model, "get_classifier", None)) and isinstance(model.get_classifier(), nn.Module):
        head = (_module_name(model, model.get_classifier()),)  # timm
    else:
        head = (last_linear(model),)  # torchvision and the rest
    return _layout(model, model, "", head)

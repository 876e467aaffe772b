"""Architectures from the model zoos, built by name: timm and torchvision image models, Hugging Face text classifiers.

The zoo packages are an optional extra (`pip install -e ".[zoo]"`); a spec that names a zoo whose package is
missing, or a model or option the zoo refuses, is a ModelError of one line naming the key and the fix.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from models.errors import ModelError

def _zoo(module: str, arch: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"arch {arch}: cannot import {module} ({exc}); fix: pip install -e \".[zoo]\"") from None
    except RuntimeError as exc:  # torchvision's compiled ops built for another torch (e.g. a CUDA build beside a CPU one)
        raise ModelError(f"arch {arch}: {module} does not import beside torch {torch.__version__} ({exc}); fix: install "
                       "the torchvision build made for this torch (timm needs it too)") from None


def _refused(arch: str, name: str, exc: Exception) -> ModelError:
    return ModelError(f"arch {arch}: cannot build '{name}' ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                    f"fix: correct the model's name or options under that arch")


def build_timm(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    timm = _zoo("timm", "timm")
    try:
        return timm.create_model(spec.name, pretrained=spec.pretrained, num_classes=num_classes,
                                 in_chans=input_shape[0], **spec.options)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _refused("timm", spec.name, exc) from None


def last_linear(model: nn.Module) -> str:
    """The name of the model's final classifier layer: its last Linear in module order (torchvision's convention:
    `fc` of a ResNet, `classifier.1` of a MobileNet, `heads.head` of a ViT)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear layer to serve as its classifier")
    return names[-1]


def build_torchvision(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    models = _zoo("torchvision.models", "torchvision")
    try:
        if spec.weights is None:
            return models.get_model(spec.name, weights=None, num_classes=num_classes, **spec.options)
        model = models.get_model(spec.name, weights=spec.weights, **spec.options)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise _refused("torchvision", spec.name, exc) from None
    # Pretrained weights come with ImageNet's 1,000 classes: the final layer is replaced by one of this task's.
    name = last_linear(model)
    parent, _, child = name.rpartition(".")
    old = model.get_submodule(name)
    setattr(model.get_submodule(parent) if parent else model, child, nn.Linear(old.in_features, num_classes))
    return model


class HFSequenceClassifier(nn.Module):
    """A Hugging Face sequence classifier over the pipeline's rows: a row holds token ids (as floats, as every
    feature is stored); padding (the model's pad token) is masked out. Returns the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pad_token_id = int(model.config.pad_token_id or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        return self.model(input_ids=ids, attention_mask=(ids != self.pad_token_id).long()).logits


def build_hf(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _zoo("transformers", "hf")
    from transformers import AutoConfig, AutoModelForSequenceClassification

    options = dict(spec.config)
    try:
        if spec.pretrained:
            # The saved head may have another label count (e.g. a model fine-tuned elsewhere): it is re-initialised.
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.name, num_labels=num_classes, ignore_mismatched_sizes=True, **options)
        else:
            config = (AutoConfig.from_pretrained(spec.name, num_labels=num_classes, **options) if spec.name
                      else AutoConfig.for_model(options.pop("model_type"), num_labels=num_classes, **options))
            model = AutoModelForSequenceClassification.from_config(config)
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise _refused("hf", spec.name or spec.config.get("model_type"), exc) from None
    return HFSequenceClassifier(model)


ZOO_BUILDERS = {"timm": build_timm, "torchvision": build_torchvision, "hf": build_hf}

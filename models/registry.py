"""Build a model from its validated spec: `build_model(spec, input_shape, num_classes)`."""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.cnn1d import CNN1D
from models.linear import LinearModel
from models.mlp import MLP

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "linear": LinearModel,
}


def build_model(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`spec` is an architecture section of params.yaml (an `arch` plus that architecture's options)."""
    options = spec.model_dump(exclude={"arch"})
    try:
        factory = ARCHITECTURES[spec.arch]
    except KeyError:
        raise ValueError(f"unknown arch {spec.arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}") from None
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

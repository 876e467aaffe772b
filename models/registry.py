"""Build a model from its validated spec: `build_model(spec, input_shape, num_classes)`."""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from models.cnn1d import CNN1D
from models.cnn2d import CNN2D
from models.adapters import layout
from models.errors import ModelError
from models.linear import LinearModel
from models.mlp import MLP
from models.zoo import ZOO_BUILDERS

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "linear": LinearModel,
}


def _custom_factory(import_path: str) -> Callable[..., nn.Module]:
    module_name, _, function_name = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"arch custom: cannot import '{module_name}' of factory '{import_path}' ({exc}); "
                         "install the package or put the module under the project root, where the stages run") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelError(f"arch custom: '{module_name}' has no function '{function_name}' (factory '{import_path}')")
    return factory


def _build_custom(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The factory gets the input shape and the class count as keywords, then the spec's options; models.adapters
    finds the built module's head and blocks, as for the zoos' models."""
    model = _custom_factory(spec.factory)(input_shape=input_shape, num_classes=num_classes, **spec.options)
    if not isinstance(model, nn.Module):
        raise ModelError(f"arch custom: factory '{spec.factory}' returned {type(model).__name__}, not a torch.nn.Module")
    try:
        layout(model)
    except ModelError:
        raise ModelError(
            f"arch custom: factory '{spec.factory}' built a {type(model).__name__} with no classifier layer to find: "
            "transfer learning re-initialises it and trains it alone under linear_probe; give the module a `head` "
            "(with a `backbone` Sequential of blocks), a timm-style get_classifier(), or a final nn.Linear") from None
    return model


def build_model(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`spec` is an architecture section of params.yaml (an `arch` plus that architecture's options)."""
    if spec.arch == "custom":
        return _build_custom(spec, tuple(input_shape), num_classes)
    if spec.arch in ZOO_BUILDERS:
        return ZOO_BUILDERS[spec.arch](spec, tuple(input_shape), num_classes)
    options = spec.model_dump(exclude={"arch"})
    try:
        factory = ARCHITECTURES[spec.arch]
    except KeyError:
        raise ValueError(f"unknown arch {spec.arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}, custom, "
                         f"{', '.join(ZOO_BUILDERS)}") from None
    return factory(input_shape=tuple(input_shape), num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

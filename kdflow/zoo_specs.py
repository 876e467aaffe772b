"""Params sections of the model-zoo architectures: timm and torchvision image models, Hugging Face text classifiers.

Each names a model of its zoo and passes constructor options through unchecked: the zoo itself refuses what it
does not take, and models/zoo.py turns that refusal into one line naming the key.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from kdflow.sections import Section


class TimmSpec(Section):
    """`timm.create_model(name, pretrained=..., num_classes=K, in_chans=C, **options)`."""

    arch: Literal["timm"]
    name: str = Field(min_length=1, description="a timm model name, e.g. resnet18 or vit_tiny_patch16_224")
    pretrained: bool = Field(False, description="the hub's weights (needs the network); tests and CI build random ones")
    options: dict[str, Any] = Field(default={}, description="more create_model keywords, e.g. {drop_rate: 0.1}")


class TorchvisionSpec(Section):
    """`torchvision.models.get_model(name, weights=..., **options)`, its final layer sized to the task's classes."""

    arch: Literal["torchvision"]
    name: str = Field(min_length=1, description="a torchvision.models name, e.g. resnet18 or mobilenet_v3_small")
    weights: Optional[str] = Field(None, description="a weights name, e.g. DEFAULT (needs the network); null: random")
    options: dict[str, Any] = {}


class HFSpec(Section):
    """A Hugging Face sequence classifier (`AutoModelForSequenceClassification`) reading token ids.

    From `config` (a `model_type` and its options, random weights: what tests and offline machines build), or from
    `name` (a hub id or a local folder saved with `save_pretrained`), with its weights when `pretrained`."""

    arch: Literal["hf"]
    name: Optional[str] = Field(None, min_length=1, description="hub id or folder of a saved model")
    pretrained: bool = Field(False, description="load the weights under `name`, not only its configuration")
    config: dict[str, Any] = Field(default={}, description="model_type and configuration options, e.g. "
                                                          "{model_type: bert, hidden_size: 32, num_hidden_layers: 2}")

    @model_validator(mode="after")
    def _one_origin(self) -> "HFSpec":
        if self.name is None and "model_type" not in self.config:
            raise ValueError("give `name` (a hub id or saved folder) or `config` with a `model_type`, e.g. bert")
        if self.pretrained and self.name is None:
            raise ValueError("pretrained: true needs `name`, the hub id or folder holding the weights")
        return self

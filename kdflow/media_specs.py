"""Params sections of image and text data: image folders, how images and texts become the pipeline's rows."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, StrictInt

from kdflow.sections import Section


class ImageSpec(Section):
    """Every image is decoded to RGB (or grey, channels: 1), resized to `size` and normalised per channel:
    (pixel / 255 - mean) / std. Defaults: ImageNet's mean and std, as timm and torchvision models expect."""

    size: list[Annotated[int, Field(gt=0)]] = Field(default=[32, 32], min_length=2, max_length=2,
                                                    description="[height, width] after resizing")
    channels: Literal[1, 3] = 3
    mean: list[float] = Field(default=[0.485, 0.456, 0.406], min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(default=[0.229, 0.224, 0.225], min_length=1, max_length=3)
    min_per_class: int = Field(2, gt=0, description="a class folder with fewer images is an error")


class TextSpec(Section):
    """Texts become token ids with the Hugging Face tokenizer saved in `tokenizer` (save_pretrained's folder),
    padded or truncated to `max_length`; the model masks the padding."""

    tokenizer: str = Field(min_length=1, description="folder of a saved tokenizer, under the project root")
    max_length: int = Field(64, gt=1)


class ImageFolderSource(Section):
    """One subfolder per class under `path`, holding PNG or JPEG images; the subfolder's name is the class name."""

    kind: Literal["images"]
    path: str = Field(min_length=1, description="the folder of class folders, e.g. data/raw/images")
    classes: Optional[list[Union[StrictInt, str]]] = Field(
        None, min_length=2, description="every class folder the task may use; default: the task classes")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of each class held out for testing")


class ImageFolderTransfer(Section):
    """Unlabelled images: every PNG or JPEG under `path`, at any depth."""

    kind: Literal["images"]
    path: str = Field(min_length=1)

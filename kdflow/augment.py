"""Train-time image augmentation (`train.hflip`, `train.crop_padding`): a fresh random flip and shifted crop of
every image each epoch, drawn from the training loop's shuffling generator, so the same seed gives the same
images and a resumed run continues the same sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augments(spec) -> bool:
    return bool(spec.hflip or spec.crop_padding)


def augment(x: torch.Tensor, spec, generator: torch.Generator) -> torch.Tensor:
    """`x` (images, channels, height, width) flipped left-right with probability 1/2 (hflip) and cropped back to
    its size from a copy padded by `crop_padding` zeros on each side (0 is the mean after normalisation)."""
    if x.dim() != 4:
        raise ValueError(f"train.hflip and train.crop_padding augment images (channels, height, width); these rows "
                         f"have the shape {list(x.shape[1:])}: set both off for them")
    count, channels, height, width = x.shape
    if spec.hflip:
        flip = (torch.rand(count, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if spec.crop_padding:
        pad = spec.crop_padding
        padded = F.pad(x, (pad, pad, pad, pad))
        shifts = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator).to(x.device)
        rows = (torch.arange(height, device=x.device).view(1, -1) + shifts[:, :1])[:, None, :, None]
        columns = (torch.arange(width, device=x.device).view(1, -1) + shifts[:, 1:])[:, None, None, :]
        images = torch.arange(count, device=x.device).view(-1, 1, 1, 1)
        x = padded[images, torch.arange(channels, device=x.device).view(1, -1, 1, 1), rows, columns]
    return x

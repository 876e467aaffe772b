"""Train-time image augmentation: each image is itself, flipped, or shifted by at most `crop_padding` with zeros
coming in; the same generator state gives the same images."""

from __future__ import annotations

import pytest
import torch

from kdflow.augment import augment
from kdflow.config import TrainSpec


def shifted(image: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """`image` moved `down` rows and `right` columns, zeros where nothing moved in (computed with slices)."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[..., max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        image[..., max(-down, 0):height - max(down, 0), max(-right, 0):width - max(right, 0)]
    return out


def test_a_crop_is_the_image_shifted_by_at_most_the_padding_and_every_shift_occurs():
    images = torch.arange(1, 1 + 200 * 2 * 4 * 5, dtype=torch.float32).reshape(200, 2, 4, 5)
    out = augment(images, TrainSpec(crop_padding=1), torch.Generator().manual_seed(0))
    seen = set()
    for image, result in zip(images, out):
        matches = [(d, r) for d in (-1, 0, 1) for r in (-1, 0, 1) if torch.equal(shifted(image, d, r), result)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9


def test_a_flip_mirrors_about_half_the_images_and_the_same_seed_flips_the_same():
    images = torch.randn(400, 3, 2, 4)
    spec = TrainSpec(hflip=True)
    out = augment(images, spec, torch.Generator().manual_seed(1))
    flipped = [torch.equal(result, image.flip(-1)) for image, result in zip(images, out)]
    kept = [torch.equal(result, image) for image, result in zip(images, out)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 160 < sum(flipped) < 240  # Binomial(400, 1/2): 200 +- 40 is five standard deviations
    assert torch.equal(out, augment(images, spec, torch.Generator().manual_seed(1)))


def test_rows_that_are_not_images_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"augment images \(channels, height, width\); these rows have the shape \[40\]"):
        augment(torch.zeros(3, 40), TrainSpec(hflip=True), torch.Generator())

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU blocks on the flattened input; one backbone block per hidden layer."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        width = math.prod(input_shape)
        blocks: list[nn.Module] = []
        for size in hidden:
            layers: list[nn.Module] = [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = size
        self.flatten = nn.Flatten()
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.backbone(self.flatten(x)))

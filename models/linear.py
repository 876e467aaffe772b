from __future__ import annotations

import math

from torch import nn


class LinearModel(nn.Module):
    """Multinomial logistic regression: no backbone, the head alone."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.backbone = nn.Sequential()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.head(self.flatten(x))

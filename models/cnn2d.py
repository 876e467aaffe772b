from __future__ import annotations

from torch import nn

from models.cnn1d import dense_block


class CNN2D(nn.Module):
    """2-D convolution blocks for image-like rows, then flatten or a global pool, an optional dense layer, and the
    head. Input is (batch, height, width) or (batch, channels, height, width); a missing channel axis is added.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int],
        kernel_size: int = 3,
        stride: int = 1,
        pool: str = "max",
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn2d needs an image-like input (channels, height, width) or (height, width), got "
                             f"{list(input_shape)}; set data.source.reshape, e.g. [1, 8, 8]")
        in_channels, height, width = (1, *input_shape) if len(input_shape) == 2 else input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
            blocks.append(nn.Sequential(conv, nn.ReLU()))
            in_channels = out_channels
            height, width = ((size + 2 * (kernel_size // 2) - kernel_size) // stride + 1 for size in (height, width))
        dense, features = dense_block(pool, in_channels, height * width, (-2, -1), hidden, dropout)
        blocks.append(dense)
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.backbone(x))

from __future__ import annotations

from torch import nn


class GlobalPool(nn.Module):
    """Max or mean over the spatial axes `dims`: with circular padding it makes the features shift-invariant."""

    def __init__(self, mode: str, dims: tuple[int, ...] = (-1,)):
        super().__init__()
        self.mode, self.dims = mode, dims

    def forward(self, x):
        return x.amax(dim=self.dims) if self.mode == "max" else x.mean(dim=self.dims)


def dense_block(pool: str, channels: int, spatial_size: int, spatial_dims: tuple[int, ...], hidden: int,
                dropout: float) -> tuple[nn.Sequential, int]:
    """The backbone's last block, after the convolutions: flatten (channels x spatial_size features) or a global
    pool (channels), an optional dense ReLU layer, dropout; and the width the head gets."""
    if pool == "flatten":
        layers: list[nn.Module] = [nn.Flatten()]
        width = channels * spatial_size
    else:
        layers = [GlobalPool(pool, spatial_dims)]
        width = channels
    if hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), width


class CNN1D(nn.Module):
    """1-D convolution blocks, then flatten (as the MNIST-1D paper's CNN) or a global pool, an optional dense
    layer, and the head. Input is (batch, length) or (batch, channels, length); a missing channel axis is added.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: list[int],
        kernel_size: int = 5,
        stride: int = 2,
        padding_mode: str = "zeros",
        pool: str = "flatten",
        hidden: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        in_channels, length = (1, input_shape[0]) if len(input_shape) == 1 else input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            conv = nn.Conv1d(
                in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                padding_mode=padding_mode,
            )
            blocks.append(nn.Sequential(conv, nn.ReLU()))
            in_channels = out_channels
            length = (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1
        dense, width = dense_block(pool, in_channels, length, (-1,), hidden, dropout)
        blocks.append(dense)
        self.backbone = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.backbone(x))

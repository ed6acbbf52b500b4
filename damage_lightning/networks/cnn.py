"""A plain convolutional backbone for spectrograms: conv-BN-ReLU-pool blocks, global pooling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from damage_lightning.networks.common import (
    check_positive_list,
    downsample_stride,
    global_pool,
    pooled_size,
    spatial_size,
)


class CNNBackbone(nn.Sequential):
    """One conv-BN-ReLU-pool block per width, then global average pooling.

    Each pooling halves only the axes still at least 2 long (known from ``input_shape``), so a
    spectrogram with few frames is never pooled down to nothing. Maps ``(B, C, F, T)`` to
    ``(B, out_features)`` with ``out_features == widths[-1]``; scriptable and exportable.

    Args:
        in_channels: channels of the input spectrogram.
        input_shape: ``(channels, freq, frames)`` of the input, or ``None`` when unknown
            (assumed large).
        widths: output channels of the convolution blocks, one block per entry.
        kernel_size: odd kernel size of the convolutions ("same" padding).
        pool: ``max`` or ``avg`` pooling between blocks.
    """

    def __init__(
        self,
        in_channels: int,
        input_shape: Sequence[int] | None = None,
        widths: Sequence[int] = (32, 64, 128, 256),
        kernel_size: int = 3,
        pool: Literal["max", "avg"] = "max",
    ) -> None:
        widths = [int(w) for w in widths]
        check_positive_list(widths, "widths")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        pool_class = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        layers: list[nn.Module] = []
        channels = in_channels
        size = spatial_size(input_shape)
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            stride = downsample_stride(size)
            if stride != (1, 1):
                layers.append(pool_class(kernel_size=stride, stride=stride))
            size = pooled_size(size, stride)
            channels = width
        super().__init__(*layers, *global_pool())
        self.out_features = channels

"""A plain convolutional network for spectrograms: conv-BN-ReLU-pool blocks and a linear head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from damage_lightning.models.base import (
    DamageClassifier,
    check_positive_list,
    classifier_head,
    downsample_stride,
    pooled_size,
)


def conv_network(
    in_channels: int,
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128, 256),
    kernel_size: int = 3,
    dropout: float = 0.3,
    pool: Literal["max", "avg"] = "max",
    spatial_size: tuple[int, int] | None = None,
) -> nn.Sequential:
    """Build the CNN: one conv-BN-ReLU-pool block per width, global average pooling, head.

    Each pooling halves only the axes still at least 2 long (known from ``spatial_size``), so
    a spectrogram with few frames is never pooled down to nothing.

    Args:
        in_channels: channels of the input spectrogram.
        num_classes: number of logits.
        widths: output channels of the convolution blocks.
        kernel_size: odd kernel size of the convolutions ("same" padding).
        dropout: dropout probability before the linear head.
        pool: ``max`` or ``avg`` pooling between blocks.
        spatial_size: ``(freq, frames)`` of the input, or ``None`` when unknown (assumed large).

    Returns:
        a scriptable ``nn.Sequential`` mapping ``(B, C, F, T)`` to logits ``(B, num_classes)``.
    """
    pool_class = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    layers: list[nn.Module] = []
    channels = in_channels
    size = spatial_size
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
    layers += classifier_head(channels, num_classes, dropout)
    return nn.Sequential(*layers)


class CNNClassifier(DamageClassifier):
    """Convolutional classifier of spectrograms (conv-BN-ReLU-pool blocks, global pooling).

    Args:
        widths: output channels of the convolution blocks, one block per entry.
        kernel_size: odd kernel size of the convolutions.
        dropout: dropout probability before the linear head.
        pool: ``max`` or ``avg`` pooling between blocks.
        **kwargs: the arguments of :class:`DamageClassifier` (``num_classes``, ``lr``, ...).
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        kernel_size: int = 3,
        dropout: float = 0.3,
        pool: Literal["max", "avg"] = "max",
        **kwargs: Any,
    ) -> None:
        # A list, so that hparams.yaml and model_info.json hold plain YAML/JSON.
        widths = [int(w) for w in widths]
        check_positive_list(widths, "widths")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(**kwargs)

    def build_network(self) -> nn.Module:
        """The :func:`conv_network` for this model's hyperparameters."""
        hp = self.hparams
        return conv_network(
            in_channels=hp.in_channels,
            num_classes=hp.num_classes,
            widths=hp.widths,
            kernel_size=hp.kernel_size,
            dropout=hp.dropout,
            pool=hp.pool,
            spatial_size=None if hp.input_shape is None else tuple(hp.input_shape[1:]),
        )

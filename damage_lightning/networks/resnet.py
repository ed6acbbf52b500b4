"""A small residual backbone for spectrograms: stem, stages of basic blocks, global pooling."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from damage_lightning.networks.common import (
    check_positive_list,
    downsample_stride,
    global_pool,
    spatial_size,
    strided_size,
)


class ResidualBlock(nn.Module):
    """Basic residual block: conv-BN-ReLU-conv-BN plus a shortcut, then ReLU.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (per axis, or one for both).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int | tuple[int, int] = 1):
        super().__init__()
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        # A 1x1 projection only where the identity cannot be added (shape changes).
        self.shortcut: nn.Module
        if stride != (1, 1) or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum of the block, ``(B, out_channels, F', T')``.

        Args:
            x: input feature map ``(B, in_channels, F, T)``.
        """
        return self.relu(self.body(x) + self.shortcut(x))


def residual_block(
    in_channels: int, out_channels: int, stride: int | tuple[int, int] = 1
) -> nn.Module:
    """A basic residual block (conv-BN-ReLU-conv-BN + shortcut, projected when shapes change).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution and of the projection (per axis, or one int).

    Returns:
        the block, mapping ``(B, in_channels, F, T)`` to ``(B, out_channels, F', T')``.
    """
    return ResidualBlock(in_channels, out_channels, stride)


class ResNetBackbone(nn.Sequential):
    """Stem, one stage of basic blocks per width (as in ResNet-18, scaled down), global pooling.

    The stem max-pools and the first block of every stage after the first has stride 2, each
    only along axes still at least 2 long (known from ``input_shape``). Maps ``(B, C, F, T)``
    to ``(B, out_features)`` with ``out_features == widths[-1]``; scriptable and exportable.

    Args:
        in_channels: channels of the input spectrogram.
        input_shape: ``(channels, freq, frames)`` of the input, or ``None`` when unknown
            (assumed large).
        stem_width: output channels of the stem convolution.
        widths: output channels of the stages, one stage per entry.
        blocks_per_stage: residual blocks per stage, one entry per stage.
    """

    def __init__(
        self,
        in_channels: int,
        input_shape: Sequence[int] | None = None,
        stem_width: int = 32,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
    ) -> None:
        widths = [int(w) for w in widths]
        blocks_per_stage = [int(n) for n in blocks_per_stage]
        if stem_width < 1:
            raise ValueError(f"stem_width must be positive, got {stem_width}")
        check_positive_list(widths, "widths")
        check_positive_list(blocks_per_stage, "blocks_per_stage")
        if len(blocks_per_stage) != len(widths):
            raise ValueError(
                f"blocks_per_stage must give the number of blocks of each of the "
                f"{len(widths)} stages in widths {widths}, got {blocks_per_stage}"
            )
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        ]
        size = spatial_size(input_shape)
        stride = downsample_stride(size)
        if stride != (1, 1):
            layers.append(nn.MaxPool2d(kernel_size=3, stride=stride, padding=1))
            size = strided_size(size, stride)
        channels = stem_width
        for stage, (width, n_blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            for block in range(n_blocks):
                stride = downsample_stride(size) if stage > 0 and block == 0 else (1, 1)
                layers.append(residual_block(channels, width, stride))
                size = strided_size(size, stride)
                channels = width
        super().__init__(*layers, *global_pool())
        self.out_features = channels

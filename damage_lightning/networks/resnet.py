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
        stride: the block's downsampling (per axis, or one for both).
        pool: downsample by a 3x3 max pooling of the input (shared by both branches) instead
            of a strided first convolution and projection. The weights are the same either way.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, int] = 1,
        pool: bool = False,
    ):
        super().__init__()
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.pool: nn.Module = nn.Identity()
        if pool and stride != (1, 1):
            self.pool = nn.MaxPool2d(kernel_size=3, stride=stride, padding=1)
            stride = (1, 1)
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
        x = self.pool(x)
        return self.relu(self.body(x) + self.shortcut(x))


def residual_block(
    in_channels: int, out_channels: int, stride: int | tuple[int, int] = 1, pool: bool = False
) -> nn.Module:
    """A basic residual block (conv-BN-ReLU-conv-BN + shortcut, projected when shapes change).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: the block's downsampling per axis, or one int.
        pool: downsample by max pooling the input rather than by strided convolutions.

    Returns:
        the block, mapping ``(B, in_channels, F, T)`` to ``(B, out_channels, F', T')``.
    """
    return ResidualBlock(in_channels, out_channels, stride, pool)


#: How the stages after the first halve the map (see :class:`ResNetBackbone`).
DOWNSAMPLE = ("maxpool", "stride")


class ResNetBackbone(nn.Sequential):
    """Stem, one stage of basic blocks per width (as in ResNet-18, scaled down), global pooling.

    The stem max-pools, and every stage after the first halves the map once, each time only
    along axes still at least 2 long (known from ``input_shape``). ``downsample`` says how:
    ``"maxpool"`` max-pools (3x3, stride 2) the input of the stage's first block, whose
    convolutions then keep stride 1; ``"stride"`` gives that block stride 2 (ResNet-18's
    way). A stride-2 3x3 convolution samples every other position, so a spectral peak one bin
    higher lands on other weights; max pooling keeps the strongest response around each
    position, so small shifts of a mode (a stiffness drift, another shaft speed) barely change
    the output. Maps ``(B, C, F, T)`` to ``(B, out_features)`` with
    ``out_features == widths[-1]``; scriptable and exportable.

    Args:
        in_channels: channels of the input spectrogram.
        input_shape: ``(channels, freq, frames)`` of the input, or ``None`` when unknown
            (assumed large).
        stem_width: output channels of the stem convolution.
        widths: output channels of the stages, one stage per entry.
        blocks_per_stage: residual blocks per stage, one entry per stage.
        downsample: ``"maxpool"`` or ``"stride"``, how stages after the first downsample.
    """

    def __init__(
        self,
        in_channels: int,
        input_shape: Sequence[int] | None = None,
        stem_width: int = 32,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        downsample: str = "stride",
    ) -> None:
        if downsample not in DOWNSAMPLE:
            raise ValueError(
                f"downsample must be one of {', '.join(DOWNSAMPLE)}, got {downsample!r}"
            )
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
                layers.append(residual_block(channels, width, stride, downsample == "maxpool"))
                size = strided_size(size, stride)
                channels = width
        super().__init__(*layers, *global_pool())
        self.out_features = channels

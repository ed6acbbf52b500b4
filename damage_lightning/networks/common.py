"""Shape bookkeeping and layers shared by the backbones (no Lightning here)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def check_positive_list(values: Sequence[int], name: str) -> None:
    """Raise ``ValueError`` unless ``values`` is a non-empty list of positive integers.

    Args:
        values: e.g. the channel widths of a network.
        name: the argument's name, for the message.
    """
    if len(values) == 0 or min(values) < 1:
        raise ValueError(
            f"{name} must be a non-empty list of positive integers, got {list(values)}"
        )


def spatial_size(input_shape: Sequence[int] | None) -> tuple[int, int] | None:
    """The ``(freq, frames)`` part of a ``(channels, freq, frames)`` input shape.

    Args:
        input_shape: the shape of one spectrogram, or ``None`` when unknown.
    """
    return None if input_shape is None else (int(input_shape[1]), int(input_shape[2]))


def downsample_stride(size: tuple[int, int] | None) -> tuple[int, int]:
    """Stride for one 2x downsampling of a ``(freq, frames)`` map that never empties it.

    Each axis is halved only while it is at least 2 long, so small spectrograms (few frames)
    keep at least one cell; an unknown size (``None``) is assumed large enough for both.

    Args:
        size: the current spatial size, or ``None`` when unknown.

    Returns:
        the stride per axis, 2 or 1.
    """
    if size is None:
        return (2, 2)
    return (2 if size[0] >= 2 else 1, 2 if size[1] >= 2 else 1)


def pooled_size(size: tuple[int, int] | None, stride: tuple[int, int]) -> tuple[int, int] | None:
    """Spatial size after pooling with ``kernel_size == stride`` (floor mode).

    Args:
        size: the spatial size before pooling, or ``None`` when unknown.
        stride: the pooling kernel and stride per axis.
    """
    if size is None:
        return None
    return (size[0] // stride[0], size[1] // stride[1])


def strided_size(size: tuple[int, int] | None, stride: tuple[int, int]) -> tuple[int, int] | None:
    """Spatial size after a padded ("same") convolution or pooling with the given stride.

    Args:
        size: the spatial size before the layer, or ``None`` when unknown.
        stride: the stride per axis.
    """
    if size is None:
        return None
    return ((size[0] - 1) // stride[0] + 1, (size[1] - 1) // stride[1] + 1)


def global_pool() -> list[nn.Module]:
    """Global average pooling and flattening: a ``(B, C, F, T)`` map becomes ``(B, C)``."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]

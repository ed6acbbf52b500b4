"""Backbones: plain ``nn.Module`` networks from spectrograms to embeddings, and their registry.

A backbone maps spectrograms ``(B, C, F, T)`` to embeddings ``(B, out_features)`` and has an
integer attribute ``out_features``; tasks (``damage_lightning.tasks``) put their head on it.
Nothing here imports Lightning. A new backbone is one new file plus one
:func:`register_backbone` call below (or in the user's own code before the task is built).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from damage_lightning.networks.cnn import CNNBackbone
from damage_lightning.networks.resnet import ResNetBackbone
from damage_lightning.networks.spectrum import SpectrumBackbone

BackboneFactory = Callable[..., nn.Module]

_BACKBONES: dict[str, BackboneFactory] = {}
# Every factory takes these; the task passes them from the DataModule's facts.
_COMMON_ARGUMENTS = ("in_channels", "input_shape")


def register_backbone(name: str, factory: BackboneFactory) -> None:
    """Make a backbone buildable by name (``ClassificationTask(backbone=name)``, YAML configs).

    Args:
        name: the name configs use, e.g. ``cnn``.
        factory: a class or function called as ``factory(in_channels=..., input_shape=...,
            **backbone_args)`` that returns an ``nn.Module`` with an ``out_features`` attribute.

    Raises:
        ValueError: when ``name`` is already taken by another factory.
    """
    known = _BACKBONES.get(name)
    if known is not None and known is not factory:
        raise ValueError(f"backbone name {name!r} is already registered for {known!r}")
    _BACKBONES[name] = factory


def backbone_names() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(_BACKBONES)


def build_backbone(
    name: str, in_channels: int, input_shape: Sequence[int] | None = None, **kwargs: Any
) -> nn.Module:
    """Build the backbone registered as ``name``.

    Args:
        name: a registered name (see :func:`backbone_names`).
        in_channels: channels of the input spectrogram.
        input_shape: ``(channels, freq, frames)`` of one spectrogram, or ``None`` when unknown;
            backbones downsample only while the map is large enough.
        **kwargs: the backbone's own arguments (``widths``, ...).

    Returns:
        the backbone, mapping ``(B, C, F, T)`` to ``(B, backbone.out_features)``.

    Raises:
        ValueError: for an unknown name, arguments the backbone does not take, or bad values.
        TypeError: when the factory returns a module without an integer ``out_features``.
    """
    factory = _BACKBONES.get(name)
    if factory is None:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}")
    try:
        inspect.signature(factory).bind(in_channels=in_channels, input_shape=input_shape, **kwargs)
    except TypeError as exc:
        own = [p for p in inspect.signature(factory).parameters if p not in _COMMON_ARGUMENTS]
        raise ValueError(
            f"backbone {name!r} takes the arguments {own}, got {sorted(kwargs)}: {exc}"
        ) from None
    backbone = factory(in_channels=in_channels, input_shape=input_shape, **kwargs)
    out_features = getattr(backbone, "out_features", None)
    if not isinstance(out_features, int) or out_features < 1:
        raise TypeError(
            f"backbone {name!r} built a {type(backbone).__name__} without a positive integer "
            f"`out_features` (the size of its embedding), got {out_features!r}"
        )
    return backbone


register_backbone("cnn", CNNBackbone)
register_backbone("resnet", ResNetBackbone)
register_backbone("spectrum", SpectrumBackbone)

__all__ = [
    "BackboneFactory",
    "CNNBackbone",
    "ResNetBackbone",
    "SpectrumBackbone",
    "backbone_names",
    "build_backbone",
    "register_backbone",
]

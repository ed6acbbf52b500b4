"""``ResNetClassifier``: the classification task with the ``resnet`` backbone and its arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from damage_lightning.networks.resnet import ResidualBlock, residual_block
from damage_lightning.tasks.classification import ClassificationTask

__all__ = ["ResNetClassifier", "ResidualBlock", "residual_block"]


class ResNetClassifier(ClassificationTask):
    """Residual classifier of spectrograms (basic blocks, as in ResNet-18, scaled down).

    The same as ``ClassificationTask(backbone="resnet", backbone_args={...})``, with the
    backbone's arguments as its own (``damage_lightning.networks.resnet.ResNetBackbone``).

    Args:
        stem_width: output channels of the stem convolution.
        widths: output channels of the stages, one stage per entry.
        blocks_per_stage: residual blocks per stage, one entry per stage.
        downsample: how stages after the first halve the map: ``"maxpool"`` (max pooling
            before the stage, robust to small frequency shifts; ``configs/resnet.yaml``) or
            ``"stride"`` (a stride-2 first convolution, as in ResNet-18; the default, so that
            checkpoints saved before the option load unchanged).
        dropout: dropout probability before the linear head.
        **kwargs: the arguments of :class:`~damage_lightning.tasks.ClassificationTask`
            (``num_classes``, ``lr``, ...).
    """

    # Fixed here and derived from the arguments above, so hyperparameters hold only those.
    ignore = ("backbone", "backbone_args")

    def __init__(
        self,
        stem_width: int = 32,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        downsample: str = "stride",
        dropout: float = 0.2,
        **kwargs: Any,
    ) -> None:
        # Lists, so that hparams.yaml and model_info.json hold plain YAML/JSON.
        widths = [int(w) for w in widths]
        blocks_per_stage = [int(n) for n in blocks_per_stage]
        super().__init__(
            backbone="resnet",
            backbone_args={
                "stem_width": stem_width,
                "widths": widths,
                "blocks_per_stage": blocks_per_stage,
                "downsample": downsample,
            },
            dropout=dropout,
            **kwargs,
        )

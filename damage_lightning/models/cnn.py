"""``CNNClassifier``: the classification task with the ``cnn`` backbone and its typed arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from damage_lightning.tasks.classification import ClassificationTask


class CNNClassifier(ClassificationTask):
    """Convolutional classifier of spectrograms (conv-BN-ReLU-pool blocks, global pooling).

    The same as ``ClassificationTask(backbone="cnn", backbone_args={...})``, with the
    backbone's arguments as its own (``damage_lightning.networks.cnn.CNNBackbone``).

    Args:
        widths: output channels of the convolution blocks, one block per entry.
        kernel_size: odd kernel size of the convolutions.
        dropout: dropout probability before the linear head.
        pool: ``max`` or ``avg`` pooling between blocks.
        **kwargs: the arguments of :class:`~damage_lightning.tasks.ClassificationTask`
            (``num_classes``, ``lr``, ...).
    """

    # Fixed here and derived from the arguments above, so hyperparameters hold only those.
    ignore = ("backbone", "backbone_args")

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
        super().__init__(
            backbone="cnn",
            backbone_args={"widths": widths, "kernel_size": kernel_size, "pool": pool},
            dropout=dropout,
            **kwargs,
        )

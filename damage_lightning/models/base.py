"""The classifier base of the first release, kept for code written against it.

:class:`DamageClassifier` is the classification task for subclasses that build their own
network in :meth:`DamageClassifier.build_network`. New code registers a backbone
(``damage_lightning.networks.register_backbone``) and uses
``damage_lightning.tasks.ClassificationTask``, or overrides its ``configure_models``. The
helpers this module used to define are importable from here still.
"""

from __future__ import annotations

from torch import nn

from damage_lightning.networks.common import (
    check_positive_list,
    downsample_stride,
    global_pool,
    pooled_size,
    strided_size,
)
from damage_lightning.tasks.base import NAN_CHECK_INTERVAL, TrainingDivergedError
from damage_lightning.tasks.classification import ClassificationTask, classification_head

__all__ = [
    "NAN_CHECK_INTERVAL",
    "DamageClassifier",
    "TrainingDivergedError",
    "check_positive_list",
    "classifier_head",
    "downsample_stride",
    "pooled_size",
    "strided_size",
]


def classifier_head(channels: int, num_classes: int, dropout: float) -> list[nn.Module]:
    """Global average pooling, dropout and the linear layer (a backbone's end plus the head).

    Args:
        channels: channels of the last feature map.
        num_classes: number of logits.
        dropout: dropout probability before the linear layer.
    """
    return [*global_pool(), *classification_head(channels, num_classes, dropout)]


class DamageClassifier(ClassificationTask):
    """Classification task whose subclass builds the whole network in :meth:`build_network`.

    Everything else (cross-entropy, metrics, optimiser, prediction) is
    :class:`~damage_lightning.tasks.ClassificationTask`'s; its ``backbone``, ``backbone_args``
    and ``dropout`` are unused here and left out of the saved hyperparameters.
    """

    ignore = ("backbone", "backbone_args", "dropout")

    def configure_models(self) -> None:
        """``self.net`` is what :meth:`build_network` returns."""
        self.net = self.build_network()

    def build_network(self) -> nn.Module:
        """Build the network mapping spectrograms ``(B, C, F, T)`` to logits ``(B, K)``.

        Subclasses implement this; the hyperparameters (``self.hparams``) are available.

        Returns:
            a plain ``nn.Module`` (scriptable and exportable to ONNX).
        """
        raise TypeError(
            f"{type(self).__name__} does not build a network: a DamageClassifier subclass must "
            "implement build_network() returning an nn.Module that maps spectrograms "
            "(B, C, F, T) to logits (B, num_classes); use CNNClassifier or ResNetClassifier, "
            "ClassificationTask with a registered backbone, or write such a subclass"
        )

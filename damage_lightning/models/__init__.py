"""Network architectures and the shared LightningModule base."""

from damage_lightning.models.base import DamageClassifier
from damage_lightning.models.cnn import CNNClassifier
from damage_lightning.models.resnet import ResNetClassifier

__all__ = ["CNNClassifier", "DamageClassifier", "ResNetClassifier"]

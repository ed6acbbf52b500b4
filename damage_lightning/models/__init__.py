"""The classifiers by architecture, ``CNNClassifier`` and ``ResNetClassifier`` (config class paths).

Each is ``damage_lightning.tasks.ClassificationTask`` with its backbone fixed;
``DamageClassifier`` is the base for subclasses that build their own network.
"""

from damage_lightning.models.base import DamageClassifier
from damage_lightning.models.cnn import CNNClassifier
from damage_lightning.models.resnet import ResNetClassifier

__all__ = ["CNNClassifier", "DamageClassifier", "ResNetClassifier"]

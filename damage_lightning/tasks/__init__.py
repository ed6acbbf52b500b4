"""Tasks: the LightningModules that own a network, its loss, metrics and steps."""

from damage_lightning.tasks.base import NAN_CHECK_INTERVAL, BaseTask, TrainingDivergedError
from damage_lightning.tasks.classification import ClassificationTask
from damage_lightning.tasks.novelty import NoveltyTask

__all__ = [
    "NAN_CHECK_INTERVAL",
    "BaseTask",
    "ClassificationTask",
    "NoveltyTask",
    "TrainingDivergedError",
]

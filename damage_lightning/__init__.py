"""damage_lightning: train, evaluate, export and report damage classifiers on vibration recordings.

The public names are imported lazily, so that light modules (CSV reading, the torch-free parts)
can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DamageDataModule": "damage_lightning.data.datamodule",
    "SpectrogramFrontend": "damage_lightning.data.frontend",
    "generate_dataset": "damage_lightning.data.synthetic",
    "BaseTask": "damage_lightning.tasks.base",
    "ClassificationTask": "damage_lightning.tasks.classification",
    "NoveltyTask": "damage_lightning.tasks.novelty",
    "DamageClassifier": "damage_lightning.models.base",
    "CNNClassifier": "damage_lightning.models.cnn",
    "ResNetClassifier": "damage_lightning.models.resnet",
    "run_training": "damage_lightning.runner",
    "run_cnn": "damage_lightning.runner",
    "run_resnet": "damage_lightning.runner",
    "TrainingResult": "damage_lightning.runner",
    "load_from_checkpoint": "damage_lightning.export",
    "DataValidationError": "damage_lightning.errors",
    "ConfigError": "damage_lightning.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'damage_lightning' has no attribute {name!r}")

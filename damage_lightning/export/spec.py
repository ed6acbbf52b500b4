"""What a checkpoint records to rebuild a model's input side, built in one place.

The checkpoint's ``damage_lightning`` section is an :class:`ExportSpec`: the task class, the front
end's settings and fitted statistics, classes, channels, rate, window and hop. ``fit`` (at the end
of training) and ``export`` (from a checkpoint file) both derive the model's metadata from it, so
they write identical metadata.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from torch import Tensor, nn

from damage_lightning.data.order import SPEED_INPUT
from damage_lightning.deploy.metadata import ModelMetadata

SECTION = "damage_lightning"


def class_path(obj: object) -> str:
    """``package.module.Class`` of an object's class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class ExportSpec:
    """The checkpoint's ``damage_lightning`` section.

    Args:
        model_class_path: the task class (a ``BaseTask`` subclass) that trained the network.
        frontend_settings: the front end's constructor arguments (all of them).
        frontend_state: the front end's buffers (normalisation statistics).
        class_names: class names in output order.
        channels: channel names in input order.
        sample_rate: the model's sample rate in Hz.
        window: window length in samples.
        hop: default step between windows.
        health_reference: the sensor-health gate's RMS reference fitted on the training data
            (``card.SensorReference`` as JSON values); ``None`` in checkpoints from before the
            gate. It reaches the exported model's metadata as ``evaluation.health.METADATA_KEY``.
        speed_column: the manifest column of the shaft speed, for a model with order spectra
            (its second input ``rpm``); ``None`` for a model without a speed input.
    """

    model_class_path: str
    frontend_settings: dict[str, Any]
    frontend_state: dict[str, Tensor]
    class_names: list[str]
    channels: list[str]
    sample_rate: float
    window: int
    hop: int
    health_reference: dict[str, Any] | None = None
    speed_column: str | None = None

    @classmethod
    def of(cls, model: nn.Module, datamodule: Any) -> ExportSpec:
        """The spec of a task trained on a ``DamageDataModule`` (its front end built)."""
        frontend = datamodule.frontend
        return cls(
            model_class_path=class_path(model),
            frontend_settings=frontend.settings(),
            frontend_state={k: v.detach().cpu() for k, v in frontend.state_dict().items()},
            class_names=list(datamodule.class_names),
            channels=list(datamodule.channels),
            sample_rate=float(datamodule.sample_rate),
            window=int(datamodule.window),
            hop=int(datamodule.hop),
            health_reference=_reference_json(getattr(datamodule, "health_reference", None)),
            speed_column=datamodule.hparams.rpm_column if frontend.settings()["order"] else None,
        )

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain values and tensors only (the checkpoint is loaded with ``weights_only=True``)."""
        return {
            "model_class_path": self.model_class_path,
            "frontend_settings": dict(self.frontend_settings),
            "frontend_state": dict(self.frontend_state),
            "class_names": list(self.class_names),
            "channels": list(self.channels),
            "sample_rate": float(self.sample_rate),
            "window": int(self.window),
            "hop": int(self.hop),
            "health_reference": self.health_reference,
            "speed_column": self.speed_column,
        }

    @classmethod
    def from_checkpoint(cls, section: Any) -> ExportSpec:
        """Decode a section written by :meth:`to_checkpoint`.

        Raises:
            KeyError: naming the missing entries.
        """
        if not isinstance(section, dict):
            raise KeyError("no 'damage_lightning' section")
        missing = [f.name for f in fields(cls) if f.name not in section and f.default is MISSING]
        if missing:
            raise KeyError(f"missing {missing}")
        return cls(
            model_class_path=str(section["model_class_path"]),
            frontend_settings=dict(section["frontend_settings"]),
            frontend_state=dict(section["frontend_state"]),
            class_names=[str(c) for c in section["class_names"]],
            channels=[str(c) for c in section["channels"]],
            sample_rate=float(section["sample_rate"]),
            window=int(section["window"]),
            hop=int(section["hop"]),
            health_reference=section.get("health_reference"),
            speed_column=section.get("speed_column"),
        )

    def metadata(self, **extra: Any) -> ModelMetadata:
        """The exported model's metadata (the one builder for every export).

        Args:
            **extra: further entries (JSON-encoded unless text), e.g. from later features.
        """
        from damage_lightning.deploy.metadata import (
            SPEED_COLUMN_KEY,
            SPEED_INPUT_KEY,
            json_text,
            jsonable,
        )
        from damage_lightning.evaluation.health import METADATA_KEY

        if self.health_reference is not None:
            extra.setdefault(METADATA_KEY, self.health_reference)
        if self.speed_column is not None:
            extra.update({SPEED_INPUT_KEY: SPEED_INPUT, SPEED_COLUMN_KEY: self.speed_column})
        return ModelMetadata(
            class_names=list(self.class_names),
            channels=list(self.channels),
            sample_rate=self.sample_rate,
            window_length=self.window,
            hop=self.hop,
            frontend=jsonable(self.frontend_settings),
            model_class_path=self.model_class_path,
            extra={
                k: v if isinstance(v, str) else json_text(jsonable(v)) for k, v in extra.items()
            },
        )


def _reference_json(reference: Any) -> dict[str, Any] | None:
    """A ``card.SensorReference`` as checkpoint values (``None`` stays ``None``)."""
    return None if reference is None else reference.to_json()

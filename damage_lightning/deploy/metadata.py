"""The metadata an exported model carries: one typed record, one way to write it and read it.

ONNX metadata props (and the TorchScript ``metadata.json``) are ``{key: text}``; lists and the
front-end settings are JSON, numbers plain decimal text. ``fit`` and ``export`` both build it from
the checkpoint's ``damage_lightning`` section (``export.spec.ExportSpec.metadata``), so the
same checkpoint gives the same metadata whichever command wrote the file. Torch-free: the
gateway reads it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from damage_lightning.errors import DataValidationError, Problem

# Keys the record writes itself; ``extra`` may not overwrite them.
RESERVED_KEYS = (
    "class_names",
    "channels",
    "sample_rate",
    "window_length",
    "hop",
    "frontend",
    "damage_lightning_version",
)
MODEL_CLASS_KEY = "model_class_path"
#: Extra entries of a classifier: the per-recording aggregation rule, the abstain floor
#: (JSON number or null) and the temperature applied inside the model (JSON number).
AGGREGATION_KEY = "aggregation"
ABSTAIN_KEY = "abstain"
TEMPERATURE_KEY = "temperature"
#: A classifier's feature-distance gate: the recording-level threshold (JSON number or null).
DISTANCE_THRESHOLD_KEY = "distance_threshold"
#: A model with order spectra: the name of its speed input (``rpm``, shaft speed in rev/min) and
#: the manifest column the speed of each recording is read from.
SPEED_INPUT_KEY = "speed_input"
SPEED_COLUMN_KEY = "speed_column"


def json_text(obj: Any) -> str:
    """JSON text that keeps non-ASCII readable, escaping only what UTF-8 cannot carry."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (e.g. from badly decoded file names) cannot go into a protobuf string;
        # \\u escapes carry them and still decode to the same Python string.
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text


def jsonable(obj: Any) -> Any:
    """Plain JSON values of nested mappings, sequences and numpy scalars."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        return obj.item()
    return obj


def _package_version() -> str:
    from damage_lightning import __version__

    return __version__


def _check_names(kind: str, names: Sequence[str]) -> list[str]:
    if not isinstance(names, list | tuple):
        raise ValueError(f"{kind} must be a list of names, got {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{kind}: at least one name is needed")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f"{kind}: every name must be a string, got {bad[0]!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{kind}: duplicate names {dupes[:5]!r}")
    return names


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model needs to be fed and read.

    Args:
        class_names: class names in the order of the model's outputs.
        channels: sensor channel names in the order of the model's input channels.
        sample_rate: samples per second the model expects.
        window_length: samples per window (the model's input length).
        hop: default step between windows when a recording is cut for prediction.
        frontend: the front end's settings (JSON values).
        model_class_path: the task class that trained the network, when known.
        version: the damage_lightning version that exported it (default: this one).
        extra: further entries as text (later features add their own).
    """

    class_names: list[str]
    channels: list[str]
    sample_rate: float
    window_length: int
    hop: int
    frontend: dict[str, Any]
    model_class_path: str | None = None
    version: str = field(default_factory=_package_version)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def speed_column(self) -> str | None:
        """The manifest column of the shaft speed, for a model that takes one (else ``None``)."""
        if SPEED_INPUT_KEY not in self.extra:
            return None
        return self.extra.get(SPEED_COLUMN_KEY) or "rpm"

    def __post_init__(self) -> None:
        _check_names("class_names", self.class_names)
        _check_names("channels", self.channels)
        rate = float(self.sample_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"sample_rate must be a positive number, got {self.sample_rate!r}")
        for name in ("window_length", "hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for key in self.extra:
            if not isinstance(key, str) or key in (*RESERVED_KEYS, MODEL_CLASS_KEY):
                raise ValueError(f"extra metadata key {key!r} is reserved or not a string")

    def to_props(self) -> dict[str, str]:
        """The ``{key: text}`` props; every JSON value is checked to survive a round trip.

        Raises:
            ValueError: text that does not survive the round trip (hostile names fail here).
        """
        encoded = {
            "class_names": self.class_names,
            "channels": self.channels,
            "frontend": jsonable(self.frontend),
        }
        props = {key: json_text(value) for key, value in encoded.items()}
        for key, value in encoded.items():
            if json.loads(props[key]) != value:
                raise ValueError(f"metadata {key!r} does not survive a JSON round trip: {value!r}")
        props["sample_rate"] = repr(float(self.sample_rate))
        props["window_length"] = str(int(self.window_length))
        props["hop"] = str(int(self.hop))
        props["damage_lightning_version"] = self.version
        if self.model_class_path:
            props[MODEL_CLASS_KEY] = self.model_class_path
        for key, text in self.extra.items():
            try:
                key.encode("utf-8")
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"extra metadata {key!r} is not valid Unicode text: {exc}"
                ) from exc
            props[key] = text
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "") -> ModelMetadata:
        """Decode props written by :meth:`to_props`.

        Args:
            props: the ``{key: text}`` map (ONNX metadata props, TorchScript ``metadata.json``).
            source: the file they came from, for error messages.

        Raises:
            DataValidationError: an entry is missing or malformed (a model not exported by
                damage_lightning).
        """
        missing = [k for k in RESERVED_KEYS if k not in props]
        if missing:
            raise DataValidationError(
                Problem(
                    source,
                    "metadata",
                    f"missing entries {missing}; was this model exported by damage_lightning?",
                )
            )
        try:
            record = cls(
                class_names=json.loads(props["class_names"]),
                channels=json.loads(props["channels"]),
                sample_rate=float(props["sample_rate"]),
                window_length=int(props["window_length"]),
                hop=int(props["hop"]),
                frontend=json.loads(props["frontend"]),
                model_class_path=props.get(MODEL_CLASS_KEY),
                version=props["damage_lightning_version"],
                extra={
                    k: v for k, v in props.items() if k not in (*RESERVED_KEYS, MODEL_CLASS_KEY)
                },
            )
        except (ValueError, TypeError) as exc:
            raise DataValidationError(
                Problem(source, "metadata", f"malformed entry: {exc}")
            ) from exc
        if not isinstance(record.frontend, dict):
            raise DataValidationError(Problem(source, "metadata", "frontend must be a JSON object"))
        return record

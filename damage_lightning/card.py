"""Typed records of a run folder's JSON files: the model card and the training history.

``finalize_run`` builds the card (``model_info.json``), the report adds its entry, the runner and
the report read it, each through the dataclasses below and their one ``to_json``/``from_json``
(:class:`JsonRecord`), so a change of the schema fails loudly where the file is read. Torch-free.
"""

from __future__ import annotations

import functools
import json
import os
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from damage_lightning.artifacts import atomic_write_json
from damage_lightning.errors import DataValidationError, Problem

MODEL_CARD_FILE = "model_info.json"
HISTORY_FILE = "training_history.json"

# Field metadata: "key" names the JSON key when it is not a Python name ("from"); "always" marks an
# optional field that its writer writes even when it is None (as null), such as best_checkpoint.
_KEY = "key"
_ALWAYS = "always"
_WRITTEN_AS_NULL = {_ALWAYS: True}
_REQUIRED = object()


@dataclass(kw_only=True)
class JsonRecord:
    """Base of the records: ``from_json`` checks a parsed JSON object against the type hints.

    A field without a default is required; one typed ``X | None`` may be null. Keys that a record
    does not declare are kept in ``extra`` and written back after the declared ones, so sections
    added by newer code survive a rewrite by older code. A record read from JSON writes back the
    keys it was read with (an absent key stays absent, a null stays null) plus any field set
    since; a record built in code writes every field that is not None (and required fields, and
    those its writer always writes, as null).

    Args:
        extra: keys of the JSON object that the record does not declare, with their values.
    """

    FILE: ClassVar[str] = MODEL_CARD_FILE

    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    _keys: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Any, *, source: str | None = None, where: str = "") -> Self:
        """Check and convert a parsed JSON object.

        Args:
            obj: the parsed JSON value.
            source: the file named in errors (default: the record's usual file name).
            where: location of ``obj`` inside that file, for errors (``"data"``).

        Raises:
            DataValidationError: a required field is missing or a value has the wrong type; the
                problem names the file, the field (``model.parameters``) and what was expected.
        """
        return _record(cls, obj, source or cls.FILE, where)

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON values (see the class docstring for which keys are written)."""
        out: dict[str, Any] = {}
        for f in _declared(type(self)):
            value = getattr(self, f.name)
            if self._keys is None:
                keep = value is not None or _default(f) is _REQUIRED or f.metadata.get(_ALWAYS)
            else:
                keep = f.name in self._keys or value != _default(f)
            if keep:
                out[f.metadata.get(_KEY, f.name)] = _dump(value)
        for key, value in self.extra.items():
            out.setdefault(key, _dump(value))
        return out

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """Read and check a JSON file.

        Raises:
            DataValidationError: the file is missing, is not JSON, or does not fit the record.
        """
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataValidationError(Problem(str(path), "", "not found")) from None
        except (OSError, ValueError) as exc:
            raise DataValidationError(
                Problem(str(path), "", f"could not be read ({exc})")
            ) from None
        return cls.from_json(obj, source=str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record atomically as JSON (``artifacts.atomic_write_json``)."""
        return atomic_write_json(path, self.to_json())


# ----------------------------------------------------------------------------------------------
# The model card, model_info.json (docs/architecture.md).


@dataclass(kw_only=True)
class ModelSummary(JsonRecord):
    """``model``: the trained LightningModule."""

    class_path: str
    name: str
    parameters: int
    trainable_parameters: int
    hyperparameters: dict[str, Any]
    architecture: str | None = None


@dataclass(kw_only=True)
class InputSpec(JsonRecord):
    """``input``: what the model reads; ``frontend`` holds the front end's settings."""

    channels: list[str]
    sample_rate: float
    window_length: int
    hop: int
    spectrogram_shape: list[int] | None = None
    frontend: dict[str, Any]
    #: A model with order spectra: its speed input (``rpm``) and the manifest column it reads.
    speed_input: str | None = None
    speed_column: str | None = None


@dataclass(kw_only=True)
class ClassSplitCounts(JsonRecord):
    """Recordings and windows of one class in one split."""

    recordings: int
    windows: int


@dataclass(kw_only=True)
class DataSummary(JsonRecord):
    """``data``: the dataset; ``per_class`` maps class -> split -> counts."""

    data_dir: str
    builtin: bool | None = None
    n_recordings: int
    per_class: dict[str, dict[str, ClassSplitCounts]]
    windows: dict[str, int] | None = None
    warnings: list[str]


@dataclass(kw_only=True)
class SplitTotals(JsonRecord):
    """Recordings, groups, samples and windows of one split."""

    recordings: int
    groups: int
    samples: int
    windows: int | None = None


@dataclass(kw_only=True)
class LeakageCheck(JsonRecord):
    """The independent check that no sample range or group is in two splits."""

    passed: bool
    overlapping_ranges: int
    shared_groups: int | None = None


@dataclass(kw_only=True)
class SplitSummary(JsonRecord):
    """``splits``: how the data was split (the full assignment is splits.json)."""

    strategy: str
    gap_samples: int
    summary: dict[str, SplitTotals]
    leakage_check: LeakageCheck


@dataclass(kw_only=True)
class ClassMetrics(JsonRecord):
    """Test metrics of one class (null where undefined)."""

    precision: float | None
    recall: float | None
    f1: float | None
    support: int


@dataclass(kw_only=True)
class LevelMetrics(JsonRecord):
    """Test metrics of one decision level (recordings or groups), from the top class of each.

    ``unknown``, ``coverage`` (decided share) and ``accuracy_decided`` (accuracy of the decided
    ones) describe the abstain floor ``abstain`` (null: the model never abstains).
    """

    n: int
    accuracy: float | None
    f1_macro: float | None
    per_class: dict[str, ClassMetrics] | None = None
    confusion_matrix: list[list[int]] | None = None
    unknown: int = 0
    coverage: float | None = None
    accuracy_decided: float | None = None
    abstain: float | None = None
    distance_threshold: float | None = None


@dataclass(kw_only=True)
class RecordingOutcomeRow(JsonRecord):
    """One test recording's (or group's) decision against its true class (the report's table).

    ``predicted`` is the top class, ``decision`` it or ``unknown``; ``confidence`` the aggregated
    probability of the top class; ``agreement`` the share of windows whose top class it is;
    ``correct`` whether the top class is the true one; ``distance`` the mean feature distance
    of its windows (a model with a distance gate).
    """

    name: str
    label: str
    predicted: str
    decision: str
    confidence: float
    agreement: float
    n_windows: int
    correct: bool
    distance: float | None = None


@dataclass(kw_only=True)
class CoveragePoint(JsonRecord):
    """Accuracy of the decided recordings when those below ``floor`` are unknown."""

    floor: float
    coverage: float
    accuracy: float


@dataclass(kw_only=True)
class RecordingLevel(JsonRecord):
    """``test_metrics.recording``: decisions per recording (and group) with ``aggregation``.

    ``table`` lists the test recordings worst first (wrong, then least confident).
    """

    aggregation: str
    recording: LevelMetrics
    group: LevelMetrics | None = None
    table: list[RecordingOutcomeRow]
    coverage_curve: list[CoveragePoint]


@dataclass(kw_only=True)
class ReliabilityBin(JsonRecord):
    """One confidence bin ``[lo, hi)`` of a reliability diagram."""

    lo: float
    hi: float
    confidence: float
    accuracy: float
    count: int


@dataclass(kw_only=True)
class CalibrationFigures(JsonRecord):
    """Expected calibration error (15 bins), Brier score, NLL and the reliability bins."""

    ece: float
    brier: float
    nll: float
    reliability: list[ReliabilityBin]


@dataclass(kw_only=True)
class CalibrationFit(JsonRecord):
    """The temperature fitted after training, and the NLL of the split it was fitted on."""

    temperature: float
    split: str
    val_windows: int
    val_nll_before: float
    val_nll_after: float


@dataclass(kw_only=True)
class CalibrationCard(JsonRecord):
    """``test_metrics.calibration``: the test windows before (``T = 1``) and after scaling."""

    temperature: float
    n_windows: int
    before: CalibrationFigures
    after: CalibrationFigures
    fit: CalibrationFit | None = None


@dataclass(kw_only=True)
class EvaluationMetrics(JsonRecord):
    """``test_metrics`` of the best checkpoint; the matrix's rows are the true classes.

    The window-level figures, plus the calibration and the recording-level verdicts where the
    task gives them. (Not called ``TestMetrics``: pytest would take that name for a test class.)
    """

    loss: float | None
    accuracy: float | None
    f1_macro: float | None
    per_class: dict[str, ClassMetrics] | None = None
    confusion_matrix: list[list[int]] | None = None
    calibration: CalibrationCard | None = None
    recording: RecordingLevel | None = None


@dataclass(kw_only=True)
class Verification(JsonRecord):
    """How an exported file was checked against the eager model."""

    passed: bool
    max_abs_diff: float
    max_abs_diff_logits: float | None = None
    max_abs_diff_outputs: dict[str, float] | None = None
    batch_sizes: list[int]
    runtime: str
    # A quantised model is checked against the float model on the test split instead.
    reference: str | None = None
    test_split: str | None = None
    test_windows: int | None = None
    agreement: float | None = None
    min_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy: float | None = None
    accuracy_drop_points: float | None = None
    max_accuracy_drop_points: float | None = None


@dataclass(kw_only=True)
class ModelSpeed(JsonRecord):
    """Size and CPU speed of one model file (onnxruntime, measured when it was exported)."""

    size_bytes: int
    latency_ms_batch1: float
    throughput_windows_per_s: float


@dataclass(kw_only=True)
class Quantization(JsonRecord):
    """``exports.int8.quantization``: how the int8 model was built, and its speed against float."""

    scheme: str
    calibration_split: str
    calibration_windows: int
    float_nodes: int
    runtime: str
    throughput_batch: int
    float_model: ModelSpeed
    int8_model: ModelSpeed
    size_ratio: float
    latency_speedup: float
    throughput_speedup: float


@dataclass(kw_only=True)
class ExportEntry(JsonRecord):
    """One file of ``exports``; model files also carry their export time and verification."""

    path: str
    sha256: str
    size_bytes: int
    export_time_s: float | None = None
    verification: Verification | None = None
    quantization: Quantization | None = None


@dataclass(kw_only=True)
class ReportEntry(JsonRecord):
    """``report``: the PDF and who wrote its analysis (paths relative to the run folder)."""

    path: str
    analysis_source: str
    fallback_reason: str | None
    figures: list[str]


@dataclass(kw_only=True)
class TrainerSummary(JsonRecord):
    """``trainer``: where and how long the model trained."""

    accelerator: str
    devices: int
    strategy: str
    precision: str | int
    epochs_run: int
    max_epochs: int | None


@dataclass(kw_only=True)
class ModelCard(JsonRecord):
    """``model_info.json``: the model card of a finished run (paths relative to the run folder).

    ``versions`` maps package names to versions (null when a package is not installed).
    """

    run_name: str
    created: str
    duration_s: float | None = None
    seed: int | bool | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    model: ModelSummary
    input: InputSpec
    classes: list[str]
    data: DataSummary
    splits: SplitSummary
    best_epoch: int | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    best_checkpoint: str | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    last_checkpoint: str | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    test_metrics: EvaluationMetrics | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    exports: dict[str, ExportEntry] | None = None
    trainer: TrainerSummary | None = None
    versions: dict[str, str | None]
    report: ReportEntry | None = None
    novelty: NoveltyCard | None = None
    sensor_health: SensorHealthCard | None = None
    attribution: AttributionCard | None = None


# ----------------------------------------------------------------------------------------------
# ``novelty``: a novelty detector's threshold, calibration and test (tasks/novelty.py).


@dataclass(kw_only=True)
class ThresholdRecord(JsonRecord):
    """A conformal threshold: the ``rank``-th smallest of ``n`` healthy calibration scores.

    A new healthy score exceeds it with probability ``bound = (n + 1 - rank) / (n + 1)`` when
    calibration and new scores are exchangeable; ``met`` says whether that is at most the
    requested ``false_alarm_rate`` (too few calibration scores cannot reach a small rate).
    """

    threshold: float
    false_alarm_rate: float
    n: int
    rank: int
    bound: float
    met: bool


@dataclass(kw_only=True)
class DetectionLevel(JsonRecord):
    """Test results at one level (windows or recordings) at the calibrated threshold.

    ``detection`` and ``roc_auc_per_class`` map each damage class to the share of its windows
    (recordings) that alarm and to the AUC of healthy against that class; ``counts`` holds the
    number of windows (recordings) per class, the healthy class included.
    """

    healthy: int
    false_alarms: int
    false_alarm_rate: float | None
    detection: dict[str, float | None]
    counts: dict[str, int]
    roc_auc: float | None
    roc_auc_per_class: dict[str, float | None]


@dataclass(kw_only=True)
class DetectorResults(JsonRecord):
    """One detector's thresholds and test results (the novelty detector, or the reference)."""

    name: str
    window_threshold: ThresholdRecord
    recording_threshold: ThresholdRecord
    window: DetectionLevel
    recording: DetectionLevel


@dataclass(kw_only=True)
class NoveltyCard(JsonRecord):
    """``novelty``: how a novelty detector decides, what it was calibrated on, how it tested.

    ``calibration_unit`` is ``recording`` (whole held-out healthy recordings or groups),
    ``block`` (held-out blocks of recordings, when there were fewer than three) or
    ``cross_group`` (training recordings scored by a Gaussian fitted without their group);
    ``reference`` is the classical baseline evaluated beside the detector, when it ran.
    """

    healthy_label: str
    detector: str
    decision_rule: str
    recording_quantile: float
    calibration_unit: str
    calibration_recordings: int
    calibration_windows: int
    window_threshold: ThresholdRecord
    recording_threshold: ThresholdRecord
    test: DetectorResults | None = None
    reference: DetectorResults | None = None


# ----------------------------------------------------------------------------------------------
# ``sensor_health``: the sensor-health gate (evaluation/health.py) before training and prediction.


@dataclass(kw_only=True)
class SensorFinding(JsonRecord):
    """One sensor fault: the channel of a recording, its samples ``[start, stop)``, and why.

    ``kind`` is one of ``evaluation.health.KINDS`` (``clipping``, ``flat_line``, ``dropout``,
    ``spike``, ``dc_offset``, ``drift``, ``rms_range``); ``reason`` says it in words with the
    numbers.
    """

    file: str
    channel: str
    start: int
    stop: int
    kind: str
    reason: str


@dataclass(kw_only=True)
class SensorReference(JsonRecord):
    """What the gate compares a recording with, fitted on the training data, per channel.

    ``log10_rms_low`` / ``log10_rms_high`` bound the decimal logarithm of a recording's RMS about
    its mean (robust centre and spread of the training recordings, widened by a margin);
    ``dc_coupled`` marks channels whose training recordings carry a mean above the DC-offset
    limit (a DC-coupled sensor that sees gravity), which the DC-offset check leaves alone.
    """

    channels: list[str]
    log10_rms_median: list[float]
    log10_rms_low: list[float]
    log10_rms_high: list[float]
    dc_coupled: list[bool]
    recordings: int


@dataclass(kw_only=True)
class SensorHealthCard(JsonRecord):
    """``sensor_health``: what the gate found in the data and what it did about it.

    ``action`` is the DataModule's ``health`` option; ``excluded_recordings`` lists the
    recordings left out (``exclude_recording``), ``flagged_windows`` the windows per split that
    overlap a finding (left out with ``exclude_windows``, kept with ``warn``); ``options`` are the
    thresholds (``evaluation.health.HealthOptions``). ``findings`` holds the first findings,
    ``findings_total`` how many there were.
    """

    action: str
    recordings_checked: int
    recordings_with_findings: int
    findings: list[SensorFinding]
    findings_total: int
    excluded_recordings: list[str] = field(default_factory=list)
    flagged_windows: dict[str, int] = field(default_factory=dict)
    reference: SensorReference | None = None
    options: dict[str, Any] = field(default_factory=dict)


# ``attribution``: explanations in hertz (evaluation/attribution.py, attribution.json).


@dataclass(kw_only=True)
class TopBand(JsonRecord):
    """A frequency band of one channel and its share of a class's positive evidence."""

    channel: str
    low_hz: float
    high_hz: float
    share: float


@dataclass(kw_only=True)
class AttributionCard(JsonRecord):
    """``attribution``: how ``attribution.json`` was computed, and each class's top bands.

    ``top_bands`` maps each class to its largest shares of positive evidence (bands of
    ``band_hz``), largest first.
    """

    path: str
    method: str
    baseline: str
    reference_class: str | None = field(default=None, metadata=_WRITTEN_AS_NULL)
    split: str
    windows_per_class: int
    band_hz: float
    wall_time_s: float
    top_bands: dict[str, list[TopBand]]


# ----------------------------------------------------------------------------------------------
# training_history.json


@dataclass(kw_only=True)
class EpochRecord(JsonRecord):
    """One epoch of the history; metrics that were not logged are None."""

    epoch: int
    train_loss: float | None = None
    train_acc: float | None = None
    train_f1: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    val_f1: float | None = None
    lr: float | None = None
    epoch_time_s: float | None = None


@dataclass(kw_only=True)
class EarlyStoppingState(JsonRecord):
    """Whether EarlyStopping ended the run, and its settings."""

    triggered: bool
    stopped_epoch: int | None = None
    patience: int | None = None
    wait_count: int | None = None
    monitor: str | None = None


@dataclass(kw_only=True)
class LrReduction(JsonRecord):
    """A learning-rate reduction seen between two epochs (JSON keys ``from`` and ``to``)."""

    epoch: int
    from_lr: float | None = field(metadata={_KEY: "from"})
    to_lr: float | None = field(metadata={_KEY: "to"})


@dataclass(kw_only=True)
class TrainingHistory(JsonRecord):
    """``training_history.json``: per-epoch values and what ended the run (all may be absent)."""

    FILE: ClassVar[str] = HISTORY_FILE

    monitor: str | None = None
    max_epochs: int | None = None
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    early_stopping: EarlyStoppingState | None = None
    lr_reductions: list[LrReduction] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Conversion by type hints.


@functools.cache
def _declared(cls: type) -> tuple[Field, ...]:
    return tuple(f for f in fields(cls) if f.init and f.name != "extra")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return _REQUIRED


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _record(cls: type[JsonRecord], obj: Any, source: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _wrong(source, where, "an object", obj)
    hints = _hints(cls)
    values: dict[str, Any] = {}
    keys = set()
    for f in _declared(cls):
        key = f.metadata.get(_KEY, f.name)
        if key in obj:
            values[f.name] = _value(hints[f.name], obj[key], source, _join(where, key))
            keys.add(f.name)
        elif _default(f) is _REQUIRED:
            raise DataValidationError(
                Problem(source, _join(where, key), "required field is missing")
            )
    declared = {f.metadata.get(_KEY, f.name) for f in _declared(cls)}
    record = cls(**values, extra={k: v for k, v in obj.items() if k not in declared})
    record._keys = frozenset(keys)
    return record


def _value(tp: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        for option in options:
            try:
                return _value(option, value, source, where)
            except DataValidationError:
                if len(options) == 1:
                    raise
        raise _wrong(source, where, " or ".join(_expected(a) for a in options), value)
    if isinstance(tp, type) and issubclass(tp, JsonRecord):
        return _record(tp, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(source, where, "a list", value)
        (item,) = typing.get_args(tp)
        return [_value(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(source, where, "an object", value)
        item = typing.get_args(tp)[1]
        return {k: _value(item, v, source, f"{where}[{k!r}]") for k, v in value.items()}
    if not _SCALARS[tp](value):
        raise _wrong(source, where, _expected(tp), value)
    return value


_SCALARS = {
    str: lambda v: isinstance(v, str),
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _expected(tp: Any) -> str:
    names = {str: "text", bool: "true or false", int: "an integer", float: "a number"}
    if tp in names:
        return names[tp]
    return "a list" if typing.get_origin(tp) is list else "an object"


def _wrong(source: str, where: str, expected: str, value: Any) -> DataValidationError:
    if value is None:
        got = "null"
    elif isinstance(value, bool | int | float):
        got = json.dumps(value)
    elif isinstance(value, str):
        got = f"text {value[:40]!r}"
    else:
        got = "a list" if isinstance(value, list) else "an object"
    return DataValidationError(Problem(source, where, f"expected {expected}, got {got}"))


def _dump(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


__all__ = [
    "AttributionCard",
    "ClassMetrics",
    "ClassSplitCounts",
    "DataSummary",
    "DetectionLevel",
    "DetectorResults",
    "EarlyStoppingState",
    "EpochRecord",
    "EvaluationMetrics",
    "ExportEntry",
    "InputSpec",
    "JsonRecord",
    "LeakageCheck",
    "LrReduction",
    "ModelCard",
    "ModelSummary",
    "NoveltyCard",
    "ReportEntry",
    "SensorFinding",
    "SensorHealthCard",
    "SensorReference",
    "SplitSummary",
    "SplitTotals",
    "ThresholdRecord",
    "TopBand",
    "TrainerSummary",
    "TrainingHistory",
    "Verification",
]

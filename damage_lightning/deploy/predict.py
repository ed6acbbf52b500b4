"""Per-recording predictions with an exported model: read, window, score, aggregate.

The same discovery, readers, validation, resampling and windowing as training and ``predict``
(``damage_lightning.io``); windows are scored a batch at a time, so a long recording never has
all its windows in memory. The per-recording decision (the model's aggregation rule and abstain
floor, both in its metadata) is :func:`damage_lightning.deploy.decision.decide`, which the test
split's recording-level metrics and the pipeline's ``predict`` use as well. The sensor-health
gate (``damage_lightning.evaluation.health``) flags windows that overlap a sensor fault; they are
left out of the recording's decision, and a recording with every window flagged is
``sensor_fault``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from damage_lightning.card import SensorFinding
from damage_lightning.deploy.decision import (
    Decision,
    WindowSums,
    check_abstain,
    check_aggregation,
    decide,
    window_unknown,
)
from damage_lightning.deploy.metadata import (
    ABSTAIN_KEY,
    AGGREGATION_KEY,
    DISTANCE_THRESHOLD_KEY,
    ModelMetadata,
)
from damage_lightning.deploy.novelty import is_novelty, predict_novelty
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.evaluation.health import (
    WindowHealth,
    check_recording,
    reference_from_metadata,
    window_health,
)
from damage_lightning.io.dataset import load_recording
from damage_lightning.io.discovery import RecordingSpec, find_recordings
from damage_lightning.io.readers.base import ReaderOptions
from damage_lightning.io.speed import check_speed, recording_speeds
from damage_lightning.io.windows import window_batches, window_starts

#: Columns of a per-recording table, before one ``p_<class>`` column per class.
#: ``predicted_label`` is the top class; ``decision`` is it, ``unknown`` (abstain floor or
#: distance gate) or ``sensor_fault``; ``n_flagged`` counts the windows the sensor gate left out.
RECORDING_COLUMNS = (
    "path",
    "label",
    "predicted_label",
    "decision",
    "confidence",
    "n_windows",
    "agreement",
    "n_flagged",
)
#: ``predicted_label`` and ``decision`` of a recording whose windows the sensor gate all flagged.
SENSOR_FAULT = "sensor_fault"


def _number(meta: ModelMetadata, key: str) -> float | None:
    text = meta.extra.get(key)
    return None if text in (None, "", "null") else float(text)


def decision_rule(meta: ModelMetadata) -> tuple[str, float | None, float | None]:
    """The model's aggregation rule, abstain floor and distance threshold, from its metadata.

    Models exported before recording-level decisions were recorded averaged the window
    probabilities and never abstained.
    """
    rule = check_aggregation(meta.extra.get(AGGREGATION_KEY, "mean_prob"))
    return rule, check_abstain(_number(meta, ABSTAIN_KEY)), _number(meta, DISTANCE_THRESHOLD_KEY)


def recording_columns(class_names: list[str], gated: bool = False) -> list[str]:
    """The per-recording table's columns: :data:`RECORDING_COLUMNS`, ``p_<class>``, ``distance``.

    ``distance`` (the mean feature distance) only for a model with a distance gate.
    """
    return [*RECORDING_COLUMNS, *(f"p_{c}" for c in class_names), *(["distance"] if gated else [])]


def recording_row(path: str, label: str | None, decision: Decision, class_names: list[str]) -> dict:
    """One row of the per-recording table (:data:`RECORDING_COLUMNS` and ``p_<class>``)."""
    row = {
        "path": path,
        "label": label or "",
        "predicted_label": class_names[decision.predicted],
        "decision": decision.label(class_names),
        "confidence": decision.confidence,
        "n_windows": decision.n_windows,
        "agreement": decision.agreement,
    }
    row.update(
        {f"p_{c}": float(p) for c, p in zip(class_names, decision.probabilities, strict=True)}
    )
    if decision.distance is not None:
        row["distance"] = decision.distance
    return row


def gated_row(
    path: str,
    label: str | None,
    decision: Decision | None,
    n_flagged: int,
    class_names: list[str],
) -> dict:
    """:func:`recording_row` after the sensor-health gate, with ``n_flagged``.

    Args:
        path: the recording.
        label: its label, if known.
        decision: the decision over the windows that passed the gate (``None``: none passed,
            and the row says ``sensor_fault`` with no probabilities).
        n_flagged: windows the gate flagged (left out of the decision).
        class_names: the classes.
    """
    if decision is None:
        row = {"path": path, "label": label or "", "predicted_label": SENSOR_FAULT}
        row.update({"decision": SENSOR_FAULT, "confidence": float("nan")})
        row.update({"n_windows": 0, "agreement": float("nan")})
        row.update({f"p_{c}": float("nan") for c in class_names})
    else:
        row = recording_row(path, label, decision, class_names)
    row["n_flagged"] = int(n_flagged)
    return row


def add_health_columns(frame: pd.DataFrame, health: WindowHealth) -> pd.DataFrame:
    """The window table's ``sensor_ok`` and ``sensor_reason`` columns (findings overlapped)."""
    frame["sensor_ok"] = health.ok
    frame["sensor_reason"] = health.reasons
    return frame


@dataclass
class Predictions:
    """What :func:`predict` returns.

    Args:
        recordings: one row per recording (:data:`RECORDING_COLUMNS`, ``p_<class>``).
        windows: one row per window (:func:`window_rows`, ``sensor_ok``, ``sensor_reason``)
            when asked for, else ``None``.
        findings: the sensor-health findings of every recording.
    """

    recordings: pd.DataFrame
    windows: pd.DataFrame | None = None
    findings: list[SensorFinding] = field(default_factory=list)


def score_recording(
    model: OnnxModel,
    waveform: np.ndarray,
    hop: int,
    batch_size: int,
    keep: bool = False,
    ok: np.ndarray | None = None,
    rpm: float | None = None,
) -> tuple[Decision | None, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]:
    """Score one recording's windows a batch at a time.

    Args:
        model: the loaded model.
        waveform: ``(channels, samples)`` at the model's rate, in its channel order.
        hop: step between windows.
        batch_size: windows per inference call.
        keep: also return every batch's ``(starts, probabilities, distances or None)``.
        ok: per window, whether it enters the decision (the sensor-health gate's
            ``WindowHealth.ok``); ``None``: every window.
        rpm: the recording's shaft speed, for a model with order spectra.

    Returns:
        The decision (the model's aggregation rule, abstain floor and distance gate; ``None``
        when ``ok`` leaves no window), and the batches (empty unless ``keep``; flagged windows
        included).
    """
    meta = model.metadata
    rule, floor, threshold = decision_rule(meta)
    sums = WindowSums(len(meta.class_names))
    batches = []
    seen = 0
    for starts, windows in window_batches(waveform, meta.window_length, hop, batch_size):
        out = model.run(windows, rpm)
        probs = out["probabilities"].astype(np.float64)
        distances = out.get("distance") if threshold is not None else None
        if keep:
            batches.append((starts, probs, distances))
        if ok is not None:
            mask = ok[seen : seen + len(starts)]
            probs = probs[mask]
            distances = None if distances is None else distances[mask]
        seen += len(starts)
        sums.add(probs, distances)
    decision = decide(sums, rule, floor, threshold) if sums.n_windows else None
    return decision, batches


def predict(
    model: str | Path | OnnxModel,
    data: str | Path,
    hop: int | None = None,
    batch_size: int = 64,
    options: ReaderOptions | None = None,
    keep_windows: bool = False,
    health: bool = True,
    rpm: float | None = None,
) -> Predictions:
    """Predict every recording under ``data`` (a file or a folder) with an exported model.

    A classifier gives class probabilities; a novelty detector (metadata ``task: novelty``)
    gives scores and alarms (``damage_lightning.deploy.novelty``).

    Args:
        model: the ``.onnx`` file or an :class:`OnnxModel`.
        data: a recording, or a folder (see ``io.discovery.find_recordings``).
        hop: step between windows (default: the model's).
        batch_size: windows per inference call.
        options: format options (``.mat`` variables, ``.tdms`` group).
        keep_windows: also return one row per window.
        health: run the sensor-health gate (against the model's RMS reference when its
            metadata has one) and leave flagged windows out of the decisions.
        rpm: for a model with order spectra, the shaft speed of recordings whose manifest row
            (metadata ``speed_column``) gives none, rpm; a row's own speed wins.

    Raises:
        DataValidationError: every bad file named, before any file is scored.
    """
    model = model if isinstance(model, OnnxModel) else OnnxModel.load(model)
    meta = model.metadata
    hop = meta.hop if hop is None else int(hop)
    if hop <= 0 or batch_size <= 0:
        raise DataValidationError(
            Problem(
                "",
                "",
                f"hop and batch size must be positive integers, got hop {hop}, "
                f"batch size {batch_size}",
            )
        )
    if rpm is not None:  # wrong for any model, also one that does not use it
        rpm = check_speed(rpm, "--rpm")
    specs = find_recordings(data)
    problems: list[Problem] = []
    loaded: list[tuple[RecordingSpec, np.ndarray]] = []
    for spec in specs:
        try:
            rec = load_recording(spec, meta.channels, meta.sample_rate, options, meta.window_length)
        except DataValidationError as exc:
            problems.extend(exc.problems)
            continue
        if not problems:
            loaded.append((spec, rec.data))
    speeds: list[float | None] = [None] * len(loaded)
    if model.speed_input is not None and not problems:
        try:
            column = meta.speed_column or "rpm"
            found = recording_speeds([s for s, _ in loaded], column, rpm, "--rpm")
            speeds = [float(v) for v in found]
        except DataValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataValidationError(problems)
    if is_novelty(meta):
        return predict_novelty(model, loaded, hop, batch_size, keep_windows)
    reference = reference_from_metadata(meta.extra, str(model.path)) if health else None
    _, floor, threshold = decision_rule(meta)
    rows, window_parts, findings = [], [], []
    for (spec, waveform), speed in zip(loaded, speeds, strict=True):
        found = []
        if health:
            found = check_recording(
                waveform, meta.channels, spec.relpath, meta.sample_rate, reference
            )
        starts = window_starts(0, waveform.shape[1], meta.window_length, hop)
        gate = window_health(found, starts, meta.window_length)
        decision, batches = score_recording(
            model, waveform, hop, batch_size, keep_windows, gate.ok, speed
        )
        rows.append(gated_row(spec.relpath, spec.label, decision, gate.n_flagged, meta.class_names))
        findings += found
        if keep_windows:
            frame = window_rows(
                spec.relpath, spec.label, batches, meta.class_names, floor, threshold
            )
            window_parts.append(add_health_columns(frame, gate))
    columns = recording_columns(meta.class_names, threshold is not None)
    windows = pd.concat(window_parts, ignore_index=True) if keep_windows and window_parts else None
    return Predictions(pd.DataFrame(rows, columns=columns), windows, findings)


def window_rows(
    path: str,
    label: str | None,
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    class_names: list[str],
    abstain: float | None = None,
    distance_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per window: ``recording``, ``label``, ``start``, ``predicted``, ``unknown``, ``p_*``.

    ``unknown``: the window's top probability is below the abstain floor, or its feature
    distance above the gate's threshold (then a ``distance`` column follows ``unknown``).

    Args:
        path: the recording.
        label: its true class, when known.
        batches: ``(starts, probabilities, distances or None)`` per scored batch.
        class_names: class names in output order.
        abstain: the model's abstain floor, or ``None``.
        distance_threshold: the model's distance threshold, or ``None``.
    """
    starts = np.concatenate([b[0] for b in batches])
    probs = np.concatenate([b[1] for b in batches])
    gated = distance_threshold is not None and all(b[2] is not None for b in batches)
    distances = np.concatenate([b[2] for b in batches]) if gated else None
    frame = pd.DataFrame(
        {
            "recording": path,
            "label": label or "",
            "start": starts,
            "predicted": [class_names[i] for i in probs.argmax(axis=1)],
            "unknown": window_unknown(probs, abstain, distances, distance_threshold),
        }
    )
    if distances is not None:
        frame["distance"] = distances
    for i, c in enumerate(class_names):
        frame[f"p_{c}"] = probs[:, i]
    return frame


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """A predictions table as CSV (probabilities with 6 decimals, as ``predict`` writes them)."""
    return frame.to_csv(index=False, float_format="%.6f", lineterminator="\n").encode("utf-8")

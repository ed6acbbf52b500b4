"""Per-recording predictions with an exported model: read, window, score, aggregate.

The same discovery, readers, validation, resampling and windowing as training and ``predict``
(``damage_lightning.io``); windows are scored a batch at a time, so a long recording never has
all its windows in memory. The per-recording rule (mean of the window probabilities) lives in
:func:`aggregate`, which the pipeline's ``predict`` uses as well. The sensor-health gate
(``damage_lightning.evaluation.health``) flags windows that overlap a sensor fault; they are left
out of the recording's decision, and a recording with every window flagged is ``sensor_fault``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from damage_lightning.card import SensorFinding
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
from damage_lightning.io.windows import window_batches, window_starts

#: Columns of a per-recording table, before one ``p_<class>`` column per class.
RECORDING_COLUMNS = ("path", "label", "predicted_label", "n_windows", "agreement", "n_flagged")
#: ``predicted_label`` of a recording whose windows the sensor-health gate all flagged.
SENSOR_FAULT = "sensor_fault"


@dataclass
class Aggregate:
    """The decision for one recording from its windows.

    Args:
        probabilities: mean window probability per class.
        predicted: index of the predicted class.
        n_windows: windows scored.
        agreement: share of windows whose own top class is the predicted one.
    """

    probabilities: np.ndarray
    predicted: int
    n_windows: int
    agreement: float


def aggregate(probability_sum: np.ndarray, top_counts: np.ndarray, n_windows: int) -> Aggregate:
    """The per-recording decision from the sum of window probabilities and top-class counts.

    Sums rather than the windows themselves, so the decision can be accumulated a batch at a
    time.

    Args:
        probability_sum: ``(K,)`` sum over windows of the class probabilities.
        top_counts: ``(K,)`` how many windows had each class as their top class.
        n_windows: number of windows (at least one).
    """
    mean = np.asarray(probability_sum, dtype=np.float64) / n_windows
    best = int(np.argmax(mean))
    return Aggregate(mean, best, n_windows, float(top_counts[best]) / n_windows)


def aggregate_windows(probabilities: np.ndarray) -> Aggregate:
    """:func:`aggregate` of a recording's ``(n_windows, K)`` window probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = probabilities.shape[1]
    counts = np.bincount(probabilities.argmax(axis=1), minlength=k)
    return aggregate(probabilities.sum(axis=0), counts, len(probabilities))


def recording_row(path: str, label: str | None, agg: Aggregate, class_names: list[str]) -> dict:
    """One row of the per-recording table (:data:`RECORDING_COLUMNS` and ``p_<class>``)."""
    row = {
        "path": path,
        "label": label or "",
        "predicted_label": class_names[agg.predicted],
        "n_windows": agg.n_windows,
        "agreement": agg.agreement,
    }
    row.update({f"p_{c}": float(p) for c, p in zip(class_names, agg.probabilities, strict=True)})
    return row


def gated_row(
    path: str, label: str | None, agg: Aggregate | None, n_flagged: int, class_names: list[str]
) -> dict:
    """:func:`recording_row` after the sensor-health gate, with ``n_flagged``.

    Args:
        path: the recording.
        label: its label, if known.
        agg: the decision over the windows that passed the gate (``None``: none passed, and the
            row says ``sensor_fault`` with no probabilities).
        n_flagged: windows the gate flagged (left out of the decision).
        class_names: the classes.
    """
    if agg is None:
        row = {"path": path, "label": label or "", "predicted_label": SENSOR_FAULT}
        row.update({"n_windows": 0, "agreement": float("nan")})
        row.update({f"p_{c}": float("nan") for c in class_names})
    else:
        row = recording_row(path, label, agg, class_names)
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
        windows: one row per window (``recording``, ``label``, ``start``, ``predicted``,
            ``p_<class>``, ``sensor_ok``, ``sensor_reason``) when asked for, else ``None``.
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
) -> tuple[Aggregate | None, list[tuple[np.ndarray, np.ndarray]]]:
    """Score one recording's windows a batch at a time.

    Args:
        model: the loaded model.
        waveform: ``(channels, samples)`` at the model's rate, in its channel order.
        hop: step between windows.
        batch_size: windows per inference call.
        keep: also return every batch's ``(starts, probabilities)``.
        ok: per window, whether it enters the decision (the sensor-health gate's
            ``WindowHealth.ok``); ``None``: every window.

    Returns:
        The aggregate (``None`` when ``ok`` leaves no window), and the batches (empty unless
        ``keep``; flagged windows included).
    """
    meta = model.metadata
    k = len(meta.class_names)
    total, counts, n = np.zeros(k), np.zeros(k, dtype=np.int64), 0
    batches = []
    seen = 0
    for starts, windows in window_batches(waveform, meta.window_length, hop, batch_size):
        probs = model.run(windows)["probabilities"].astype(np.float64)
        if keep:
            batches.append((starts, probs))
        if ok is not None:
            probs = probs[ok[seen : seen + len(starts)]]
        seen += len(starts)
        total += probs.sum(axis=0)
        counts += np.bincount(probs.argmax(axis=1), minlength=k)
        n += len(probs)
    return (aggregate(total, counts, n) if n else None), batches


def predict(
    model: str | Path | OnnxModel,
    data: str | Path,
    hop: int | None = None,
    batch_size: int = 64,
    options: ReaderOptions | None = None,
    keep_windows: bool = False,
    health: bool = True,
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

    Raises:
        DataValidationError: every bad file named, before any file is scored.
    """
    model = model if isinstance(model, OnnxModel) else OnnxModel.load(model)
    meta = model.metadata
    hop = meta.hop if hop is None else int(hop)
    if hop <= 0 or batch_size <= 0:
        raise DataValidationError(Problem("", "", "hop and batch size must be positive integers"))
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
    if problems:
        raise DataValidationError(problems)
    if is_novelty(meta):
        return predict_novelty(model, loaded, hop, batch_size, keep_windows)
    reference = reference_from_metadata(meta.extra, str(model.path)) if health else None
    rows, window_parts, findings = [], [], []
    for spec, waveform in loaded:
        found = []
        if health:
            found = check_recording(
                waveform, meta.channels, spec.relpath, meta.sample_rate, reference
            )
        starts = window_starts(0, waveform.shape[1], meta.window_length, hop)
        gate = window_health(found, starts, meta.window_length)
        agg, batches = score_recording(model, waveform, hop, batch_size, keep_windows, gate.ok)
        rows.append(gated_row(spec.relpath, spec.label, agg, gate.n_flagged, meta.class_names))
        findings += found
        if keep_windows:
            window_parts.append(
                add_health_columns(_window_rows(spec, batches, meta.class_names), gate)
            )
    columns = [*RECORDING_COLUMNS, *(f"p_{c}" for c in meta.class_names)]
    windows = pd.concat(window_parts, ignore_index=True) if keep_windows and window_parts else None
    return Predictions(pd.DataFrame(rows, columns=columns), windows, findings)


def _window_rows(
    spec: RecordingSpec, batches: list[tuple[np.ndarray, np.ndarray]], class_names: list[str]
) -> pd.DataFrame:
    starts = np.concatenate([s for s, _ in batches])
    probs = np.concatenate([p for _, p in batches])
    frame = pd.DataFrame(
        {
            "recording": spec.relpath,
            "label": spec.label or "",
            "start": starts,
            "predicted": [class_names[i] for i in probs.argmax(axis=1)],
        }
    )
    for i, c in enumerate(class_names):
        frame[f"p_{c}"] = probs[:, i]
    return frame


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """A predictions table as CSV (probabilities with 6 decimals, as ``predict`` writes them)."""
    return frame.to_csv(index=False, float_format="%.6f", lineterminator="\n").encode("utf-8")

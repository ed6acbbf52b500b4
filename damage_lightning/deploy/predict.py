"""Per-recording predictions with an exported model: read, window, score, aggregate.

The same discovery, readers, validation, resampling and windowing as training and ``predict``
(``damage_lightning.io``); windows are scored a batch at a time, so a long recording never has
all its windows in memory. The per-recording rule (mean of the window probabilities) lives in
:func:`aggregate`, which the pipeline's ``predict`` uses as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from damage_lightning.deploy.novelty import is_novelty, predict_novelty
from damage_lightning.deploy.session import OnnxModel
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.dataset import load_recording
from damage_lightning.io.discovery import RecordingSpec, find_recordings
from damage_lightning.io.readers.base import ReaderOptions
from damage_lightning.io.windows import window_batches

#: Columns of a per-recording table, before one ``p_<class>`` column per class.
RECORDING_COLUMNS = ("path", "label", "predicted_label", "n_windows", "agreement")


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


@dataclass
class Predictions:
    """What :func:`predict` returns.

    Args:
        recordings: one row per recording (:data:`RECORDING_COLUMNS`, ``p_<class>``).
        windows: one row per window (``recording``, ``label``, ``start``, ``predicted``,
            ``p_<class>``) when asked for, else ``None``.
    """

    recordings: pd.DataFrame
    windows: pd.DataFrame | None = None


def score_recording(
    model: OnnxModel, waveform: np.ndarray, hop: int, batch_size: int, keep: bool = False
) -> tuple[Aggregate, list[tuple[np.ndarray, np.ndarray]]]:
    """Score one recording's windows a batch at a time.

    Args:
        model: the loaded model.
        waveform: ``(channels, samples)`` at the model's rate, in its channel order.
        hop: step between windows.
        batch_size: windows per inference call.
        keep: also return every batch's ``(starts, probabilities)``.

    Returns:
        The aggregate, and the batches (empty unless ``keep``).
    """
    meta = model.metadata
    k = len(meta.class_names)
    total, counts, n = np.zeros(k), np.zeros(k, dtype=np.int64), 0
    batches = []
    for starts, windows in window_batches(waveform, meta.window_length, hop, batch_size):
        probs = model.run(windows)["probabilities"].astype(np.float64)
        total += probs.sum(axis=0)
        counts += np.bincount(probs.argmax(axis=1), minlength=k)
        n += len(starts)
        if keep:
            batches.append((starts, probs))
    return aggregate(total, counts, n), batches


def predict(
    model: str | Path | OnnxModel,
    data: str | Path,
    hop: int | None = None,
    batch_size: int = 64,
    options: ReaderOptions | None = None,
    keep_windows: bool = False,
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
    rows, window_parts = [], []
    for spec, waveform in loaded:
        agg, batches = score_recording(model, waveform, hop, batch_size, keep_windows)
        rows.append(recording_row(spec.relpath, spec.label, agg, meta.class_names))
        if keep_windows:
            window_parts.append(_window_rows(spec, batches, meta.class_names))
    columns = [*RECORDING_COLUMNS, *(f"p_{c}" for c in meta.class_names)]
    windows = pd.concat(window_parts, ignore_index=True) if keep_windows and window_parts else None
    return Predictions(pd.DataFrame(rows, columns=columns), windows)


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

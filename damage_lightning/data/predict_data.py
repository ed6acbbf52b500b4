"""The recordings ``predict`` (and ``--adapt``) reads: every window of every file, with speeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.io.dataset import load_recording
from damage_lightning.io.discovery import find_recordings
from damage_lightning.io.readers.base import ReaderOptions
from damage_lightning.io.speed import recording_speeds
from damage_lightning.io.windows import window_starts


@dataclass
class PredictRecordings:
    """Recordings to predict, read and cut.

    Args:
        waveforms: one ``(channels, samples)`` array per recording.
        index: ``(recording, start)`` rows of every window.
        labels: each recording's class index (``-1`` where the data name none of the classes).
        paths: each recording's path as shown to users.
        speeds: each recording's shaft speed in rpm (order spectra), else ``None``.
    """

    waveforms: list[np.ndarray]
    index: np.ndarray
    labels: np.ndarray
    paths: list[str]
    speeds: np.ndarray | None = None


def load_predict_recordings(
    path: str | Path,
    channels: list[str],
    sample_rate: float,
    options: ReaderOptions,
    window: int,
    hop: int,
    class_names: list[str],
    speed: tuple[str, float | None] | None = None,
) -> PredictRecordings:
    """Read every recording at ``path`` as the gateway's predictor does, and index its windows.

    The same discovery, reading, validation, resampling and windowing as the torch-free predictor
    (``damage_lightning.deploy``), so both see identical windows.

    Args:
        path: a folder of recordings (sub-folders, a manifest) or one recording file.
        channels: the model's channels, in order.
        sample_rate: the model's rate (recordings at another known rate are resampled).
        options: format options of the readers.
        window: window length.
        hop: step between windows (starts ``0, hop, 2 hop, ...``).
        class_names: the model's classes.
        speed: ``(manifest column, default rpm)`` when the model takes the shaft speed.

    Raises:
        DataValidationError: every bad recording (or missing speed), named.
    """
    problems: list[Problem] = []
    specs, waveforms, labels = [], [], []
    for spec in find_recordings(path):
        try:
            rec = load_recording(spec, channels, sample_rate, options, window)
        except DataValidationError as exc:
            problems.extend(exc.problems)
            continue
        specs.append(spec)
        waveforms.append(rec.data)
        labels.append(class_names.index(spec.label) if spec.label in class_names else -1)
    speeds = None
    if speed is not None:
        try:
            speeds = recording_speeds(specs, speed[0], speed[1], "data.predict_rpm")
        except DataValidationError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataValidationError(problems)
    parts = []
    for i, w in enumerate(waveforms):
        starts = window_starts(0, w.shape[1], window, hop)
        parts.append(np.stack([np.full(len(starts), i, dtype=np.int64), starts], axis=1))
    index = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    paths = [s.relpath for s in specs]
    return PredictRecordings(waveforms, index, np.array(labels, dtype=np.int64), paths, speeds)

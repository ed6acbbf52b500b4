"""The trivial baseline of cross-validation: log-Welch PSD and the nearest class centroid.

A model that generalises to an unseen condition should beat this: each window's Welch power
spectral density (Hann segments of ``segment`` samples, half overlap, ``scipy.signal.welch``) per
channel, in decibels, standardised with the training windows' mean and spread, classified by the
nearest class centroid of the training windows (Euclidean). Recordings are decided by the vote of
their windows (:func:`damage_lightning.deploy.decision.decide`, rule ``vote``). No training
choices, no tuning: the reference a fold's figures are read against. Numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal

from damage_lightning.evaluation.recording import classification_metrics, evaluate_recordings

NAME = "log-Welch PSD + nearest centroid"
#: Welch segment length (samples); shorter windows use their own length.
SEGMENT = 256
_FLOOR_DB = -300.0


def log_welch_psd(windows: np.ndarray, segment: int = SEGMENT) -> np.ndarray:
    """Welch PSD in dB of waveform windows ``(B, C, W)``, flattened to ``(B, C * F)``.

    Args:
        windows: float waveform windows.
        segment: Welch segment length in samples (at most ``W``).
    """
    windows = np.asarray(windows, dtype=np.float64)
    nperseg = min(int(segment), windows.shape[-1])
    _, psd = signal.welch(windows, nperseg=nperseg, noverlap=nperseg // 2, axis=-1)
    db = 10.0 * np.log10(np.maximum(psd, 1e-30))
    return np.maximum(db, _FLOOR_DB).reshape(len(windows), -1)


@dataclass
class NearestCentroid:
    """Standardised features, nearest class centroid (fitted on training windows)."""

    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    centroids: np.ndarray | None = None
    classes: np.ndarray | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray) -> NearestCentroid:
        """Fit on ``(n, D)`` features and ``(n,)`` class indices."""
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        self.mean = features.mean(axis=0)
        spread = features.std(axis=0)
        self.scale = np.where(spread > 1e-12, spread, 1.0)
        z = (features - self.mean) / self.scale
        self.classes = np.unique(labels)
        self.centroids = np.stack([z[labels == c].mean(axis=0) for c in self.classes])
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class index of the nearest centroid for each row of ``features``."""
        if self.centroids is None or self.classes is None:
            raise RuntimeError("fit the baseline before predicting")
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        d = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=-1)
        return self.classes[d.argmin(axis=1)]


def _stack(batches: Iterable[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats, labels, recs = [], [], []
    for batch in batches:
        waveform, label, recording = batch[0], batch[1], batch[2]
        feats.append(log_welch_psd(np.asarray(waveform)))
        labels.append(np.asarray(label))
        recs.append(np.asarray(recording))
    if not feats:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(recs)


def score_baseline(
    train: Iterable[Sequence[Any]],
    test: Iterable[Sequence[Any]],
    class_names: list[str],
    recording_names: Sequence[str],
) -> dict[str, Any]:
    """Fit on the training windows, score the test windows and recordings.

    Args:
        train: batches ``(waveform, label, recording, ...)`` of the training windows (arrays or
            CPU tensors).
        test: such batches of the test windows.
        class_names: class names in index order.
        recording_names: path of each recording (indexed by the batches' recording ids).

    Returns:
        ``{"name", "window": {accuracy, f1_macro, n}, "recording": {accuracy, f1_macro, n}}``.
    """
    x_train, y_train, _ = _stack(train)
    x_test, y_test, rec_test = _stack(test)
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("the baseline needs training and test windows")
    predicted = NearestCentroid().fit(x_train, y_train).predict(x_test)
    window = classification_metrics(y_test, predicted, class_names)
    onehot = np.eye(len(class_names))[predicted]
    recording = evaluate_recordings(
        onehot, y_test, rec_test, list(recording_names), class_names, rule="vote"
    )["recording"]
    return {
        "name": NAME,
        "window": {
            "accuracy": window["accuracy"],
            "f1_macro": window["f1_macro"],
            "n": len(y_test),
        },
        "recording": {
            "accuracy": recording["accuracy"],
            "f1_macro": recording["f1_macro"],
            "n": recording["n"],
        },
    }

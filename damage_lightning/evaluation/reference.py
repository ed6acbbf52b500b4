"""The classical novelty reference: PCA and Mahalanobis distance on log band energies.

The statistical-pattern-recognition baseline of structural health monitoring: each window's
power spectrum (Hann window, one FFT) is summed into equal-width frequency bands per channel, the
log10 band energies are projected on the principal components that explain ``variance`` of the
healthy training windows' variance, and the score is the squared Mahalanobis distance in that
subspace. It runs beside the novelty task in its test and in the benchmark, at the same
calibrated false-alarm rate. Numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from damage_lightning.card import DetectorResults
from damage_lightning.evaluation.detection import ScoredWindows, calibrate, evaluate

NAME = "PCA + Mahalanobis on log band energies"


class BandEnergyReference:
    """PCA + Mahalanobis distance on log band energies, fitted on healthy windows.

    Args:
        n_bands: equal-width bands per channel from 0 Hz to the Nyquist frequency.
        variance: share of the training variance the kept principal components explain.
    """

    name = NAME

    def __init__(self, n_bands: int = 32, variance: float = 0.99) -> None:
        if n_bands < 1:
            raise ValueError(f"n_bands must be at least 1, got {n_bands}")
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must lie in (0, 1], got {variance}")
        self.n_bands = int(n_bands)
        self.variance = float(variance)
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.eigenvalues: np.ndarray | None = None

    def features(self, windows: np.ndarray) -> np.ndarray:
        """Log10 band energies ``(B, C * n_bands)`` of waveform windows ``(B, C, W)``.

        Args:
            windows: float waveform windows.
        """
        windows = np.asarray(windows, dtype=np.float64)
        taper = np.hanning(windows.shape[-1])
        power = np.abs(np.fft.rfft(windows * taper, axis=-1)) ** 2
        if self.n_bands > power.shape[-1]:
            raise ValueError(
                f"{self.n_bands} bands need windows of at least {2 * self.n_bands - 1} samples"
            )
        edges = np.linspace(0, power.shape[-1], self.n_bands + 1).round().astype(int)
        bands = np.add.reduceat(power, edges[:-1], axis=-1)
        return np.log10(bands + 1e-20).reshape(len(windows), -1)

    def fit(self, features: np.ndarray) -> BandEnergyReference:
        """Fit the mean and principal components to healthy training ``features``.

        Args:
            features: ``(n, d)`` from :meth:`features`, n at least 2.
        """
        x = np.asarray(features, dtype=np.float64)
        if len(x) < 2:
            raise ValueError("the reference needs at least two training windows")
        self.mean = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        eig = singular**2 / (len(x) - 1)
        share = np.cumsum(eig) / eig.sum()
        keep = int(np.searchsorted(share, self.variance - 1e-12) + 1)
        keep = min(keep, int((eig > eig[0] * 1e-12).sum()))
        self.components = vt[:keep]
        self.eigenvalues = eig[:keep]
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of ``features`` in the principal subspace.

        Args:
            features: ``(n, d)`` from :meth:`features`.
        """
        if self.mean is None or self.components is None or self.eigenvalues is None:
            raise RuntimeError("fit the reference before scoring")
        z = (np.asarray(features, dtype=np.float64) - self.mean) @ self.components.T
        return (z**2 / self.eigenvalues).sum(axis=1)

    @property
    def n_components(self) -> int:
        """Principal components kept (0 before fitting)."""
        return 0 if self.components is None else len(self.components)


def evaluate_reference(
    windows: Callable[[str], Iterable[Sequence[Any]]],
    false_alarm_rate: float,
    recording_false_alarm_rate: float,
    quantile: float,
    class_names: list[str],
    max_fit_windows: int = 50_000,
) -> tuple[DetectorResults, np.ndarray]:
    """Fit the reference on the training windows, calibrate on ``val``, test on ``test``.

    The same windows, budgets and recording rule as the detector it runs beside.

    Args:
        windows: ``windows(split)`` yields batches ``(waveform, label, recording, ...)`` of raw
            waveform windows (``DamageDataModule.waveform_windows``).
        false_alarm_rate: the window-level budget.
        recording_false_alarm_rate: the recording-level budget.
        quantile: the recording score's quantile of its window scores.
        class_names: names of the label indices (healthy first).
        max_fit_windows: at most this many training windows fit the reference.

    Returns:
        the test results and the score of every test window.
    """
    ref = BandEnergyReference()
    train, n = [], 0
    for batch in windows("train"):
        train.append(ref.features(np.asarray(batch[0])))
        n += len(train[-1])
        if n >= max_fit_windows:
            break
    ref.fit(np.concatenate(train))

    def scored(split: str) -> ScoredWindows:
        parts = [
            (ref.score(ref.features(np.asarray(b[0]))), np.asarray(b[1]), np.asarray(b[2]))
            for b in windows(split)
        ]
        return ScoredWindows(*(np.concatenate(p) for p in zip(*parts, strict=True)))

    window, recording = calibrate(
        scored("val"), false_alarm_rate, recording_false_alarm_rate, quantile
    )
    test = scored("test")
    name = f"{ref.name} ({ref.n_bands} bands, {ref.n_components} components)"
    return evaluate(name, test, window, recording, quantile, class_names), test.scores

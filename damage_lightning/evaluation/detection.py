"""A novelty detector's test results: false alarms, detection per class, ROC AUC, two levels.

Windows are scored by the detector; a recording's score is a quantile of its window scores
(:func:`damage_lightning.deploy.novelty.recording_score`, the rule the gateway applies too). Both
levels are evaluated at their own calibrated threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from damage_lightning.card import DetectionLevel, DetectorResults, NoveltyCard, ThresholdRecord
from damage_lightning.deploy.novelty import recording_score
from damage_lightning.evaluation.conformal import conformal_threshold


@dataclass
class ScoredWindows:
    """Scores of windows with their class and recording.

    Args:
        scores: ``(n,)`` one score per window (higher: less like the healthy training data).
        labels: ``(n,)`` class index of each window's recording.
        recordings: ``(n,)`` recording index (windows of one recording share it).
    """

    scores: np.ndarray
    labels: np.ndarray
    recordings: np.ndarray

    def by_recording(self, quantile: float) -> ScoredWindows:
        """One row per recording: its score (the ``quantile`` of its windows' scores), its label.

        Args:
            quantile: the quantile of the window scores, in ``[0, 1]``.
        """
        ids, inverse = np.unique(self.recordings, return_inverse=True)
        scores = np.array(
            [recording_score(self.scores[inverse == i], quantile) for i in range(len(ids))]
        )
        labels = np.array([self.labels[inverse == i][0] for i in range(len(ids))], dtype=np.int64)
        return ScoredWindows(scores, labels, ids)


def roc_auc(negative: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of positives scored above negatives (ties count one half).

    Args:
        negative: scores of the healthy items.
        positive: scores of the damaged items.

    Returns:
        the AUC, or ``None`` when either side is empty.
    """
    neg = np.asarray(negative, dtype=np.float64)
    pos = np.asarray(positive, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    # Mann-Whitney U from the ranks of the pooled scores (average ranks for ties).
    ranks = rankdata(np.concatenate([neg, pos]))
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


def detection_level(
    scored: ScoredWindows, threshold: float, class_names: list[str], healthy: int = 0
) -> DetectionLevel:
    """False alarms on the healthy items, and detection and AUC per damage class, at a threshold.

    Args:
        scored: the test items (windows, or recordings from :meth:`ScoredWindows.by_recording`).
        threshold: an item alarms when its score is above it.
        class_names: names of the class indices.
        healthy: index of the healthy class.
    """
    alarm = scored.scores > threshold
    is_healthy = scored.labels == healthy
    n_healthy = int(is_healthy.sum())
    false_alarms = int(alarm[is_healthy].sum())
    detection: dict[str, float | None] = {}
    per_class_auc: dict[str, float | None] = {}
    counts = {class_names[healthy]: n_healthy}
    for index, name in enumerate(class_names):
        if index == healthy:
            continue
        mine = scored.labels == index
        counts[name] = int(mine.sum())
        detection[name] = float(alarm[mine].mean()) if mine.any() else None
        per_class_auc[name] = roc_auc(scored.scores[is_healthy], scored.scores[mine])
    return DetectionLevel(
        healthy=n_healthy,
        false_alarms=false_alarms,
        false_alarm_rate=false_alarms / n_healthy if n_healthy else None,
        detection=detection,
        counts=counts,
        roc_auc=roc_auc(scored.scores[is_healthy], scored.scores[~is_healthy]),
        roc_auc_per_class=per_class_auc,
    )


def calibrate(
    calibration: ScoredWindows,
    false_alarm_rate: float,
    recording_false_alarm_rate: float,
    quantile: float,
) -> tuple[ThresholdRecord, ThresholdRecord]:
    """Window and recording thresholds from healthy calibration windows.

    The recording threshold is conformal over the calibration recordings' scores; when there are
    too few recordings to reach its rate, it is at least the window threshold (see
    :func:`conformal_threshold`).

    Args:
        calibration: healthy windows held out from training, with their recordings.
        false_alarm_rate: window-level budget.
        recording_false_alarm_rate: recording-level budget.
        quantile: the recording score's quantile of its window scores.
    """
    window = conformal_threshold(calibration.scores, false_alarm_rate)
    recordings = calibration.by_recording(quantile)
    recording = conformal_threshold(
        recordings.scores, recording_false_alarm_rate, floor=window.threshold
    )
    return window, recording


def evaluate(
    name: str,
    test: ScoredWindows,
    window_threshold: ThresholdRecord,
    recording_threshold: ThresholdRecord,
    quantile: float,
    class_names: list[str],
    healthy: int = 0,
) -> DetectorResults:
    """A detector's test results at its calibrated thresholds, window and recording level.

    Args:
        name: what the detector is, for the card and report.
        test: the test windows (healthy and damaged) with their scores.
        window_threshold: the calibrated window threshold.
        recording_threshold: the calibrated recording threshold.
        quantile: the recording score's quantile of its window scores.
        class_names: names of the class indices.
        healthy: index of the healthy class.
    """
    return DetectorResults(
        name=name,
        window_threshold=window_threshold,
        recording_threshold=recording_threshold,
        window=detection_level(test, window_threshold.threshold, class_names, healthy),
        recording=detection_level(
            test.by_recording(quantile), recording_threshold.threshold, class_names, healthy
        ),
    )


def summary_line(card: NoveltyCard) -> str:
    """One line for the end of a fit: false alarms and detection per class, recording level."""
    test = card.test
    if test is None:
        return "novelty detector: not tested"
    level = test.recording
    far = "n/a" if level.false_alarm_rate is None else f"{level.false_alarm_rate:.3f}"
    detected = ", ".join(
        f"{name} {rate:.2f}" for name, rate in level.detection.items() if rate is not None
    )
    return (
        f"test recordings: false-alarm rate {far} ({level.false_alarms}/{level.healthy} healthy)"
        + (f"; detection {detected}" if detected else "")
    )

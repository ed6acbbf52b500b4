"""Conformal thresholds: a false-alarm budget turned into a score threshold, with its bound.

Given ``n`` scores of healthy data held out from training, the threshold is the ``k``-th smallest
with ``k = ceil((n + 1) (1 - alpha))``: the finite-sample correction of split conformal
prediction. If a new healthy score and the calibration scores are exchangeable (drawn alike, in
any order), the new score exceeds the threshold with probability ``(n + 1 - k) / (n + 1)``, which
is at most ``alpha`` and more than ``alpha - 1 / (n + 1)``. With fewer than ``1 / alpha - 1``
scores no rank reaches ``alpha``; the largest score is then used and the bound says how far off
the budget that leaves.
"""

from __future__ import annotations

import math

import numpy as np

from damage_lightning.card import ThresholdRecord


def conformal_rank(n: int, false_alarm_rate: float) -> int:
    """The rank ``k`` (1-based) of the threshold among ``n`` sorted calibration scores.

    Args:
        n: number of calibration scores (at least one).
        false_alarm_rate: the budget ``alpha`` in ``(0, 1)``.
    """
    if n < 1:
        raise ValueError("a conformal threshold needs at least one calibration score")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"the false-alarm rate must lie in (0, 1), got {false_alarm_rate}")
    # The small tolerance keeps (n + 1) (1 - alpha) that is an integer in exact arithmetic from
    # rounding up past it in floating point.
    k = math.ceil((n + 1) * (1.0 - false_alarm_rate) - 1e-9)
    return min(max(k, 1), n)


def conformal_threshold(
    scores: np.ndarray, false_alarm_rate: float, floor: float | None = None
) -> ThresholdRecord:
    """The conformal threshold of healthy calibration ``scores`` at ``false_alarm_rate``.

    An alarm is a score strictly above the threshold.

    Args:
        scores: healthy scores held out from training (one per window, or per recording).
        false_alarm_rate: the budget ``alpha`` in ``(0, 1)``.
        floor: when no rank reaches ``alpha`` (too few scores), the threshold is not set below
            this value; it is ignored otherwise. The recording-level threshold passes the window
            threshold here, so with few calibration recordings a recording still needs most of
            its windows to alarm.

    Returns:
        the threshold with its rank, the number of scores and the bound.

    Raises:
        ValueError: no scores, non-finite scores, or a rate outside ``(0, 1)``.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size and not np.isfinite(values).all():
        raise ValueError("calibration scores must be finite")
    n = int(values.size)
    k = conformal_rank(n, false_alarm_rate)
    record = threshold_record(float(values[k - 1]), false_alarm_rate, n, k)
    if not record.met and floor is not None:
        record.threshold = max(record.threshold, float(floor))
    return record


def threshold_record(
    threshold: float, false_alarm_rate: float, n: int, rank: int
) -> ThresholdRecord:
    """The record of a threshold at ``rank`` of ``n`` calibration scores, with its bound.

    Args:
        threshold: the threshold.
        false_alarm_rate: the budget it was calibrated for.
        n: number of calibration scores.
        rank: the threshold's rank among them (1-based).
    """
    bound = (n + 1 - rank) / (n + 1)
    return ThresholdRecord(
        threshold=float(threshold),
        false_alarm_rate=float(false_alarm_rate),
        n=int(n),
        rank=int(rank),
        bound=bound,
        met=bound <= false_alarm_rate + 1e-12,
    )


def scores_needed(false_alarm_rate: float) -> int:
    """The fewest calibration scores whose conformal bound reaches ``false_alarm_rate``.

    Args:
        false_alarm_rate: the budget ``alpha`` in ``(0, 1)``.
    """
    return max(1, math.ceil(1.0 / false_alarm_rate - 1.0 - 1e-9))

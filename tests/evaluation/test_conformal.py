"""Conformal thresholds and detection metrics: the false-alarm budget set is the one obtained."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from damage_lightning.evaluation.conformal import conformal_rank, conformal_threshold, scores_needed
from damage_lightning.evaluation.detection import ScoredWindows, calibrate, detection_level, roc_auc


@pytest.mark.parametrize(("alpha", "n"), [(0.05, 199), (0.01, 150), (0.1, 20)])
def test_threshold_on_a_known_distribution_hits_its_rate_within_the_bound(
    alpha: float, n: int
) -> None:
    # Healthy scores ~ N(0, 1): the true false-alarm rate of a threshold t is norm.sf(t).
    rng = np.random.default_rng(0)
    trials = 3000
    rates = np.empty(trials)
    for i in range(trials):
        t = conformal_threshold(rng.standard_normal(n), alpha)
        rates[i] = norm.sf(t.threshold)
    k = math.ceil((n + 1) * (1 - alpha))
    assert t.n == n and t.rank == k and t.met
    assert t.bound == pytest.approx((n + 1 - k) / (n + 1))
    # The finite-sample guarantee: the bound is at most the budget and within 1/(n+1) of it.
    assert alpha - 1 / (n + 1) < t.bound <= alpha
    # The expected false-alarm rate over calibration draws is exactly the bound.
    se = rates.std() / math.sqrt(trials)
    assert abs(rates.mean() - t.bound) < 4 * se


def test_a_new_healthy_window_alarms_at_the_budget() -> None:
    rng = np.random.default_rng(1)
    t = conformal_threshold(rng.gamma(4.0, size=2000), 0.01)
    fresh = rng.gamma(4.0, size=400_000)
    observed = float((fresh > t.threshold).mean())
    # One calibration draw: the rate lies in the Beta(n + 1 - k, k) spread around the bound.
    assert abs(observed - t.bound) < 4 * math.sqrt(t.bound * (1 - t.bound) / t.n)


def test_too_few_scores_cannot_reach_the_budget_and_say_so() -> None:
    assert scores_needed(0.01) == 99
    assert conformal_threshold(np.arange(99.0), 0.01).met
    few = conformal_threshold(np.arange(98.0), 0.01)
    assert not few.met and few.rank == 98 and few.bound == pytest.approx(1 / 99)
    assert few.threshold == 97.0
    # The floor (the window threshold, for recordings) only applies when the budget is missed.
    assert conformal_threshold(np.arange(98.0), 0.01, floor=500.0).threshold == 500.0
    assert conformal_threshold(np.arange(99.0), 0.01, floor=500.0).threshold == 98.0
    assert conformal_rank(1, 0.5) == 1
    with pytest.raises(ValueError, match="at least one"):
        conformal_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError, match="finite"):
        conformal_threshold(np.array([1.0, np.nan]), 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        conformal_threshold(np.arange(5.0), 1.5)


def test_recording_threshold_is_calibrated_on_recordings_not_windows() -> None:
    rng = np.random.default_rng(2)
    # 200 calibration recordings of 10 windows each; each recording has its own level.
    level = np.repeat(rng.normal(0, 1, 200), 10)
    scores = level + rng.normal(0, 0.3, 2000)
    cal = ScoredWindows(scores, np.zeros(2000, dtype=np.int64), np.repeat(np.arange(200), 10))
    window, recording = calibrate(cal, 0.01, 0.05, quantile=0.5)
    assert window.n == 2000 and recording.n == 200
    medians = np.sort([np.median(scores[i * 10 : (i + 1) * 10]) for i in range(200)])
    assert recording.threshold == medians[recording.rank - 1]
    assert recording.rank == math.ceil(201 * 0.95) and recording.met


def test_detection_and_auc_per_class() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 0.35, 7.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    level = detection_level(ScoredWindows(scores, labels, np.arange(8)), 0.35, ["ok", "a", "b"])
    assert level.healthy == 4 and level.false_alarms == 1 and level.false_alarm_rate == 0.25
    assert level.detection == {"a": 1.0, "b": 0.5}
    assert level.counts == {"ok": 4, "a": 2, "b": 2}
    assert level.roc_auc_per_class["a"] == 1.0
    # b: 0.35 beats 3 of 4 healthy scores, 7.0 beats all: (3 + 4) / 8.
    assert level.roc_auc_per_class["b"] == pytest.approx(7 / 8)
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert roc_auc(np.array([]), np.array([1.0])) is None

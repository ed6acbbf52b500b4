"""Recording-level decisions and metrics, calibration figures and temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from damage_lightning.deploy.decision import UNKNOWN, WindowSums, decide, window_unknown
from damage_lightning.evaluation.calibration import (
    brier,
    calibration_summary,
    ece,
    fit_temperature,
    nll,
    softmax,
)
from damage_lightning.evaluation.recording import (
    classification_metrics,
    coverage_curve,
    evaluate_recordings,
)

CLASSES = ["healthy", "crack", "loose"]


def test_decision_rules_by_hand():
    # Two windows of one recording: the mean of log-probabilities penalises a class that one
    # window rules out, the mean of probabilities does not.
    p = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    sums = WindowSums.of(p)
    mean = decide(sums, "mean_prob")
    np.testing.assert_allclose(mean.probabilities, [0.3, 0.4, 0.3])
    assert (mean.predicted, mean.n_windows) == (1, 2)
    assert mean.agreement == pytest.approx(0.0)  # window tops: 0 (tie -> first), 2
    geo = decide(sums, "mean_log_prob")
    g = np.sqrt([0.05, 0.15, 1e-12 * 0.6])
    np.testing.assert_allclose(geo.probabilities, g / g.sum(), rtol=1e-9)
    assert geo.predicted == 1 and geo.confidence == pytest.approx(g[1] / g.sum())
    vote = decide(sums, "vote")
    np.testing.assert_allclose(vote.probabilities, [0.5, 0.0, 0.5])
    # Accumulating a batch at a time gives the same decision as all windows at once.
    split = WindowSums(3).add(p[:1]).add(p[1:])
    np.testing.assert_allclose(decide(split).probabilities, geo.probabilities)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        decide(sums, "median")
    with pytest.raises(ValueError, match="at least one window"):
        decide(WindowSums(3))


def test_unknown_rule():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    assert window_unknown(p, 0.6).tolist() == [False, True]
    assert window_unknown(p, None).tolist() == [False, False]
    confident = decide(WindowSums.of(p[:1]), abstain=0.6)
    doubtful = decide(WindowSums.of(p[1:]), abstain=0.6)
    assert confident.label(CLASSES) == "healthy" and not confident.unknown
    assert doubtful.label(CLASSES) == UNKNOWN and doubtful.predicted == 0
    for bad in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="abstain"):
            decide(WindowSums.of(p), abstain=bad)


def test_classification_metrics_by_hand():
    # true:  h h c c l ; predicted: h c c c h
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], CLASSES)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["healthy"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    crack = m["per_class"]["crack"]
    assert (crack["precision"], crack["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert crack["f1"] == pytest.approx(0.8)
    assert m["per_class"]["loose"]["f1"] == 0.0
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # A class absent from truth and predictions does not count in the macro average.
    m2 = classification_metrics([0, 1], [0, 1], CLASSES)
    assert m2["f1_macro"] == 1.0
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics([0, 3], [0, 1], CLASSES)


def test_recording_level_metrics_hand_computed_example():
    # Recording 0 (healthy): 3 windows, 2 right. Recording 1 (crack): 2 windows, both say
    # loose. Recording 2 (crack): 1 window, right but doubtful. Groups: A = {0}, B = {1, 2}.
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.7, 0.2, 0.1],
            [0.2, 0.6, 0.2],
            [0.1, 0.2, 0.7],
            [0.2, 0.2, 0.6],
            [0.3, 0.4, 0.3],
        ]
    )
    labels = np.array([0, 0, 0, 1, 1, 1])
    recordings = np.array([0, 0, 0, 1, 1, 2])
    names = ["a.csv", "b.csv", "c.csv"]
    result = evaluate_recordings(
        probs, labels, recordings, names, CLASSES, "mean_prob", 0.5, groups=["A", "B", "B"]
    )
    rec = result["recording"]
    assert result["aggregation"] == "mean_prob"
    assert rec["n"] == 3 and rec["accuracy"] == pytest.approx(2 / 3)
    assert rec["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    # c.csv (confidence 0.4) is unknown; the decided two are a right and a wrong one.
    assert (rec["unknown"], rec["coverage"], rec["accuracy_decided"]) == (1, 2 / 3, 0.5)
    table = result["table"]
    assert [r["name"] for r in table] == ["b.csv", "c.csv", "a.csv"]  # wrong first, then doubt
    assert table[0]["predicted"] == "loose" and table[0]["agreement"] == 1.0
    assert table[1]["decision"] == UNKNOWN and table[1]["confidence"] == pytest.approx(0.4)
    assert table[2]["confidence"] == pytest.approx(1.7 / 3)
    # Group B pools windows of b and c: mean (0.2, 0.2667, 0.5333) -> loose, wrong.
    group = result["group"]
    assert group["n"] == 2 and group["accuracy"] == pytest.approx(0.5)
    curve = result["coverage_curve"]
    assert [(c["coverage"], c["accuracy"]) for c in curve] == [
        (1.0, pytest.approx(2 / 3)),
        (pytest.approx(2 / 3), 0.5),
        (pytest.approx(1 / 3), 0.0),
    ]
    # Without groups in the manifest there is no group level.
    assert evaluate_recordings(probs, labels, recordings, names, CLASSES)["group"] is None


def test_coverage_curve_orders_by_confidence():
    class Row:
        def __init__(self, confidence, correct):
            self.confidence, self.correct = confidence, correct

    curve = coverage_curve([Row(0.9, True), Row(0.5, False), Row(0.7, True)])
    assert [c["floor"] for c in curve] == [0.5, 0.7, 0.9]
    assert [c["accuracy"] for c in curve] == [pytest.approx(2 / 3), 1.0, 1.0]


def test_ece_matches_torchmetrics_and_brier_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4)) * 3
    labels = rng.integers(0, 4, 400)
    p = softmax(logits)
    reference = MulticlassCalibrationError(4, n_bins=15, norm="l1")
    expected = float(reference(torch.tensor(p), torch.tensor(labels)))
    assert ece(p, labels) == pytest.approx(expected, abs=1e-6)
    assert brier(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 0])) == pytest.approx(
        (0.04 + 0.04 + 0.36 + 0.36) / 2
    )


def _overconfident(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # A toy model whose logits are 4x too large: right 70 % of the time but nearly always sure.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    right = rng.random(n) < 0.7
    top = np.where(right, labels, (labels + rng.integers(1, 3, n)) % 3)
    logits[np.arange(n), top] += 1.5
    return 4.0 * logits, labels


def test_temperature_scaling_lowers_nll_of_a_miscalibrated_model():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t > 2.0  # the logits are far too large: they are divided down
    assert nll(logits, labels, t) < 0.8 * nll(logits, labels, 1.0)
    # Fitted on one half, it also calibrates the other half.
    test_logits, test_labels = _overconfident(seed=1)
    summary = calibration_summary(test_logits, test_labels, t)
    assert summary["after"]["ece"] < 0.25 * summary["before"]["ece"]
    assert summary["after"]["brier"] < summary["before"]["brier"]
    assert sum(b["count"] for b in summary["after"]["reliability"]) == len(test_labels)
    # A calibrated model is left alone; argmax decisions never change.
    probs = softmax(logits, t)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    # Logits already divided by the fitted temperature need none (T close to 1).
    assert math.isclose(fit_temperature(logits / t, labels), 1.0, rel_tol=0.01)


def test_temperature_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="not all finite"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match=r"need \(n, K\)"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_temperature_of_a_perfect_validation_split_stays_finite():
    # Every validation window right: plain NLL would push T to its lower bound (all-or-nothing
    # probabilities). The rule of succession keeps the mean confidence near 1 - 1/(n+2).
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), labels] += 6.0
    t = fit_temperature(logits, labels)
    assert t > 0.2  # far from the 1/20 bound
    confidence = softmax(logits, t).max(axis=1).mean()
    assert 0.97 < confidence < 0.999

"""Recording- and group-level evaluation: decide per recording, then score the decisions.

An engineer acts on a recording (one machine, one day), not on a window. The test split's
windows are decided per recording, and per group where the manifest has groups, with the one
decision rule of the deployed model (:func:`damage_lightning.deploy.decision.decide`), then
scored like windows are: accuracy, macro F1, per-class precision/recall/F1 and the confusion
matrix. With an abstain floor, coverage (the share of decided recordings) and the accuracy of
the decided ones are given beside them. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from damage_lightning.card import RecordingOutcomeRow
from damage_lightning.deploy.decision import Decision, decide_groups


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Defined as torchmetrics defines the window-level figures: precision or recall with a zero
    denominator is 0; the macro F1 averages the classes that occur among the true or predicted
    labels.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        class_names: names in index order.

    Raises:
        ValueError: empty or mismatched inputs, or indices outside the classes.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    k = len(class_names)
    if t.shape != p.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"need equal, non-empty label vectors, got {t.shape} and {p.shape}")
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k:
        raise ValueError(f"class indices must lie in [0, {k})")
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / len(t)),
        "f1_macro": float(f1[present].mean()),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def outcomes(
    decisions: dict[Any, Decision],
    labels: dict[Any, int],
    names: dict[Any, str],
    class_names: list[str],
) -> list[RecordingOutcomeRow]:
    """The decisions as :class:`~damage_lightning.card.RecordingOutcomeRow`, worst first.

    Worst first: wrong decisions, then the least confident, so the table's top rows are where
    an engineer should look.
    """
    rows = [
        RecordingOutcomeRow(
            name=str(names[key]),
            label=class_names[labels[key]],
            predicted=class_names[d.predicted],
            decision=d.label(class_names),
            confidence=float(d.confidence),
            agreement=float(d.agreement),
            n_windows=int(d.n_windows),
            correct=d.predicted == labels[key],
            distance=d.distance,
        )
        for key, d in decisions.items()
    ]
    return sorted(rows, key=lambda r: (r.correct, r.confidence, r.name))


def coverage_curve(rows: Sequence[RecordingOutcomeRow]) -> list[dict[str, float]]:
    """Accuracy of the decided recordings against coverage, for every confidence floor.

    Each point is the floor just at one recording's confidence: the recordings at or above it
    are decided. Points go from full coverage down to the single most confident recording.
    """
    ordered = sorted(rows, key=lambda r: -r.confidence)
    correct = np.cumsum([r.correct for r in ordered])
    n = len(ordered)
    return [
        {
            "floor": float(ordered[i].confidence),
            "coverage": (i + 1) / n,
            "accuracy": float(correct[i] / (i + 1)),
        }
        for i in range(n - 1, -1, -1)
    ]


def level_metrics(
    rows: Sequence[RecordingOutcomeRow], class_names: list[str], abstain: float | None
) -> dict[str, Any]:
    """Metrics of one level (recordings or groups) from its outcomes.

    The classification figures score the top class of every recording; with an abstain floor,
    ``coverage`` (decided share), ``accuracy_decided`` (accuracy of the decided ones) and
    ``unknown`` (how many) come beside them.
    """
    index = {c: i for i, c in enumerate(class_names)}
    metrics = classification_metrics(
        [index[r.label] for r in rows], [index[r.predicted] for r in rows], class_names
    )
    metrics["n"] = len(rows)
    decided = [r for r in rows if r.decision != "unknown"]
    metrics["unknown"] = len(rows) - len(decided)
    metrics["coverage"] = len(decided) / len(rows)
    metrics["accuracy_decided"] = float(np.mean([r.correct for r in decided])) if decided else None
    metrics["abstain"] = abstain
    return metrics


def evaluate_recordings(
    probabilities: np.ndarray,
    labels: np.ndarray,
    recordings: np.ndarray,
    recording_names: Sequence[str],
    class_names: list[str],
    rule: str = "mean_log_prob",
    abstain: float | None = None,
    groups: Sequence[str] | None = None,
    distances: np.ndarray | None = None,
    distance_threshold: float | None = None,
) -> dict[str, Any]:
    """Recording-level (and group-level) metrics of test windows.

    Args:
        probabilities: ``(n, K)`` calibrated window probabilities.
        labels: ``(n,)`` true class index per window.
        recordings: ``(n,)`` recording index per window (into ``recording_names``).
        recording_names: path of each recording.
        class_names: class names in index order.
        rule: aggregation rule (``deploy.decision.AGGREGATIONS``).
        abstain: probability floor for ``unknown``, or ``None``.
        groups: group key of each recording (indexed like ``recording_names``, ``None`` where
            the manifest has none); a group level is added when every recording has a group,
            some group holds more than one test recording and every group one class (a unit
            recorded in several states has no single true class).
        distances: ``(n,)`` feature distance per window (a model with a distance gate).
        distance_threshold: the gate's threshold on a recording's mean distance, or ``None``.

    Returns:
        ``{"aggregation", "recording": metrics, "table": [outcome, ...] (worst first),
        "coverage_curve": [...], "group": metrics or None}``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    recordings = np.asarray(recordings, dtype=np.int64)
    gate = {"distances": distances, "distance_threshold": distance_threshold}
    decisions = decide_groups(probabilities, recordings, rule, abstain, **gate)
    rec_labels = {
        int(r): _only_label(labels[recordings == r], recording_names[r]) for r in decisions
    }
    rows = outcomes(decisions, rec_labels, dict(enumerate(recording_names)), class_names)
    result: dict[str, Any] = {
        "aggregation": rule,
        "recording": level_metrics(rows, class_names, abstain),
        "table": [r.to_json() for r in rows],
        "coverage_curve": coverage_curve(rows),
        "group": None,
    }
    if groups is not None and all(g is not None for g in groups):
        result["group"] = _group_level(
            probabilities, labels, recordings, groups, class_names, rule, abstain, gate
        )
    for level in ("recording", "group"):
        if result[level] is not None:
            result[level]["distance_threshold"] = distance_threshold
    return result


def _group_level(
    probabilities: np.ndarray,
    labels: np.ndarray,
    recordings: np.ndarray,
    groups: Sequence[str],
    class_names: list[str],
    rule: str,
    abstain: float | None,
    gate: dict[str, Any],
) -> dict[str, Any] | None:
    window_groups = np.asarray([str(groups[r]) for r in recordings])
    keys = sorted(set(window_groups.tolist()))
    if len(keys) == len(set(recordings.tolist())):
        return None
    group_labels = {}
    for g in keys:
        values = np.unique(labels[window_groups == g])
        if len(values) != 1:
            return None
        group_labels[g] = int(values[0])
    decisions = decide_groups(probabilities, window_groups, rule, abstain, **gate)
    rows = outcomes(decisions, group_labels, {g: g for g in keys}, class_names)
    return level_metrics(rows, class_names, abstain)


def _only_label(labels: np.ndarray, where: str) -> int:
    values = np.unique(labels)
    if len(values) != 1:
        raise ValueError(f"{where}: its windows carry more than one label {values.tolist()}")
    return int(values[0])

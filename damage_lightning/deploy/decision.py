"""The decision for one recording (or one group of recordings) from its windows' probabilities.

One implementation for every place that decides per recording: the test split's
recording-level metrics (``tasks.classification``), ``predict``'s CSVs and the gateway
(``deploy.predict``). Windows arrive a batch at a time (:class:`WindowSums` accumulates them),
so a long recording never has all its windows in memory. Torch-free.

Aggregation rules (the task's ``aggregation``, recorded in the model's metadata):

- ``mean_log_prob`` (default): the normalised geometric mean of the window probabilities,
  ``softmax(mean_w log p_w)``. One confident wrong window cannot outvote many right ones, and
  a class that some windows rule out (``p`` near 0) is penalised, as a product of independent
  evidence would be, but on the scale of one window.
- ``mean_prob``: the arithmetic mean of the window probabilities.
- ``vote``: the share of windows whose top class each class is.

With an abstain floor the decision is ``unknown`` when the recording's confidence (its
aggregated probability of the top class) is below the floor. A model with a feature-distance
gate also gives each window its distance to the nearest training class (squared Mahalanobis
distance of the network's embedding); the decision is ``unknown`` when the recording's mean
distance exceeds the gate's threshold. A class never seen in training is often confidently
given the label of a neighbour, so the probability alone does not catch it; its embeddings lie
away from every training class, so the distance does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Aggregation = Literal["mean_log_prob", "mean_prob", "vote"]
AGGREGATIONS: tuple[str, ...] = ("mean_log_prob", "mean_prob", "vote")
#: The decision of a recording whose confidence is below the abstain floor.
UNKNOWN = "unknown"
# Probabilities are floored before the log: float32 softmax underflows to exactly 0.
LOG_FLOOR = 1e-12


def check_aggregation(rule: str) -> str:
    """``rule`` when it is a known aggregation rule.

    Raises:
        ValueError: naming the known rules.
    """
    if rule not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {rule!r}")
    return rule


def check_abstain(floor: float | None) -> float | None:
    """``floor`` when it is ``None`` or a probability in ``(0, 1)``.

    Raises:
        ValueError: for any other value.
    """
    if floor is None:
        return None
    if isinstance(floor, bool) or not 0.0 < float(floor) < 1.0:
        raise ValueError(f"abstain must be a probability floor in (0, 1) or null, got {floor!r}")
    return float(floor)


@dataclass
class WindowSums:
    """What the decision needs from a recording's windows, accumulated a batch at a time.

    Args:
        num_classes: number of classes ``K``.
    """

    num_classes: int
    probability_sum: np.ndarray = field(init=False)
    log_probability_sum: np.ndarray = field(init=False)
    top_counts: np.ndarray = field(init=False)
    n_windows: int = 0
    distance_sum: float = 0.0

    def __post_init__(self) -> None:
        self.probability_sum = np.zeros(self.num_classes)
        self.log_probability_sum = np.zeros(self.num_classes)
        self.top_counts = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, probabilities: np.ndarray, distances: np.ndarray | None = None) -> WindowSums:
        """Add a batch of ``(n, K)`` window probabilities (and distances); returns ``self``."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1, self.num_classes)
        if distances is not None:
            self.distance_sum += float(np.asarray(distances, dtype=np.float64).sum())
        self.probability_sum += p.sum(axis=0)
        self.log_probability_sum += np.log(np.maximum(p, LOG_FLOOR)).sum(axis=0)
        self.top_counts += np.bincount(p.argmax(axis=1), minlength=self.num_classes)
        self.n_windows += len(p)
        return self

    @classmethod
    def of(cls, probabilities: np.ndarray, distances: np.ndarray | None = None) -> WindowSums:
        """The sums of one recording's ``(n_windows, K)`` window probabilities (and distances)."""
        p = np.asarray(probabilities)
        return cls(p.shape[1]).add(p, distances)


@dataclass
class Decision:
    """The decision for one recording.

    Args:
        probabilities: the aggregated probability of each class (they sum to one).
        predicted: index of the top class.
        confidence: the aggregated probability of the top class.
        agreement: share of windows whose own top class is the predicted one.
        n_windows: windows the decision is made of.
        unknown: the confidence is below the abstain floor, or the distance above the gate.
        distance: mean feature distance of the windows (``None`` without a distance gate).
    """

    probabilities: np.ndarray
    predicted: int
    confidence: float
    agreement: float
    n_windows: int
    unknown: bool = False
    distance: float | None = None

    def label(self, class_names: list[str]) -> str:
        """The decision as text: the predicted class, or :data:`UNKNOWN`."""
        return UNKNOWN if self.unknown else class_names[self.predicted]


def decide(
    sums: WindowSums,
    rule: str = "mean_log_prob",
    abstain: float | None = None,
    distance_threshold: float | None = None,
) -> Decision:
    """The recording's decision from its window sums.

    Args:
        sums: the accumulated windows (at least one).
        rule: an aggregation rule (:data:`AGGREGATIONS`).
        abstain: probability floor below which the decision is unknown, or ``None``.
        distance_threshold: mean feature distance above which the decision is unknown, or
            ``None`` (no distance gate; the windows' distances are then not used).

    Raises:
        ValueError: no windows, or an unknown rule.
    """
    check_aggregation(rule)
    n = sums.n_windows
    if n <= 0:
        raise ValueError("a decision needs at least one window")
    if rule == "mean_log_prob":
        mean_log = sums.log_probability_sum / n
        expd = np.exp(mean_log - mean_log.max())
        probabilities = expd / expd.sum()
    elif rule == "mean_prob":
        probabilities = sums.probability_sum / n
    else:
        probabilities = sums.top_counts / n
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    floor = check_abstain(abstain)
    distance = sums.distance_sum / n if distance_threshold is not None else None
    far = distance is not None and distance > distance_threshold
    return Decision(
        probabilities=probabilities,
        predicted=best,
        confidence=confidence,
        agreement=float(sums.top_counts[best]) / n,
        n_windows=n,
        unknown=(floor is not None and confidence < floor) or far,
        distance=distance,
    )


def window_unknown(
    probabilities: np.ndarray,
    abstain: float | None,
    distances: np.ndarray | None = None,
    distance_threshold: float | None = None,
) -> np.ndarray:
    """Per window: top probability below the floor, or distance above the gate's threshold."""
    p = np.asarray(probabilities)
    floor = check_abstain(abstain)
    unknown = np.zeros(len(p), dtype=bool)
    if floor is not None:
        unknown |= p.max(axis=1) < floor
    if distance_threshold is not None and distances is not None:
        unknown |= np.asarray(distances) > distance_threshold
    return unknown


def decide_groups(
    probabilities: np.ndarray,
    keys: np.ndarray | list,
    rule: str = "mean_log_prob",
    abstain: float | None = None,
    distances: np.ndarray | None = None,
    distance_threshold: float | None = None,
) -> dict:
    """One decision per distinct key (recording or group) of ``(n, K)`` window probabilities.

    Args:
        probabilities: window probabilities.
        keys: per window, the recording or group it belongs to.
        rule: aggregation rule.
        abstain: probability floor, or ``None``.
        distances: per window, its feature distance (with ``distance_threshold``).
        distance_threshold: the distance gate's threshold, or ``None``.

    Returns:
        ``{key: Decision}`` in sorted key order.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    keys = np.asarray(keys)
    d = None if distances is None else np.asarray(distances, dtype=np.float64)
    out = {}
    for key in sorted(set(keys.tolist())):
        mask = keys == key
        sums = WindowSums.of(p[mask], None if d is None else d[mask])
        out[key] = decide(sums, rule, abstain, distance_threshold)
    return out

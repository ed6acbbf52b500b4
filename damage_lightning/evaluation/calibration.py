"""Calibration: temperature scaling fitted on validation logits, ECE, Brier score, reliability.

Temperature scaling (Guo et al., 2017) divides the logits by one number ``T`` chosen to minimise
the negative log-likelihood of the validation split. It changes no decision (the argmax is the
same) and only makes the probabilities honest: a network that says 0.9 should be right nine
times in ten. Torch-free (numpy and scipy): the task fits ``T`` after training, the exported
model applies it inside, and the report reads the figures from the model card.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

#: ``T`` is searched in ``[1/LIMIT, LIMIT]``: beyond, the probabilities are all-or-nothing or flat.
TEMPERATURE_LIMIT = 20.0
#: Equal-width confidence bins of the expected calibration error (torchmetrics' default).
N_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def smoothed_nll(
    logits: np.ndarray, labels: np.ndarray, temperature: float, smoothing: float
) -> float:
    """Cross-entropy of ``softmax(logits / T)`` against labels smoothed by ``smoothing``.

    The target puts ``1 - smoothing`` on the true class and spreads ``smoothing`` evenly over
    all ``K`` classes; ``smoothing = 0`` is :func:`nll`.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    labels = np.asarray(labels, dtype=np.int64)
    true = log_p[np.arange(len(labels)), labels]
    return float(np.mean(-(1.0 - smoothing) * true - smoothing * log_p.mean(axis=1)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``labels``, with the rule of succession.

    Plain NLL has no minimum when every validation window is right (common on clean data):
    it keeps falling as ``T -> 0`` and would make the model all-or-nothing, and so confidently
    wrong on the first recording unlike its training data. The target is therefore smoothed by
    ``1 / (n + 2)``, Laplace's estimate of the error rate after ``n`` windows without an
    error: with errors in the validation split this changes ``T`` by little, without them it
    keeps ``T`` where the confidence matches what ``n`` windows can show.

    Args:
        logits: ``(n, K)`` validation logits of the trained network.
        labels: ``(n,)`` their true classes.

    Raises:
        ValueError: no windows, or logits that are not finite.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
        raise ValueError(f"need (n, K) logits and n labels, got {logits.shape}, {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("the validation logits are not all finite")
    smoothing = 1.0 / (len(labels) + 2)
    bound = math.log(TEMPERATURE_LIMIT)
    result = minimize_scalar(
        lambda log_t: smoothed_nll(logits, labels, math.exp(log_t), smoothing),
        bounds=(-bound, bound),
        method="bounded",
        options={"xatol": 1e-4},
    )
    best = math.exp(float(result.x))
    # Keep T = 1 when scaling does not help, so a calibrated network is left alone.
    better = smoothed_nll(logits, labels, best, smoothing) < smoothed_nll(
        logits, labels, 1.0, smoothing
    )
    return best if better else 1.0


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over windows of ``sum_k (p_k - [k == y])^2``."""
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its range, mean confidence, accuracy and window count.

    Empty bins are left out. Bins are ``[lo, hi)`` (the last one includes 1) as torchmetrics
    bins them.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == np.asarray(labels, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return rows


def ece(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the count-weighted mean ``|accuracy - confidence|`` of bins."""
    rows = reliability(probabilities, labels, n_bins)
    total = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / total)


def calibration_summary(
    logits: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int = N_BINS
) -> dict[str, Any]:
    """ECE, Brier score, NLL and the reliability bins, before (``T = 1``) and after scaling.

    Args:
        logits: ``(n, K)`` raw logits of the evaluated windows.
        labels: their true classes.
        temperature: the fitted temperature.
        n_bins: confidence bins.
    """
    out: dict[str, Any] = {"temperature": float(temperature), "n_windows": len(labels)}
    for name, t in (("before", 1.0), ("after", float(temperature))):
        p = softmax(logits, t)
        out[name] = {
            "ece": ece(p, labels, n_bins),
            "brier": brier(p, labels),
            "nll": nll(logits, labels, t),
            "reliability": reliability(p, labels, n_bins),
        }
    return out

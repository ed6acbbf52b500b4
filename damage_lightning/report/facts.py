"""The facts of a run that both analyses are written from (:func:`summarise_run`).

Overfitting gap, plateaus, learning-rate reductions and their effect, early stopping, weak and
most confused classes, data imbalance: computed once from the typed run record, so the offline
text, Claude's prompt and the PDF quote the same numbers.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from damage_lightning.card import EpochRecord, EvaluationMetrics, ModelCard, TrainingHistory
from damage_lightning.report.record import RunRecord
from damage_lightning.report.text import as_number, clean_text

WEAK_RECALL = 0.9
# Relative val-loss improvement that counts as progress when looking for plateaus.
PLATEAU_MIN_DELTA = 0.005
PLATEAU_MIN_EPOCHS = 3
# Val loss this far (relative) above its minimum at the last epoch, with train loss still falling,
# is reported as overfitting.
OVERFIT_RISE = 0.05
IMBALANCE_RATIO = 1.5


def _series(epochs: list[EpochRecord], key: str) -> list[tuple[int, float]]:
    return [(e.epoch, v) for e in epochs if (v := as_number(getattr(e, key))) is not None]


def _at(epochs: list[EpochRecord], epoch: int | None) -> EpochRecord | None:
    return next((e for e in epochs if epoch is not None and e.epoch == epoch), None)


def _point(row: EpochRecord | None) -> dict[str, Any]:
    keys = ("train_loss", "val_loss", "train_acc", "val_acc")
    values = {k: as_number(getattr(row, k)) if row else None for k in keys}
    tl, vl, ta, va = values.values()
    return {
        "epoch": row.epoch if row else None,
        **values,
        "loss_gap": None if tl is None or vl is None else vl - tl,
        "acc_gap": None if ta is None or va is None else ta - va,
    }


def _plateaus(val: list[tuple[int, float]]) -> list[dict[str, int]]:
    """Runs of at least ``PLATEAU_MIN_EPOCHS`` epochs without a new val-loss minimum."""
    spans: list[dict[str, int]] = []
    best = math.inf
    start: int | None = None
    last_epoch = None
    for epoch, v in val:
        improved = (v < best * (1 - PLATEAU_MIN_DELTA)) if best > 0 else (v < best)
        if improved:
            if start is not None and last_epoch is not None:
                spans.append({"start": start, "end": last_epoch})
            start = None
            best = v
        elif start is None:
            start = epoch
        last_epoch = epoch
    if start is not None and last_epoch is not None:
        spans.append({"start": start, "end": last_epoch})
    out = []
    for s in spans:
        s["length"] = s["end"] - s["start"] + 1
        if s["length"] >= PLATEAU_MIN_EPOCHS:
            out.append(s)
    return out


def _lr_reductions(history: TrainingHistory) -> list[dict[str, Any]]:
    if history.lr_reductions:
        reductions = [
            {"epoch": r.epoch, "from": as_number(r.from_lr), "to": as_number(r.to_lr)}
            for r in history.lr_reductions
        ]
    else:
        lrs = _series(history.epochs, "lr")
        reductions = [
            {"epoch": epoch, "from": before, "to": after}
            for (_, before), (epoch, after) in itertools.pairwise(lrs)
            if after < before * (1 - 1e-9)
        ]
    val = _series(history.epochs, "val_loss")
    for r in reductions:
        before = [v for e, v in val if e < r["epoch"]]
        after = [(e, v) for e, v in val if e >= r["epoch"]]
        r["best_before"] = min(before) if before else None
        new_best = [
            (e, v) for e, v in after if r["best_before"] is not None and v < r["best_before"]
        ]
        r["improved_after"] = bool(new_best)
        r["best_after"] = min((v for _, v in after), default=None)
        r["first_new_best_epoch"] = new_best[0][0] if new_best else None
    return reductions


def confusion_matrix(test: EvaluationMetrics | None) -> list[list[float]] | None:
    """The test confusion matrix as numbers; ``None`` when absent, empty or not square."""
    cm = test.confusion_matrix if test else None
    if not cm or any(len(row) != len(cm) for row in cm):
        return None
    return [[as_number(v) or 0.0 for v in row] for row in cm]


def class_names(card: ModelCard | None, n: int | None = None) -> list[str]:
    """Class names from the model card, or ``class 0 .. n-1`` when they are missing."""
    names = card.classes if card else []
    if names and (n is None or len(names) == n):
        return [clean_text(c, newlines=False) for c in names]
    return [f"class {i}" for i in range(n or 0)]


def per_class_metrics(card: ModelCard | None) -> dict[str, dict[str, float | None]]:
    """Per-class precision/recall/F1/support, from test_metrics or derived from the matrix."""
    test = card.test_metrics if card else None
    if test is None:
        return {}
    if test.per_class:
        return {
            clean_text(name, newlines=False): {
                "precision": as_number(m.precision),
                "recall": as_number(m.recall),
                "f1": as_number(m.f1),
                "support": as_number(m.support),
            }
            for name, m in test.per_class.items()
        }
    cm = confusion_matrix(test)
    if cm is None:
        return {}
    out = {}
    for i, name in enumerate(class_names(card, len(cm))):
        tp = cm[i][i]
        support = sum(cm[i])
        predicted = sum(row[i] for row in cm)
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def summarise_run(record: RunRecord) -> dict[str, Any]:
    """Compute the facts both analyses are written from.

    Args:
        record: the run folder (``RunRecord.load``); its card may be ``None`` and its history
            empty.
    """
    card = record.card
    history = record.history
    epochs = history.epochs
    val = _series(epochs, "val_loss")
    train = _series(epochs, "train_loss")

    facts: dict[str, Any] = {
        "run_name": clean_text(card.run_name if card else record.run_name, newlines=False),
        "model_name": clean_text(card.model.name if card else "", newlines=False),
        "parameters": as_number(card.model.parameters) if card else None,
        "hyperparameters": card.model.hyperparameters if card else {},
        "classes": class_names(card),
        "n_recordings": as_number(card.data.n_recordings) if card else None,
        "epochs_run": len(epochs),
        "first_epoch": epochs[0].epoch if epochs else None,
        "last_epoch": epochs[-1].epoch if epochs else None,
        "max_epochs": as_number(history.max_epochs),
        "monitor": history.monitor or "val_loss",
    }
    best_epoch = history.best_epoch
    if best_epoch is None and card:
        best_epoch = card.best_epoch
    if best_epoch is None and val:
        best_epoch = min(val, key=lambda p: p[1])[0]
    facts["best_epoch"] = best_epoch
    at_best = _at(epochs, best_epoch)
    facts["best_val_loss"] = as_number(history.best_val_loss)
    if facts["best_val_loss"] is None and at_best:
        facts["best_val_loss"] = as_number(at_best.val_loss)
    facts["at_best"] = _point(at_best) if epochs else None
    facts["at_last"] = _point(epochs[-1]) if epochs else None
    if val:
        min_epoch, min_val = min(val, key=lambda p: p[1])
        facts["val_loss_min"] = {"epoch": min_epoch, "value": min_val}
        last_epoch, last_val = val[-1]
        rise = (last_val - min_val) / min_val if min_val > 0 else 0.0
        facts["val_loss_rise_after_min"] = rise
        facts["val_loss_last"] = last_val
        train_at_min = dict(train).get(min_epoch)
        train_last = train[-1][1] if train else None
        facts["train_loss_at_min"] = train_at_min
        facts["train_loss_last"] = train_last
        # Train loss near its floor is noisy: "not rising like val loss" is what matters.
        train_flat_or_falling = (
            train_at_min is not None
            and train_last is not None
            and train_last < train_at_min * (1 + rise / 2)
        )
        facts["overfitting"] = bool(
            rise >= OVERFIT_RISE and train_flat_or_falling and last_epoch > min_epoch
        )
    else:
        facts["val_loss_min"] = None
        facts["overfitting"] = False
    facts["plateaus"] = _plateaus(val)
    facts["lr_reductions"] = _lr_reductions(history)
    lrs = _series(epochs, "lr")
    facts["lr_first"] = lrs[0][1] if lrs else None
    facts["lr_last"] = lrs[-1][1] if lrs else None
    es = history.early_stopping
    facts["early_stopping"] = es.to_json() if es else None
    stopped_early = bool(es and es.triggered)
    facts["stopped_early"] = stopped_early
    facts["still_improving"] = bool(
        epochs and not stopped_early and facts["best_epoch"] == facts["last_epoch"]
    )
    times = [v for _, v in _series(epochs, "epoch_time_s")]
    facts["train_time_s"] = sum(times) if times else as_number(card.duration_s if card else None)

    test = card.test_metrics if card else None
    facts["test"] = (
        {
            "accuracy": as_number(test.accuracy),
            "f1_macro": as_number(test.f1_macro),
            "loss": as_number(test.loss),
        }
        if test
        else None
    )
    per_class = per_class_metrics(card)
    facts["per_class"] = per_class
    facts.update(_confusions(test, facts["classes"], per_class))
    train_windows = _train_windows(card)
    positive = [v for v in train_windows.values() if v > 0]
    facts["train_windows"] = train_windows
    facts["imbalance_ratio"] = max(positive) / min(positive) if len(positive) >= 2 else None
    val_acc_best = (facts["at_best"] or {}).get("val_acc")
    test_acc = (facts["test"] or {}).get("accuracy")
    facts["val_test_acc_gap"] = (
        None if val_acc_best is None or test_acc is None else val_acc_best - test_acc
    )
    facts["leakage"] = card.splits.leakage_check.to_json() if card else None
    facts["split_strategy"] = (
        card.splits.strategy if card else record.splits.strategy if record.splits else None
    )
    facts["data_warnings"] = len(card.data.warnings) if card else 0
    # A novelty detector's thresholds and test (report/novelty_analysis.py writes from them).
    facts["novelty"] = card.novelty.to_json() if card and card.novelty else None
    return facts


def _confusions(
    test: EvaluationMetrics | None, classes: list[str], per_class: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The three most frequent confusions, and the classes of weak recall with their top one."""
    cm = confusion_matrix(test)
    if cm is not None and classes and len(classes) != len(cm):
        cm = None  # a matrix that does not match the classes names nothing reliably
    pairs = []
    for i, row in enumerate(cm or []):
        total = sum(row)
        for j, count in enumerate(row):
            if i != j and count > 0:
                pairs.append(
                    {
                        "true": classes[i] if classes else f"class {i}",
                        "predicted": classes[j] if classes else f"class {j}",
                        "count": int(count),
                        "share_of_true": count / total if total else None,
                    }
                )
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    weak = []
    for name, m in per_class.items():
        recall = m.get("recall")
        if recall is not None and recall < WEAK_RECALL:
            top = next((p for p in pairs if p["true"] == name), None)
            weak.append({"class": name, "recall": recall, "support": m.get("support"), "top": top})
    weak.sort(key=lambda w: w["recall"])
    return {"confused_pairs": pairs[:3], "weak_recall": weak}


def _train_windows(card: ModelCard | None) -> dict[str, float]:
    """Training windows per class, from the card's data summary."""
    if card is None:
        return {}
    return {
        clean_text(name, newlines=False): float(by_split["train"].windows)
        for name, by_split in card.data.per_class.items()
        if "train" in by_split
    }

"""The report's written analysis: by Claude (anthropic SDK) when a key is set, else offline.

Both paths start from the same facts (:func:`summarise_run`) taken from the run folder's JSON, so
the offline analysis and the prompt agree on the numbers. A failed, slow or unparseable Claude call
never raises: :func:`analyse` falls back to the offline text and says why in one line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import threading
import time
import typing
import unicodedata
from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("Executive summary", "Training dynamics", "Recommendations")
OFFLINE_SOURCE = "offline analysis"
MODEL_ENV = "DAMAGE_LIGHTNING_LLM_MODEL"
API_KEY_ENV = "ANTHROPIC_API_KEY"
FALLBACK_MODEL = "claude-sonnet-4-5"
LLM_DISABLED_REASON = "LLM analysis disabled (report.llm: false)"

WEAK_RECALL = 0.9
# An answer longer than this is not the few paragraphs we asked for (and would bloat the PDF).
MAX_RESPONSE_CHARS = 60_000
MAX_OUTPUT_TOKENS = 2_500
# Relative val-loss improvement that counts as progress when looking for plateaus.
PLATEAU_MIN_DELTA = 0.005
PLATEAU_MIN_EPOCHS = 3
# Val loss this far (relative) above its minimum at the last epoch, with train loss still falling,
# is reported as overfitting.
OVERFIT_RISE = 0.05
IMBALANCE_RATIO = 1.5


@dataclass
class Analysis:
    """The three analysis sections and who wrote them.

    Args:
        sections: ``SECTIONS`` mapped to text (paragraphs separated by blank lines; bullet lines
            start with ``"- "``).
        source: ``"Claude <model>"`` or ``"offline analysis"``.
        fallback_reason: one line saying why Claude was not used; ``None`` when it was.
    """

    sections: dict[str, str]
    source: str
    fallback_reason: str | None = None
    facts: dict[str, Any] = field(default_factory=dict, repr=False)


class ResponseFormatError(ValueError):
    """Claude's answer is not the JSON object with the three sections that the prompt asks for."""


# ----------------------------------------------------------------------------------------------
# Text helpers shared by the figures and the PDF.

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# Direction overrides and isolates reorder the text around them; the PDF does not need them.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")


def clean_text(value: Any, *, max_len: int | None = None, newlines: bool = True) -> str:
    """Return ``value`` as text that is safe to draw: no control characters, bounded length.

    ANSI escape sequences, C0/C1 control characters, surrogates, private-use and unassigned code
    points and bidi overrides are removed; tabs become spaces. Markup is *not* escaped here (that
    is the PDF's job, see ``pdf.esc``).

    Args:
        value: anything; ``None`` becomes ``""``.
        max_len: when given, longer text is cut and ends with an ellipsis.
        newlines: keep line breaks (``False`` turns them into spaces).
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if max_len is not None and len(text) > 4 * max_len + 64:
        # Keep the work bounded for huge inputs; the cut below still adds the ellipsis.
        text = text[: 4 * max_len + 64]
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\n" if newlines else " ")
        elif ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    text = "".join(out)
    if max_len is not None and len(text) > max_len:
        text = text[: max(max_len - 1, 0)] + "…"
    return text


def redact(text: str, secret: str | None) -> str:
    """Remove ``secret`` (and anything shaped like an Anthropic key) from ``text``."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def as_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (booleans, text, NaN and inf are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_percent(value: Any) -> str:
    """Format a fraction as the report shows it, e.g. ``0.97333`` -> ``"97.33%"``."""
    v = as_number(value)
    return "n/a" if v is None else f"{100.0 * v:.2f}%"


def format_number(value: Any, digits: int = 4) -> str:
    """Format a metric with ``digits`` significant digits (``"n/a"`` when missing)."""
    v = as_number(value)
    if v is None:
        return "n/a"
    if v == int(v) and abs(v) >= 1 and isinstance(value, int):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


# ----------------------------------------------------------------------------------------------
# Facts from the run folder.


def history_epochs(history: dict) -> list[dict]:
    """The per-epoch rows of training_history.json (dicts only; missing epoch numbers filled)."""
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not isinstance(epochs, list):
        return []
    rows = [dict(e) for e in epochs if isinstance(e, dict)]
    for i, row in enumerate(rows):
        if as_number(row.get("epoch")) is None:
            row["epoch"] = i
    return rows


def _series(epochs: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(e["epoch"]), v) for e in epochs if (v := as_number(e.get(key))) is not None]


def _at(epochs: list[dict], epoch: int | None) -> dict:
    if epoch is None:
        return {}
    for e in epochs:
        if int(e["epoch"]) == epoch:
            return e
    return {}


def _point(row: dict) -> dict[str, Any]:
    tl, vl = as_number(row.get("train_loss")), as_number(row.get("val_loss"))
    ta, va = as_number(row.get("train_acc")), as_number(row.get("val_acc"))
    return {
        "epoch": row.get("epoch"),
        "train_loss": tl,
        "val_loss": vl,
        "train_acc": ta,
        "val_acc": va,
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


def _lr_reductions(history: dict, epochs: list[dict]) -> list[dict[str, Any]]:
    given = history.get("lr_reductions")
    reductions: list[dict[str, Any]] = []
    if isinstance(given, list) and given:
        for r in given:
            if isinstance(r, dict) and as_number(r.get("epoch")) is not None:
                reductions.append(
                    {
                        "epoch": int(r["epoch"]),
                        "from": as_number(r.get("from")),
                        "to": as_number(r.get("to")),
                    }
                )
    else:
        lrs = _series(epochs, "lr")
        for (_, before), (epoch, after) in itertools.pairwise(lrs):
            if after < before * (1 - 1e-9):
                reductions.append({"epoch": epoch, "from": before, "to": after})
    val = _series(epochs, "val_loss")
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


def _confusion(test: dict, classes: list[str]) -> list[list[float]] | None:
    cm = test.get("confusion_matrix") if isinstance(test, dict) else None
    if not isinstance(cm, list) or not cm or not all(isinstance(r, list) for r in cm):
        return None
    n = len(cm)
    if any(len(r) != n for r in cm) or (classes and len(classes) != n):
        return None
    rows = [[as_number(v) or 0.0 for v in r] for r in cm]
    return rows


def class_names(model_info: dict, n: int | None = None) -> list[str]:
    """Class names from model_info.json, or ``class 0 .. n-1`` when they are missing."""
    names = model_info.get("classes") if isinstance(model_info, dict) else None
    if isinstance(names, list) and names and (n is None or len(names) == n):
        return [clean_text(c, newlines=False) for c in names]
    return [f"class {i}" for i in range(n or 0)]


def per_class_metrics(model_info: dict) -> dict[str, dict[str, float | None]]:
    """Per-class precision/recall/F1/support, from test_metrics or derived from the matrix."""
    test = model_info.get("test_metrics") if isinstance(model_info, dict) else None
    if not isinstance(test, dict):
        return {}
    given = test.get("per_class")
    if isinstance(given, dict) and given:
        return {
            clean_text(name, newlines=False): {
                k: as_number(v.get(k)) if isinstance(v, dict) else None
                for k in ("precision", "recall", "f1", "support")
            }
            for name, v in given.items()
        }
    cm = _confusion(test, [])
    if cm is None:
        return {}
    names = class_names(model_info, len(cm))
    out = {}
    for i, name in enumerate(names):
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


def summarise_run(run_data: dict) -> dict[str, Any]:
    """Compute the facts both analyses are written from.

    Args:
        run_data: the run folder as loaded by ``build.load_run`` (keys ``model_info``,
            ``history``, ``splits``, ``config``; each may be empty).
    """
    info = run_data.get("model_info") or {}
    history = run_data.get("history") or {}
    epochs = history_epochs(history)
    val = _series(epochs, "val_loss")
    train = _series(epochs, "train_loss")
    model = info.get("model") if isinstance(info.get("model"), dict) else {}
    test = info.get("test_metrics") if isinstance(info.get("test_metrics"), dict) else {}
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    splits = info.get("splits") if isinstance(info.get("splits"), dict) else {}

    facts: dict[str, Any] = {
        "run_name": clean_text(
            info.get("run_name") or run_data.get("run_name") or "", newlines=False
        ),
        "model_name": clean_text(model.get("name") or "", newlines=False),
        "parameters": as_number(model.get("parameters")),
        "hyperparameters": model.get("hyperparameters")
        if isinstance(model.get("hyperparameters"), dict)
        else {},
        "classes": class_names(info),
        "n_recordings": as_number(data.get("n_recordings")),
        "epochs_run": len(epochs),
        "first_epoch": int(epochs[0]["epoch"]) if epochs else None,
        "last_epoch": int(epochs[-1]["epoch"]) if epochs else None,
        "max_epochs": as_number(history.get("max_epochs")),
        "monitor": history.get("monitor") or "val_loss",
    }
    best_epoch = as_number(history.get("best_epoch"))
    if best_epoch is None:
        best_epoch = as_number(info.get("best_epoch"))
    if best_epoch is None and val:
        best_epoch = min(val, key=lambda p: p[1])[0]
    facts["best_epoch"] = None if best_epoch is None else int(best_epoch)
    facts["best_val_loss"] = as_number(history.get("best_val_loss"))
    if facts["best_val_loss"] is None:
        facts["best_val_loss"] = as_number(_at(epochs, facts["best_epoch"]).get("val_loss"))
    facts["at_best"] = _point(_at(epochs, facts["best_epoch"])) if epochs else None
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
    facts["lr_reductions"] = _lr_reductions(history, epochs)
    lrs = _series(epochs, "lr")
    facts["lr_first"] = lrs[0][1] if lrs else None
    facts["lr_last"] = lrs[-1][1] if lrs else None
    es = history.get("early_stopping")
    facts["early_stopping"] = es if isinstance(es, dict) else None
    stopped_early = bool(facts["early_stopping"] and facts["early_stopping"].get("triggered"))
    facts["stopped_early"] = stopped_early
    facts["still_improving"] = bool(
        epochs and not stopped_early and facts["best_epoch"] == facts["last_epoch"]
    )
    times = [v for _, v in _series(epochs, "epoch_time_s")]
    facts["train_time_s"] = sum(times) if times else as_number(info.get("duration_s"))

    facts["test"] = (
        {k: as_number(test.get(k)) for k in ("accuracy", "f1_macro", "loss")} if test else None
    )
    per_class = per_class_metrics(info)
    facts["per_class"] = per_class
    cm = _confusion(test, facts["classes"])
    names = facts["classes"] or (class_names(info, len(cm)) if cm else [])
    pairs = []
    if cm is not None:
        for i, row in enumerate(cm):
            total = sum(row)
            for j, count in enumerate(row):
                if i != j and count > 0:
                    pairs.append(
                        {
                            "true": names[i],
                            "predicted": names[j],
                            "count": int(count),
                            "share_of_true": count / total if total else None,
                        }
                    )
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    facts["confused_pairs"] = pairs[:3]
    weak = []
    for name, m in per_class.items():
        recall = m.get("recall")
        if recall is not None and recall < WEAK_RECALL:
            top = next((p for p in pairs if p["true"] == name), None)
            weak.append({"class": name, "recall": recall, "support": m.get("support"), "top": top})
    weak.sort(key=lambda w: w["recall"])
    facts["weak_recall"] = weak

    train_windows: dict[str, float] = {}
    per_split = data.get("per_class") if isinstance(data.get("per_class"), dict) else {}
    for name, by_split in per_split.items():
        train = by_split.get("train") if isinstance(by_split, dict) else None
        n = as_number(train.get("windows")) if isinstance(train, dict) else None
        if n is not None:
            train_windows[clean_text(name, newlines=False)] = n
    facts["train_windows"] = train_windows
    positive = [v for v in train_windows.values() if v > 0]
    facts["imbalance_ratio"] = max(positive) / min(positive) if len(positive) >= 2 else None

    val_acc_best = (facts["at_best"] or {}).get("val_acc")
    test_acc = (facts["test"] or {}).get("accuracy")
    facts["val_test_acc_gap"] = (
        None if val_acc_best is None or test_acc is None else val_acc_best - test_acc
    )
    leakage = splits.get("leakage_check") if isinstance(splits.get("leakage_check"), dict) else {}
    facts["leakage"] = leakage or None
    facts["split_strategy"] = splits.get("strategy") or (run_data.get("splits") or {}).get(
        "strategy"
    )
    warnings = data.get("warnings")
    facts["data_warnings"] = len(warnings) if isinstance(warnings, list) else 0
    return facts


# ----------------------------------------------------------------------------------------------
# Offline analysis.


def _f(value: Any) -> str:
    return format_number(value)


def _epochs_text(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def offline_sections(facts: dict[str, Any]) -> dict[str, str]:
    """Write the three sections from the numbers alone (no network)."""
    return {
        "Executive summary": _offline_summary(facts),
        "Training dynamics": _offline_dynamics(facts),
        "Recommendations": _offline_recommendations(facts),
    }


def _offline_summary(facts: dict[str, Any]) -> str:
    model = facts["model_name"] or "The model"
    params = facts.get("parameters")
    n_cls = len(facts["classes"])
    parts = [
        f"{model}"
        + (f" ({format_number(int(params))} parameters)" if params is not None else "")
        + f" was trained to tell {n_cls} classes apart"
        + (
            f" from {format_number(int(facts['n_recordings']))} recordings"
            if facts.get("n_recordings") is not None
            else ""
        )
        + "."
    ]
    if facts["epochs_run"]:
        stop = (
            f"early stopping ended training at epoch {facts['last_epoch']}"
            if facts["stopped_early"]
            else f"training ran to epoch {facts['last_epoch']}"
        )
        parts.append(
            f"It ran {facts['epochs_run']} epochs ({stop}); the best epoch by validation loss "
            f"is {facts['best_epoch']} (val loss {_f(facts['best_val_loss'])})."
        )
    else:
        parts.append("The training history is empty, so the training dynamics cannot be judged.")
    test = facts.get("test")
    if test:
        parts.append(
            f"On the test split the best checkpoint reaches accuracy "
            f"{format_percent(test['accuracy'])} and macro F1 {_f(test['f1_macro'])}."
        )
    else:
        parts.append("There are no test metrics in model_info.json (the run was not tested).")
    if facts["weak_recall"]:
        w = facts["weak_recall"][0]
        parts.append(
            f"The weakest class is {w['class']} with recall {_f(w['recall'])}"
            + (f", most often mistaken for {w['top']['predicted']}" if w["top"] else "")
            + "."
        )
    elif facts["per_class"]:
        low = min(
            ((n, m["recall"]) for n, m in facts["per_class"].items() if m["recall"] is not None),
            key=lambda p: p[1],
            default=None,
        )
        if low:
            parts.append(f"Every class has recall of at least {_f(low[1])} ({low[0]} is lowest).")
    if facts["overfitting"]:
        parts.append(
            f"Validation loss rose {format_percent(facts['val_loss_rise_after_min'])} above its "
            "minimum while training loss did not: the model overfits late in training, and "
            "the best checkpoint (not the last) is the one exported."
        )
    leak = facts.get("leakage")
    if leak:
        if leak.get("passed"):
            parts.append("The split passed the leakage check: no recording or range is shared.")
        else:
            parts.append(
                f"The split FAILED the leakage check ({leak.get('overlapping_ranges')} "
                "overlapping ranges): the test metrics are optimistic."
            )
    return " ".join(parts)


def _offline_dynamics(facts: dict[str, Any]) -> str:
    if not facts["epochs_run"]:
        return "No epochs were recorded in training_history.json."
    paras = []
    vmin = facts.get("val_loss_min")
    if vmin:
        paras.append(
            f"Validation loss bottomed out at {_f(vmin['value'])} in epoch {vmin['epoch']}; at the "
            f"last epoch ({facts['last_epoch']}) it was "
            f"{format_percent(facts['val_loss_rise_after_min'])} above that minimum."
        )
    bullets = []
    for label, key in (("best", "at_best"), ("last", "at_last")):
        p = facts.get(key) or {}
        if p.get("loss_gap") is not None or p.get("acc_gap") is not None:
            bullets.append(
                f"- Gap at the {label} epoch ({p['epoch']}): val loss - train loss = "
                f"{_f(p.get('loss_gap'))} ({_f(p.get('val_loss'))} vs {_f(p.get('train_loss'))}), "
                f"train acc - val acc = {format_percent(p.get('acc_gap'))}."
            )
    if facts["overfitting"]:
        bullets.append(
            f"- Overfitting: after epoch {vmin['epoch']} val loss rose "
            f"{format_percent(facts['val_loss_rise_after_min'])} (to {_f(facts['val_loss_last'])}) "
            f"while train loss went from {_f(facts['train_loss_at_min'])} to "
            f"{_f(facts['train_loss_last'])}."
        )
    for p in facts["plateaus"]:
        bullets.append(
            f"- Plateau: no new val-loss minimum from epoch {p['start']} to {p['end']} "
            f"({p['length']} epochs)."
        )
    for r in facts["lr_reductions"]:
        effect = (
            f"a new val-loss minimum followed in epoch {r['first_new_best_epoch']}"
            if r["improved_after"]
            else "no new val-loss minimum followed"
        )
        bullets.append(
            f"- LR reduced at epoch {r['epoch']} from {_f(r['from'])} to {_f(r['to'])}: {effect}."
        )
    if not facts["lr_reductions"] and facts.get("lr_first") is not None:
        bullets.append(f"- The learning rate stayed at {_f(facts['lr_first'])} throughout.")
    es = facts.get("early_stopping")
    if facts["stopped_early"]:
        bullets.append(
            f"- Early stopping triggered at epoch {es.get('stopped_epoch', facts['last_epoch'])} "
            f"(patience {es.get('patience', 'n/a')}), {facts['last_epoch'] - facts['best_epoch']} "
            f"epochs after the best epoch {facts['best_epoch']}."
        )
    elif facts["still_improving"]:
        bullets.append(
            f"- Validation loss was still reaching new minima at the last epoch "
            f"({facts['last_epoch']}); training stopped at max_epochs, not by early stopping."
        )
    else:
        bullets.append(
            f"- Training ran to epoch {facts['last_epoch']} without early stopping; the best "
            f"epoch was {facts['best_epoch']}."
        )
    if facts.get("train_time_s") is not None:
        bullets.append(f"- Training took {facts['train_time_s']:.0f} s in total.")
    return "\n\n".join([*paras, "\n".join(bullets)])


def _offline_recommendations(facts: dict[str, Any]) -> str:
    recs = []
    leak = facts.get("leakage")
    if leak and not leak.get("passed"):
        recs.append(
            f"- Fix the split before trusting any metric: the leakage check found "
            f"{leak.get('overlapping_ranges')} overlapping ranges between splits."
        )
    if facts["overfitting"]:
        dropout = (facts.get("hyperparameters") or {}).get("dropout")
        rise = format_percent(facts["val_loss_rise_after_min"])
        recs.append(
            f"- Reduce overfitting: val loss rose {rise}"
            f" after epoch {facts['val_loss_min']['epoch']} while train loss did not; raise "
            "dropout"
            + (f" (now {_f(dropout)})" if as_number(dropout) is not None else "")
            + " or weight decay, or add recordings."
        )
    for w in facts["weak_recall"]:
        top = w["top"]
        recs.append(
            f"- Improve class {w['class']}: recall {_f(w['recall'])} is below {WEAK_RECALL}"
            + (
                f"; {top['count']} of its test windows were predicted as {top['predicted']}"
                if top
                else ""
            )
            + ". Add recordings of this class or enable class weights."
        )
    if not facts["weak_recall"] and facts["confused_pairs"]:
        p = facts["confused_pairs"][0]
        recs.append(
            f"- The most frequent confusion is {p['true']} -> {p['predicted']} ({p['count']} test "
            "windows); inspect those recordings first if accuracy must improve."
        )
    ratio = facts.get("imbalance_ratio")
    if ratio is not None and ratio > IMBALANCE_RATIO:
        tw = facts["train_windows"]
        hi = max(tw, key=tw.get)
        lo = min(tw, key=tw.get)
        recs.append(
            f"- Balance the training data: {hi} has {format_number(int(tw[hi]))} training windows "
            f"and {lo} only {format_number(int(tw[lo]))} (ratio {ratio:.1f}); use class weights "
            "in the loss or more recordings of the small class."
        )
    if facts["still_improving"]:
        recs.append(
            f"- Train longer: validation loss still improved in the last epoch "
            f"({facts['last_epoch']}); raise max_epochs above {_f(facts.get('max_epochs'))}."
        )
    reds = facts["lr_reductions"]
    if reds and not reds[-1]["improved_after"]:
        r = reds[-1]
        recs.append(
            f"- The last LR reduction (epoch {r['epoch']}, to {_f(r['to'])}) gave no new "
            "val-loss minimum; a shorter early-stopping patience would end such runs sooner."
        )
    gap = facts.get("val_test_acc_gap")
    if gap is not None and gap > 0.03:
        recs.append(
            f"- Test accuracy is {format_percent(gap)} below validation accuracy at the best "
            "epoch; check whether the test recordings differ (sessions, sensors) from the others."
        )
    if facts["data_warnings"]:
        recs.append(
            f"- Review the {facts['data_warnings']} data warning(s) listed under Model and dataset."
        )
    if not recs:
        test = facts.get("test") or {}
        recs.append(
            "- No problem stands out"
            + (f" (test accuracy {format_percent(test.get('accuracy'))})" if test else "")
            + "; before deployment, confirm the result on recordings from a new session."
        )
    return "\n".join(recs)


# ----------------------------------------------------------------------------------------------
# Claude.


def _literal_strings(tp: Any) -> list[str]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return [a for a in args if isinstance(a, str)]
    return [s for a in args for s in _literal_strings(a)]


def _deprecated_models() -> set[str]:
    found: set[str] = set()
    for module in ("anthropic._data", "anthropic.resources.messages.messages"):
        try:
            mod = __import__(module, fromlist=["DEPRECATED_MODELS"])
        except ImportError:
            continue
        table = getattr(mod, "DEPRECATED_MODELS", None)
        if isinstance(table, dict):
            found.update(str(k) for k in table)
    return found


_SONNET = re.compile(r"^claude-sonnet-(\d+)(?:-(\d{1,2}))?(?:-(\d{8}))?$")


def default_model() -> str:
    """The newest non-deprecated ``claude-sonnet-*`` model the installed SDK knows.

    The SDK's ``ModelParam`` / ``Model`` literals list the models; the SDK's ``DEPRECATED_MODELS``
    table marks the ones to avoid. Among equal versions the undated alias wins. Falls back to
    ``FALLBACK_MODEL`` when the SDK cannot be introspected.
    """
    names: set[str] = set()
    try:
        from anthropic.types import model as model_mod
        from anthropic.types import model_param

        for tp in (getattr(model_param, "ModelParam", None), getattr(model_mod, "Model", None)):
            if tp is not None:
                names.update(_literal_strings(tp))
    except ImportError:
        return FALLBACK_MODEL
    deprecated = _deprecated_models()
    best: tuple[tuple[int, int, int, int], str] | None = None
    for name in names - deprecated:
        m = _SONNET.match(name)
        if not m:
            continue
        key = (int(m[1]), int(m[2] or 0), 0 if m[3] else 1, int(m[3] or 0))
        if best is None or key > best[0]:
            best = (key, name)
    return best[1] if best else FALLBACK_MODEL


SYSTEM_PROMPT = (
    "You are a senior machine-learning engineer reviewing one training run of a classifier that "
    "detects structural or machine damage from vibration recordings (spectrograms of windows cut "
    "from accelerometer CSV files). Write for an engineer who will decide what to try next. Use "
    "only the numbers given; quote them. Answer with ONE JSON object and nothing else, with "
    'exactly these three string keys: "Executive summary" (3-5 sentences: the result, whether it '
    'can be trusted, the main weakness), "Training dynamics" (convergence, the train/validation '
    'gap, plateaus, learning-rate reductions, early stopping) and "Recommendations" (3-6 lines, '
    "each starting with '- ', each tied to an observed number). Plain text only: paragraphs "
    "separated by a blank line, no markdown headings, no HTML."
)


def _history_table(run_data: dict, max_rows: int = 40) -> str:
    epochs = history_epochs(run_data.get("history") or {})
    keys = ["epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_f1", "lr"]
    keys = [k for k in keys if any(k in e for e in epochs)]
    step = max(1, math.ceil(len(epochs) / max_rows))
    idx = sorted(set(range(0, len(epochs), step)) | ({len(epochs) - 1} if epochs else set()))
    lines = [",".join(keys)]
    for i in idx:
        lines.append(",".join(format_number(epochs[i].get(k), 5) for k in keys))
    return "\n".join(lines)


def build_prompt(run_data: dict, facts: dict[str, Any]) -> str:
    """The user message: the facts as JSON plus a sampled history as CSV (no file paths)."""
    info = run_data.get("model_info") or {}
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    payload = {
        "facts": {k: v for k, v in facts.items() if k != "hyperparameters"},
        "model": {
            k: (info.get("model") or {}).get(k)
            for k in ("name", "parameters", "hyperparameters")
            if isinstance(info.get("model"), dict)
        },
        "input": info.get("input"),
        "data_per_class": data.get("per_class"),
        "data_warnings": (data.get("warnings") or [])[:10]
        if isinstance(data.get("warnings"), list)
        else [],
        "splits": info.get("splits"),
        "test_metrics": info.get("test_metrics"),
    }
    text = json.dumps(payload, indent=1, default=str, ensure_ascii=False)
    return (
        "Training run facts (JSON):\n"
        + clean_text(text)
        + "\n\nPer-epoch history (CSV, sampled):\n"
        + _history_table(run_data)
        + "\n\nReturn the JSON object with the keys "
        + ", ".join(f'"{s}"' for s in SECTIONS)
        + "."
    )


def parse_response(text: str) -> dict[str, str]:
    """Parse Claude's answer into the three sections, strictly.

    Accepts the JSON object alone, optionally inside a Markdown code fence or with text around
    the outermost braces. Every section must be present and non-empty; other keys are rejected.

    Raises:
        ResponseFormatError: with a one-line reason.
    """
    if len(text) > MAX_RESPONSE_CHARS:
        raise ResponseFormatError(
            f"answer is too long ({len(text):,} characters, limit {MAX_RESPONSE_CHARS:,})"
        )
    body = text.strip()
    fence = re.fullmatch(r"```[a-zA-Z]*\s*\n(.*)\n\s*```", body, flags=re.S)
    if fence:
        body = fence.group(1).strip()
    try:
        obj = json.loads(body)
    except ValueError:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise ResponseFormatError("answer holds no JSON object") from None
        try:
            obj = json.loads(body[start : end + 1])
        except ValueError as exc:
            raise ResponseFormatError(f"answer is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ResponseFormatError("answer is JSON but not an object")
    for name in SECTIONS:
        if name not in obj:
            raise ResponseFormatError(f"missing section '{name}'")
    extra = [k for k in obj if k not in SECTIONS]
    if extra:
        raise ResponseFormatError(f"unexpected key '{clean_text(extra[0], max_len=40)}'")
    sections = {}
    for name in SECTIONS:
        value = obj[name]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            # A list of bullet strings is the same content in another shape; accept it.
            value = "\n".join(v if v.lstrip().startswith("- ") else f"- {v}" for v in value)
        if not isinstance(value, str):
            raise ResponseFormatError(f"section '{name}' is not text")
        value = clean_text(value).strip()
        if not value:
            raise ResponseFormatError(f"section '{name}' is empty")
        sections[name] = value
    return sections


class _CallFailed(Exception):
    """A Claude call that did not produce sections; ``reason`` is the one-line fallback reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _retry_after(exc: Any) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is not None:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


def _status_reason(exc: Any, api_key: str) -> str:
    code = getattr(exc, "status_code", None)
    if code == 429:
        return "Claude API call failed: HTTP 429 rate limited"
    if isinstance(code, int) and code >= 500:
        return f"Claude API call failed: HTTP {code} server error"
    body = getattr(exc, "body", None)
    detail = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        detail = f"{err.get('type', '')}: {err.get('message', '')}".strip(": ")
    detail = redact(clean_text(detail or str(exc), max_len=160, newlines=False), api_key)
    return f"Claude API call failed: HTTP {code} {detail}".rstrip()


def _request(
    api_key: str, model: str, prompt: str, timeout: float, max_retries: int, deadline: float
) -> tuple[str, str]:
    """Call the Messages API with our own retry loop bounded by ``deadline``.

    Returns:
        ``(text, model)`` of the answer.

    Raises:
        _CallFailed: with the reason for the report.
    """
    import anthropic

    attempt = 0
    with anthropic.Anthropic(api_key=api_key, timeout=timeout, max_retries=0) as client:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                raise _CallFailed(f"Claude API call timed out after {timeout:g} s")
            retry_wait: float | None = None
            try:
                message = client.messages.create(
                    model=model,
                    max_tokens=MAX_OUTPUT_TOKENS,
                    system=SYSTEM_PROMPT,
                    messages=[{"role": "user", "content": prompt}],
                    timeout=remaining,
                )
            except anthropic.APITimeoutError:
                raise _CallFailed(f"Claude API call timed out after {timeout:g} s") from None
            except anthropic.APIStatusError as exc:
                code = exc.status_code
                if not (code in (408, 409, 429) or code >= 500) or attempt >= max_retries:
                    raise _CallFailed(_status_reason(exc, api_key)) from None
                retry_wait = _retry_after(exc)
                if retry_wait is None:
                    retry_wait = min(0.5 * 2**attempt, 8.0)
                failure = _status_reason(exc, api_key)
            except anthropic.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                failure = "Claude API call failed: connection error " + redact(
                    clean_text(f"({type(cause).__name__}: {cause})", max_len=160, newlines=False),
                    api_key,
                )
                if attempt >= max_retries:
                    raise _CallFailed(failure) from None
                retry_wait = min(0.5 * 2**attempt, 8.0)
            except ValueError as exc:
                # The SDK hands on json's error when the response body is not JSON.
                raise _CallFailed(
                    "Claude response could not be parsed: the API response body is not valid "
                    f"JSON ({redact(clean_text(exc, max_len=120, newlines=False), api_key)})"
                ) from None
            else:
                texts = [
                    getattr(block, "text", "")
                    for block in (message.content or [])
                    if getattr(block, "type", None) == "text"
                ]
                used = message.model if isinstance(message.model, str) and message.model else model
                return "".join(t for t in texts if isinstance(t, str)), used
            if time.monotonic() + retry_wait >= deadline - 0.05:
                raise _CallFailed(failure)
            time.sleep(retry_wait)
            attempt += 1


def _claude_sections(
    run_data: dict,
    facts: dict[str, Any],
    *,
    api_key: str,
    model: str,
    timeout: float,
    max_retries: int,
) -> tuple[dict[str, str], str]:
    """Ask Claude, within ``timeout`` seconds overall; raise ``_CallFailed`` otherwise."""
    prompt = build_prompt(run_data, facts)
    deadline = time.monotonic() + timeout
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["ok"] = _request(api_key, model, prompt, timeout, max_retries, deadline)
        except _CallFailed as exc:
            outcome["failed"] = exc.reason
        except Exception as exc:  # anything else the SDK or httpx may raise: report, never crash
            outcome["failed"] = "Claude API call failed: " + redact(
                clean_text(f"{type(exc).__name__}: {exc}", max_len=200, newlines=False), api_key
            )

    # A worker thread lets us give up at the deadline even if a connection trickles bytes and so
    # never trips the SDK's per-read timeout; the thread ends on its own timeout soon after.
    worker = threading.Thread(target=work, name="claude-analysis", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + 0.2)
    if worker.is_alive() or not outcome:
        raise _CallFailed(f"Claude API call timed out after {timeout:g} s")
    if "failed" in outcome:
        raise _CallFailed(outcome["failed"])
    text, used_model = outcome["ok"]
    try:
        sections = parse_response(text)
    except ResponseFormatError as exc:
        raise _CallFailed(f"Claude response could not be parsed: {exc}") from None
    return sections, clean_text(used_model, max_len=80, newlines=False)


def analyse(
    run_data: dict,
    *,
    llm: bool = True,
    model: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
) -> Analysis:
    """Write the analysis of a run: by Claude when possible, else offline from the numbers.

    Never raises for API problems and never takes longer than ``timeout`` seconds in total
    (all retries included, plus a fraction of a second).

    Args:
        run_data: the run folder as loaded by ``build.load_run``.
        llm: ask Claude (needs ``ANTHROPIC_API_KEY``); ``False`` gives the offline analysis.
        model: Claude model; default ``$DAMAGE_LIGHTNING_LLM_MODEL`` or :func:`default_model`.
        timeout: overall limit in seconds for the Claude call, retries included.
        max_retries: retries after the first attempt on HTTP 408/409/429/5xx and connection errors.
    """
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
    facts = summarise_run(run_data)

    def offline(reason: str) -> Analysis:
        return Analysis(offline_sections(facts), OFFLINE_SOURCE, reason, facts)

    if not llm:
        return offline(LLM_DISABLED_REASON)
    api_key = (os.environ.get(API_KEY_ENV) or "").strip()
    if not api_key:
        return offline(f"{API_KEY_ENV} is not set")
    try:
        import anthropic  # noqa: F401  (only to detect a missing SDK before starting a thread)
    except ImportError:
        return offline("the anthropic package is not installed")
    name = model or os.environ.get(MODEL_ENV) or default_model()
    try:
        sections, used = _claude_sections(
            run_data, facts, api_key=api_key, model=name, timeout=timeout, max_retries=max_retries
        )
    except _CallFailed as exc:
        return offline(redact(exc.reason, api_key))
    return Analysis(sections, f"Claude {used}", None, facts)

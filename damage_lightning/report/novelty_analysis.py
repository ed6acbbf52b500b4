"""The offline analysis of a novelty detector: what it was calibrated on, what it caught, advice.

Written from the model card's ``novelty`` section (in the facts of
:func:`damage_lightning.report.facts.summarise_run`); every sentence quotes its numbers.
"""

from __future__ import annotations

from typing import Any

from damage_lightning.card import NoveltyCard
from damage_lightning.evaluation.conformal import scores_needed
from damage_lightning.report.text import format_number, format_percent

_UNITS = {
    "block": "held-out blocks of healthy recordings",
    "cross_group": "healthy training recordings scored without their fold of groups",
}
#: Recording-level detection below this is named as a weakness.
WEAK_DETECTION = 0.95


def _detections(level: Any) -> str:
    rates = [(name, rate) for name, rate in level.detection.items() if rate is not None]
    return ", ".join(f"{name} {format_percent(rate)}" for name, rate in rates)


def novelty_sections(facts: dict[str, Any], dynamics: str) -> dict[str, str]:
    """The three analysis sections for a novelty detector.

    Args:
        facts: the run's facts, with ``novelty`` (the card's section as JSON).
        dynamics: the classifier analysis' training-dynamics text, used when the detector's
            embedding was trained over several epochs.
    """
    card = NoveltyCard.from_json(facts["novelty"], where="novelty")
    w, r = card.window_threshold, card.recording_threshold
    summary = [
        f"{facts.get('model_name') or 'The model'} is a novelty detector trained on "
        f"'{card.healthy_label}' recordings only; it scores each window by {card.detector}.",
        f"The thresholds were calibrated on {card.calibration_recordings} "
        f"{_UNITS.get(card.calibration_unit, 'held-out healthy recordings')} "
        f"({card.calibration_windows} windows): window threshold {format_number(w.threshold)} "
        f"(false-alarm bound {format_percent(w.bound)} for a budget of "
        f"{format_percent(w.false_alarm_rate)}), recording threshold "
        f"{format_number(r.threshold)} (bound {format_percent(r.bound)}).",
    ]
    advice = []
    test = card.test
    if test is not None:
        rec, win = test.recording, test.window
        detected = _detections(rec) or "no damaged recordings"
        summary.append(
            f"On the test split, {rec.false_alarms} of {rec.healthy} held-out healthy recordings "
            f"({format_percent(rec.false_alarm_rate)}) and {format_percent(win.false_alarm_rate)} "
            f"of their windows alarm; recording-level detection: {detected}; recording-level "
            f"ROC AUC {format_number(rec.roc_auc)}."
        )
        ref = card.reference
        if ref is not None:
            summary.append(
                f"The reference ({ref.name}) detects at the same budgets: "
                f"{_detections(ref.recording) or 'nothing to detect'} of the recordings."
            )
            better = [
                n
                for n, v in ref.window.detection.items()
                if v is not None and (win.detection.get(n) or 0.0) < v
            ]
            if better:
                advice.append(
                    f"- The reference detects more windows of {', '.join(better)}: its band "
                    "energies see that damage better than the detector's embedding."
                )
        weak = [n for n, v in rec.detection.items() if v is not None and v < WEAK_DETECTION]
        if weak:
            advice.append(
                f"- {', '.join(weak)}: fewer than {format_percent(WEAK_DETECTION)} of the "
                "recordings alarm; damage this small is within what the healthy variation "
                "(temperature, mass, excitation) already covers, or needs longer recordings."
            )
        if rec.false_alarm_rate is not None and rec.false_alarm_rate > 2 * r.false_alarm_rate:
            advice.append(
                f"- Healthy test recordings alarm at {format_percent(rec.false_alarm_rate)}, "
                f"above the {format_percent(r.false_alarm_rate)} budget: the test holds conditions "
                "that training and calibration lack; add healthy recordings of those conditions."
            )
    for name, t in (("window", w), ("recording", r)):
        if not t.met:
            need = scores_needed(t.false_alarm_rate)
            advice.append(
                f"- The {name} threshold cannot reach its {format_percent(t.false_alarm_rate)} "
                f"budget with {t.n} calibration scores (at least {need} needed): hold out more "
                "healthy data for calibration, or accept the bound."
            )
    if not advice:
        advice.append(
            "- No change needed at these budgets; re-calibrate when the monitored structure's "
            "healthy conditions widen (a new season, a new load case)."
        )
    epochs = facts.get("epochs_run") or 0
    if epochs > 1:
        training = dynamics
    else:
        training = (
            "The Gaussian of the healthy embeddings is fitted in one pass over the training "
            "windows: there is no loss curve to judge."
        )
    return {
        "Executive summary": " ".join(summary),
        "Training dynamics": training,
        "Recommendations": "\n".join(advice),
    }

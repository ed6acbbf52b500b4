"""Report sections of a novelty detector: the headline, thresholds, test results, figures.

Used instead of the classifier's test results when the model card has a ``novelty`` section:
how the threshold was calibrated and what that guarantees, false alarms on held-out healthy
recordings and detection per damage class at window and recording level, beside the reference.
"""

from __future__ import annotations

from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, LongTable, PageBreak, Paragraph

from damage_lightning.card import DetectorResults, NoveltyCard, ThresholdRecord
from damage_lightning.evaluation.conformal import scores_needed
from damage_lightning.report.figures import FigureFile
from damage_lightning.report.layout import (
    FRAME_W,
    NAME_MAX,
    WARN_BG,
    ZEBRA,
    Styles,
    figure_flowables,
    kv_table,
    table,
)
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import HEADINGS
from damage_lightning.report.sections.overview import headline_cells
from damage_lightning.report.text import clean_text, format_number, format_percent


def _rate(value: float | None, count: int | None = None, total: int | None = None) -> str:
    text = format_percent(value)
    return text if count is None or total is None else f"{text} ({count}/{total})"


def headline(novelty: NoveltyCard, st: Styles) -> LongTable | Paragraph:
    """The title page's three numbers: false alarms per recording and window, recording AUC."""
    test = novelty.test
    if test is None:
        return Paragraph("The novelty detector was not tested.", st.body)
    rec, win = test.recording, test.window
    cells = [
        (_rate(rec.false_alarm_rate), f"false alarms, healthy test recordings ({rec.healthy})"),
        (_rate(win.false_alarm_rate), "false alarms, healthy test windows"),
        (format_number(rec.roc_auc), "recording-level ROC AUC"),
    ]
    return headline_cells(cells, st)


def _threshold_text(t: ThresholdRecord) -> str:
    text = (
        f"{format_number(t.threshold, 6)}: rank {t.rank:,} of {t.n:,} sorted calibration "
        f"scores; a new healthy score exceeds it with probability {format_percent(t.bound)} "
        f"(budget {format_percent(t.false_alarm_rate)})"
    )
    if not t.met:
        text += (
            f"; too few calibration scores for the budget (at least "
            f"{scores_needed(t.false_alarm_rate):,} needed)"
        )
    return text


def calibration(novelty: NoveltyCard, st: Styles) -> list[Any]:
    """How the thresholds were set and the false-alarm bound they give."""
    unit = {
        "block": "held-out blocks of healthy recordings (fewer than three recordings to hold out "
        "whole)",
        "cross_group": "healthy training recordings, each scored by a Gaussian fitted without "
        "its fold of groups (cross-conformal: the bound is nominal, at most twice the budget in "
        "the worst case)",
    }.get(novelty.calibration_unit, "healthy recordings (or groups) held out from training")
    rows = [
        ("detector", clean_text(novelty.detector)),
        ("trained on", f"'{clean_text(novelty.healthy_label, max_len=NAME_MAX)}' recordings only"),
        (
            "calibrated on",
            f"{novelty.calibration_recordings:,} {unit}, {novelty.calibration_windows:,} windows",
        ),
        ("window threshold", _threshold_text(novelty.window_threshold)),
        ("recording threshold", _threshold_text(novelty.recording_threshold)),
        ("decision rule", clean_text(novelty.decision_rule)),
    ]
    return [
        Paragraph("Threshold and calibration", st.h2),
        kv_table(rows, st, 0.24),
        Paragraph(
            "The bounds assume the calibration and new healthy scores are exchangeable. Windows "
            "of one recording share its conditions, so the observed window-level rate scatters "
            "around its budget more than the number of windows suggests; the recording-level "
            "bound rests on recordings alone.",
            st.note,
        ),
    ]


def _results_table(test: DetectorResults, ref: DetectorResults | None, st: Styles) -> list[Any]:
    header = ["class", "windows", "detector", "reference", "recs", "detector", "reference"]
    win, rec = test.window, test.recording
    healthy = next(iter(win.counts))

    def pick(result: DetectorResults | None, level: str, name: str) -> str:
        if result is None:
            return "–"
        lv = getattr(result, level)
        if name == healthy:
            return _rate(lv.false_alarm_rate, lv.false_alarms, lv.healthy) + " FA"
        return format_percent(lv.detection.get(name))

    rows, shade = [], {}
    for i, name in enumerate(win.counts):
        rows.append(
            [
                clean_text(name, max_len=NAME_MAX),
                f"{win.counts[name]:,}",
                pick(test, "window", name),
                pick(ref, "window", name),
                f"{rec.counts.get(name, 0):,}",
                pick(test, "recording", name),
                pick(ref, "recording", name),
            ]
        )
        if name == healthy:
            shade[i] = ZEBRA
        elif (rec.detection.get(name) or 0.0) < 0.5:
            shade[i] = WARN_BG
    rows.append(
        [
            "ROC AUC",
            "",
            format_number(win.roc_auc),
            format_number(ref.window.roc_auc) if ref else "–",
            "",
            format_number(rec.roc_auc),
            format_number(ref.recording.roc_auc) if ref else "–",
        ]
    )
    widths = [FRAME_W - 6 * 62, 48, 72, 72, 40, 72, 72]
    return [
        table(header, rows, widths, st, numeric_cols={1, 2, 3, 4, 5, 6}, row_backgrounds=shade),
        Paragraph(
            "Healthy row: observed false alarms (FA) on held-out healthy windows and recordings "
            "(recs); "
            "other rows: share of the class's windows and recordings that alarm at the "
            "calibrated thresholds. Shaded: under half of its recordings detected."
            + (f" Reference: {clean_text(ref.name)}." if ref else ""),
            st.note,
        ),
    ]


def evaluation(record: RunRecord, figures: list[FigureFile], st: Styles) -> list[Any]:
    """Section 6 for a novelty detector: calibration, results per class, the figures."""
    novelty = record.card.novelty if record.card else None
    story: list[Any] = [PageBreak(), Paragraph(HEADINGS[8], st.h1)]
    if novelty is None:
        return [*story, Paragraph("No novelty results in model_info.json.", st.note)]
    story += calibration(novelty, st)
    story += [CondPageBreak(6 * cm), Paragraph("False alarms and detection", st.h2)]
    if novelty.test is None:
        story.append(Paragraph("The detector was not tested.", st.note))
    else:
        story += _results_table(novelty.test, novelty.reference, st)
    for fig in figures:
        if fig.kind.startswith("novelty"):
            story += figure_flowables(fig, st)
    return story

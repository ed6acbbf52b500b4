"""Report sections on a classifier's verdicts: per recording, calibration, unknown.

Subsections of "6 Test results", read from the model card's ``test_metrics.recording`` and
``test_metrics.calibration``: window, recording and group figures side by side; the test
recordings worst first; the reliability diagram with ECE and Brier score before and after
temperature scaling; coverage against accuracy for the abstain floor.
"""

from __future__ import annotations

from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, Paragraph, Spacer

from damage_lightning.card import CalibrationCard, EvaluationMetrics, LevelMetrics, RecordingLevel
from damage_lightning.report.figures import FigureFile
from damage_lightning.report.layout import (
    FRAME_W,
    NAME_MAX,
    WARN_BG,
    Styles,
    esc,
    figure_flowables,
    table,
)
from damage_lightning.report.text import clean_text, format_number, format_percent

RECORDINGS_HEADING = "6.1 Recording-level verdicts"
CALIBRATION_HEADING = "6.2 Calibration"
UNKNOWN_HEADING = "6.3 Unknown: coverage against accuracy"
#: Rows of the per-recording table (worst first); the rest are counted, not listed.
TABLE_ROWS = 40

_AGGREGATION_TEXT = {
    "mean_log_prob": "normalised geometric mean of the window probabilities (mean log-probability)",
    "mean_prob": "mean of the window probabilities",
    "vote": "majority of the windows' top classes",
}


def _pct(value: float | None) -> str:
    return format_percent(value) if value is not None else "–"


def _level_rows(test: EvaluationMetrics, recording: RecordingLevel) -> list[list[str]]:
    rows = [["windows", "–", _pct(test.accuracy), format_number(test.f1_macro), "–", "–"]]
    levels: list[tuple[str, LevelMetrics | None]] = [
        ("recordings", recording.recording),
        ("groups", recording.group),
    ]
    for name, level in levels:
        if level is None:
            continue
        rows.append(
            [
                name,
                f"{level.n:,}",
                _pct(level.accuracy),
                format_number(level.f1_macro),
                _pct(level.coverage) if level.abstain is not None else "–",
                _pct(level.accuracy_decided) if level.abstain is not None else "–",
            ]
        )
    return rows


def recordings_section(test: EvaluationMetrics, st: Styles) -> list[Any]:
    """6.1: window, recording and group metrics; the per-recording table, worst first."""
    recording = test.recording
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(RECORDINGS_HEADING, st.h2)]
    if recording is None:
        return [
            *story,
            Paragraph("model_info.json has no recording-level test metrics.", st.note),
        ]
    rule = _AGGREGATION_TEXT.get(recording.aggregation, recording.aggregation)
    floor = recording.recording.abstain
    story.append(
        Paragraph(
            f"A recording is decided from all its test windows by the {esc(rule)} "
            f"(<i>{esc(recording.aggregation)}</i>), the rule the exported model's metadata "
            "carries. "
            + (
                f"Recordings whose confidence is below {floor:g} are <b>unknown</b>."
                if floor is not None
                else "No abstain floor is set: every recording gets a class."
            ),
            st.body,
        )
    )
    story.append(
        table(
            ["level", "n", "accuracy", "macro F1", "coverage", "accuracy of decided"],
            _level_rows(test, recording),
            [FRAME_W - 5 * 72, 72, 72, 72, 72, 72],
            st,
            numeric_cols={1, 2, 3, 4, 5},
        )
    )
    story.append(Spacer(1, 0.3 * cm))
    rows, shaded = [], {}
    for i, r in enumerate(recording.table[:TABLE_ROWS]):
        rows.append(
            [
                clean_text(r.name, max_len=NAME_MAX),
                clean_text(r.label, max_len=NAME_MAX),
                clean_text(r.decision, max_len=NAME_MAX),
                f"{r.agreement:.2f}",
                f"{r.confidence:.3f}",
                f"{r.n_windows:,}",
            ]
        )
        if not r.correct or r.decision == "unknown":
            shaded[i + 1] = WARN_BG
    story.append(
        Paragraph(
            f"Test recordings, worst first (wrong, then least confident): "
            f"{len(recording.table)} recordings"
            + (f", the first {TABLE_ROWS} listed." if len(recording.table) > TABLE_ROWS else "."),
            st.note,
        )
    )
    story.append(
        table(
            ["recording", "true class", "decision", "agreement", "confidence", "windows"],
            rows,
            _table_widths(),
            st,
            numeric_cols={3, 4, 5},
            row_backgrounds=shaded,
        )
    )
    return story


def _table_widths() -> list[float]:
    # The path takes the most room; the two class columns share what the numbers leave.
    narrow = 66.0
    name = (FRAME_W - 3 * narrow) / 2.2
    label = (FRAME_W - 3 * narrow - name) / 2
    return [name, label, label, narrow, narrow, narrow]


def calibration_section(
    calibration: CalibrationCard | None, figures: list[FigureFile], st: Styles
) -> list[Any]:
    """6.2: the temperature, ECE/Brier/NLL before and after, the reliability diagram."""
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(CALIBRATION_HEADING, st.h2)]
    if calibration is None:
        return [*story, Paragraph("model_info.json has no calibration figures.", st.note)]
    fit = calibration.fit
    where = (
        f"fitted on {fit.val_windows:,} validation windows (validation NLL "
        f"{fit.val_nll_before:.4f} → {fit.val_nll_after:.4f})"
        if fit is not None
        else "as stored in the checkpoint"
    )
    story.append(
        Paragraph(
            f"Temperature scaling divides the logits by T = {calibration.temperature:.3f}, "
            f"{esc(where)}. It changes no decision, only how sure the model says it is; the "
            "exported ONNX and TorchScript models apply it inside. Figures on the "
            f"{calibration.n_windows:,} test windows:",
            st.body,
        )
    )
    before, after = calibration.before, calibration.after
    rows = [
        ["expected calibration error (15 bins)", f"{before.ece:.4f}", f"{after.ece:.4f}"],
        ["Brier score", f"{before.brier:.4f}", f"{after.brier:.4f}"],
        ["negative log-likelihood", f"{before.nll:.4f}", f"{after.nll:.4f}"],
    ]
    story.append(
        table(
            ["test windows", "before (T = 1)", "after"],
            rows,
            [FRAME_W - 2 * 100, 100, 100],
            st,
            numeric_cols={1, 2},
        )
    )
    for fig in figures:
        if fig.kind == "reliability":
            story += figure_flowables(fig, st)
    return story


def unknown_section(
    recording: RecordingLevel | None, figures: list[FigureFile], st: Styles
) -> list[Any]:
    """6.3: coverage against accuracy of the test recordings."""
    story: list[Any] = [CondPageBreak(7 * cm), Paragraph(UNKNOWN_HEADING, st.h2)]
    figs = [f for f in figures if f.kind == "coverage"]
    if recording is None or not figs:
        return [*story, Paragraph("Too few test recordings for a coverage curve.", st.note)]
    level = recording.recording
    if level.abstain is not None:
        text = (
            f"With the abstain floor {level.abstain:g}, {level.unknown} of {level.n} test "
            f"recordings come back unknown (coverage {_pct(level.coverage)}); the decided ones "
            f"are {_pct(level.accuracy_decided)} right."
        )
    else:
        text = (
            "No abstain floor is set (--model.init_args.abstain). The curve shows what a floor "
            "would trade: each point leaves the recordings below one confidence unknown."
        )
    story.append(Paragraph(esc(text), st.body))
    for fig in figs:
        story += figure_flowables(fig, st)
    return story


def verdict_sections(
    test: EvaluationMetrics | None, figures: list[FigureFile], st: Styles
) -> list[Any]:
    """Sections 6.1 to 6.3 (nothing when the run was not tested)."""
    if test is None or (test.recording is None and test.calibration is None):
        return []
    return [
        *recordings_section(test, st),
        *calibration_section(test.calibration, figures, st),
        *unknown_section(test.recording, figures, st),
    ]

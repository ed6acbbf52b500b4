"""The report's first pages: the title page with the headline numbers, and the written analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import LongTable, PageBreak, Paragraph, Spacer, TableStyle

from damage_lightning.report.analysis import Analysis
from damage_lightning.report.facts import class_names
from damage_lightning.report.layout import (
    FRAME_W,
    GRID,
    ZEBRA,
    Styles,
    esc,
    kv_table,
    text_flowables,
)
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import HEADINGS
from damage_lightning.report.text import (
    SECTIONS,
    as_number,
    clean_text,
    format_number,
    format_percent,
)


def source_line(analysis: Analysis) -> str:
    """One line naming who wrote the analysis and, on fallback, why Claude was not used."""
    if analysis.fallback_reason:
        return (
            f"Analysis by: {analysis.source} (computed from the run's numbers). "
            f"Claude not used: {analysis.fallback_reason}"
        )
    return f"Analysis by: {analysis.source}."


def _run_rows(record: RunRecord, facts: dict[str, Any]) -> list[tuple[str, Any]]:
    card = record.card
    model_text = (card.model.name if card else None) or "not recorded"
    params = as_number(card.model.parameters) if card else None
    if params is not None:
        model_text = f"{model_text} ({format_number(int(params))} parameters)"
    dataset = Path(card.data.data_dir).name if card and card.data.data_dir else "not recorded"
    n_rec = as_number(card.data.n_recordings) if card else None
    if n_rec is not None:
        dataset += f", {int(n_rec):,} recordings"
    classes = class_names(card)
    if classes:
        dataset += f", {len(classes)} classes"
    created = clean_text((card.created if card else None) or "not recorded", newlines=False)
    created = created.replace("T", " ")[:19] + (" UTC" if created.endswith(("+00:00", "Z")) else "")
    epochs_text = "no epochs recorded"
    if facts.get("epochs_run"):
        epochs_text = f"{facts['epochs_run']} epochs, best epoch {facts.get('best_epoch')}"
        if facts.get("stopped_early"):
            epochs_text += f", early stopping at epoch {facts.get('last_epoch')}"
    rows = [
        ("Model", model_text),
        ("Dataset", dataset),
        ("Split", clean_text(facts.get("split_strategy") or "not recorded")),
        ("Training", epochs_text),
        ("Date", created),
    ]
    duration = as_number(card.duration_s) if card else None
    if duration is not None:
        rows.append(("Duration", f"{duration / 60:.1f} min ({duration:.0f} s)"))
    return rows


def _headline(test: dict[str, Any], st: Styles) -> LongTable:
    return headline_cells(
        [
            (format_percent(test.get("accuracy")), "test accuracy"),
            (format_number(test.get("f1_macro")), "test macro F1"),
            (format_number(test.get("loss")), "test loss"),
        ],
        st,
    )


def _verdict_headline(record: RunRecord, st: Styles) -> LongTable | None:
    # The decision an engineer acts on is per recording; calibration says how far to trust it.
    test = record.card.test_metrics if record.card else None
    if test is None or test.recording is None:
        return None
    level = test.recording.recording
    calibration = test.calibration
    return headline_cells(
        [
            (format_percent(level.accuracy), f"accuracy over {level.n} test recordings"),
            (format_number(level.f1_macro), "recording macro F1"),
            (
                f"{calibration.after.ece:.3f}" if calibration else "–",
                "calibration error (ECE)",
            ),
        ],
        st,
    )


def headline_cells(cells: list[tuple[str, str]], st: Styles) -> LongTable:
    """The title page's three boxed numbers with their labels.

    Args:
        cells: three ``(value, label)`` pairs.
        st: the report styles.
    """
    table = LongTable(
        [
            [Paragraph(esc(v), st.metric_value) for v, _ in cells],
            [Paragraph(esc(lbl), st.metric_label) for _, lbl in cells],
        ],
        colWidths=[FRAME_W / 3] * 3,
    )
    table.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (0, -1), 0.8, GRID),
                ("BOX", (1, 0), (1, -1), 0.8, GRID),
                ("BOX", (2, 0), (2, -1), 0.8, GRID),
                ("BACKGROUND", (0, 0), (-1, -1), ZEBRA),
                ("TOPPADDING", (0, 0), (-1, 0), 10),
                ("BOTTOMPADDING", (0, -1), (-1, -1), 10),
            ]
        )
    )
    return table


def title_page(record: RunRecord, analysis: Analysis, st: Styles) -> list[Any]:
    """Run name, model, data, training and date; the test numbers; at a glance; what is missing."""
    facts = analysis.facts
    story: list[Any] = [Spacer(1, 1.2 * cm), Paragraph("Training report", st.title)]
    story.append(Paragraph(esc(record.run_name, 120), st.subtitle))
    story += [kv_table(_run_rows(record, facts), st, 0.22), Spacer(1, 0.7 * cm)]
    test = facts.get("test")
    if record.card and record.card.novelty:
        from damage_lightning.report.sections.novelty import headline

        story.append(headline(record.card.novelty, st))
    elif test:
        story.append(_headline(test, st))
        verdicts = _verdict_headline(record, st)
        if verdicts is not None:
            story += [Spacer(1, 0.25 * cm), verdicts]
    else:
        story.append(
            Paragraph(
                "No test metrics: model_info.json has no test_metrics (the run was not tested).",
                st.body,
            )
        )
    story += [Spacer(1, 0.6 * cm), Paragraph("At a glance", st.h2)]
    story += [Paragraph(esc(b), st.bullet, bulletText="•") for b in glance(facts)]
    story += [Spacer(1, 0.3 * cm), Paragraph(esc(source_line(analysis)), st.note)]
    if record.missing:
        story.append(
            Paragraph(
                "<b>Not available in the run folder:</b> "
                + "; ".join(esc(m, 200) for m in record.missing),
                st.note,
            )
        )
    story.append(PageBreak())
    return story


def glance(facts: dict[str, Any]) -> list[str]:
    """The title page's bullet points: best epoch, weak classes, top confusion, leakage."""
    out = []
    if facts.get("epochs_run"):
        line = f"Best epoch {facts.get('best_epoch')} (validation loss "
        line += f"{format_number(facts.get('best_val_loss'))}) of {facts['epochs_run']} epochs run"
        if facts.get("stopped_early"):
            line += f"; early stopping at epoch {facts.get('last_epoch')}"
        if facts.get("lr_reductions"):
            line += f"; {len(facts['lr_reductions'])} learning-rate reduction(s)"
        out.append(line + ".")
    else:
        out.append("The training history is empty.")
    weak = facts.get("weak_recall") or []
    if weak:
        out.append(
            "Classes with recall below 0.9: "
            + ", ".join(f"{w['class']} ({format_number(w['recall'], 3)})" for w in weak)
            + "."
        )
    elif facts.get("per_class"):
        out.append("Every class has test recall of at least 0.9.")
    if facts.get("confused_pairs"):
        p = facts["confused_pairs"][0]
        out.append(
            f"Most confused: {p['true']} predicted as {p['predicted']} ({p['count']} test windows)."
        )
    leak = facts.get("leakage")
    if leak:
        out.append(
            "Leakage check passed: no recording or sample range is in two splits."
            if leak.get("passed")
            else f"Leakage check FAILED: {leak.get('overlapping_ranges')} overlapping "
            "ranges between splits."
        )
    if facts.get("overfitting"):
        out.append(
            f"Overfitting after epoch {facts['val_loss_min']['epoch']}: validation loss "
            f"rose {format_percent(facts['val_loss_rise_after_min'])} above its minimum."
        )
    return out


def analysis_section(analysis: Analysis, st: Styles) -> list[Any]:
    """Section 1: who wrote the analysis, then its three parts."""
    story: list[Any] = [
        Paragraph(HEADINGS[0], st.h1),
        Paragraph(esc(source_line(analysis)), st.note),
    ]
    for i, name in enumerate(SECTIONS):
        story.append(Paragraph(HEADINGS[1 + i], st.h2))
        story += text_flowables(analysis.sections.get(name, ""), st)
    return story

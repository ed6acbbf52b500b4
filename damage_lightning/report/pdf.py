"""The training report PDF: the sections in order, page header and footer (:func:`render_pdf`)."""

from __future__ import annotations

import io
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import cm
from reportlab.platypus import SimpleDocTemplate

from damage_lightning.report.analysis import Analysis
from damage_lightning.report.figures import FigureFile
from damage_lightning.report.layout import GRID, MARGIN_X, MARGIN_Y, PAGE_H, PAGE_W, Styles
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import (
    attribution,
    inputs,
    novelty,
    overview,
    results,
    sensors,
    verdicts,
)
from damage_lightning.report.text import clean_text


def render_pdf(record: RunRecord, analysis: Analysis, figures: list[FigureFile]) -> bytes:
    """Lay out the whole report and return the PDF bytes (the caller writes them atomically).

    Args:
        record: the run folder as loaded by ``RunRecord.load``.
        analysis: the written analysis (Claude or offline).
        figures: the PNG figures from ``figures.make_figures``.
    """
    st = Styles()
    run_name = clean_text(record.run_name or "run", max_len=90, newlines=False)

    def decorate(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(st.fonts["regular"], 8)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(MARGIN_X, PAGE_H - 1.3 * cm, f"Training report · {run_name}")
        canvas.drawRightString(PAGE_W - MARGIN_X, 1.2 * cm, f"page {doc.page}")
        canvas.setStrokeColor(GRID)
        canvas.line(MARGIN_X, PAGE_H - 1.45 * cm, PAGE_W - MARGIN_X, PAGE_H - 1.45 * cm)
        canvas.restoreState()

    story: list[Any] = [
        *overview.title_page(record, analysis, st),
        *overview.analysis_section(analysis, st),
        *inputs.model_and_data(record, st),
        *inputs.splits(record, st),
        *inputs.hyperparameters(record, st),
        *results.curves(figures, st),
        *(
            novelty.evaluation(record, figures, st)
            if record.card and record.card.novelty
            else [
                *results.evaluation(record, figures, st),
                *verdicts.verdict_sections(
                    record.card.test_metrics if record.card else None, figures, st
                ),
            ]
        ),
        *attribution.explanations(record, figures, st),
        *results.history(record, analysis, st),
        *results.log(record, st),
        *results.reproducibility(record, st),
        *sensors.sensor_health(record, st),
    ]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN_X,
        rightMargin=MARGIN_X,
        topMargin=MARGIN_Y,
        bottomMargin=MARGIN_Y,
        title=f"Training report {run_name}",
        author="damage_lightning",
        subject=f"Training report: {analysis.source}",
    )
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buf.getvalue()

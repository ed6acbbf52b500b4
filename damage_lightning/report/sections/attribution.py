"""Report section: which frequencies of which sensors drive each class (attribution.json)."""

from __future__ import annotations

from typing import Any

from reportlab.lib.units import cm
from reportlab.platypus import CondPageBreak, PageBreak, Paragraph

from damage_lightning.evaluation.attribution import reading
from damage_lightning.report.figures import FigureFile
from damage_lightning.report.layout import FRAME_W, NAME_MAX, Styles, esc, figure_flowables, table
from damage_lightning.report.record import RunRecord
from damage_lightning.report.sections import heading
from damage_lightning.report.text import clean_text


def explanations(record: RunRecord, figures: list[FigureFile], st: Styles) -> list[Any]:
    """Section 6.1: how the attribution was computed, one line per class, the heatmaps."""
    found = [f for f in figures if f.kind == "attribution"]
    story: list[Any] = [
        PageBreak() if found else CondPageBreak(4 * cm),
        Paragraph(heading("Explanations in hertz"), st.h2),
    ]
    result = record.attribution
    if result is None:
        why = (
            "A novelty detector has no classes to explain: no attribution."
            if record.card and record.card.novelty
            else "No attribution.json in the run folder (fit with --attribution.enabled false, "
            "or a run made before attribution existed)."
        )
        return [*story, Paragraph(why, st.note)]
    method = (
        f"integrated gradients ({result.steps} steps)"
        if result.method == "integrated_gradients"
        else f"band occlusion ({result.band_hz:g} Hz bands)"
    )
    story.append(
        Paragraph(
            esc(
                f"For each class, {method} of the log-odds of the true class on up to "
                f"{result.windows_per_class} {result.split} windows of that class, against "
                f"{result.baseline}; {result.wall_time_s:.1f} s. The evidence of a band is "
                "what replacing it by the baseline takes away: where the class differs from "
                "the healthy structure. Top bands per class (share of the class's evidence):"
            ),
            st.body,
        )
    )
    rows = []
    for c in result.classes:
        line = reading(c.name, result.top_bands(c.name)).split(": ", 1)[1]
        rows.append([clean_text(c.name, max_len=NAME_MAX), clean_text(line), str(c.windows)])
    story.append(table(["class", "top bands", "windows"], rows, [140, FRAME_W - 190, 50], st))
    for fig in found:
        story += figure_flowables(fig, st)
    return story

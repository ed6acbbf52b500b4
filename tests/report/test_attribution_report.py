"""The report's explanations in hertz: one heatmap per class and one reading line per class."""

from __future__ import annotations

import re

from make_run import CLASSES, make_run, write_attribution
from pypdf import PdfReader

from damage_lightning.card import ModelCard
from damage_lightning.report.build import generate_report
from damage_lightning.report.figures import ATTRIBUTION_NAME
from damage_lightning.report.sections import HEADINGS

HEADING = "6.4 Explanations in hertz"


def text_of(pdf) -> str:
    return re.sub(r"\s+", " ", "\n".join(p.extract_text() or "" for p in PdfReader(pdf).pages))


def test_the_section_reads_the_top_bands_of_every_class(tmp_path) -> None:
    run = make_run(tmp_path)
    write_attribution(run)
    result = generate_report(run, llm=False)
    text = text_of(result.pdf_path)
    assert HEADING in HEADINGS
    section = text[text.index(HEADING) : text.index(HEADINGS[HEADINGS.index(HEADING) + 1])]
    assert "integrated gradients (16 steps)" in section
    for k, name in enumerate(CLASSES):
        low = (60 + 40 * k) // 10 * 10  # the fake evidence peaks at 60 + 40 k Hz on one floor
        assert name in section
        assert f"floor{k % 3 + 1} {low}-{low + 10} Hz" in section
    # The heatmap figure is in the PDF and recorded in the card's report entry.
    assert (run / "report" / ATTRIBUTION_NAME).is_file()
    card = ModelCard.read(run / "model_info.json")
    assert f"report/{ATTRIBUTION_NAME}" in card.report.figures
    assert "share of the class's positive evidence in bands of 10 Hz" in section


def test_without_attribution_the_section_says_why(tmp_path) -> None:
    run = make_run(tmp_path)
    text = text_of(generate_report(run, llm=False).pdf_path)
    assert HEADING in text
    assert "No attribution.json in the run folder" in text
    assert not (run / "report" / ATTRIBUTION_NAME).exists()

"""Build a run's training report: read the run folder, write the analysis, figures and PDF.

``generate_report(run_dir)`` is what the end of ``fit``, the ``report`` subcommand and users
call. It reads only the run folder's files (no torch), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from damage_lightning.artifacts import atomic_write_bytes, atomic_write_text
from damage_lightning.card import MODEL_CARD_FILE, ReportEntry
from damage_lightning.report.analysis import Analysis, analyse
from damage_lightning.report.options import ReportOptions
from damage_lightning.report.record import RunRecord
from damage_lightning.report.text import SECTIONS, clean_text

REPORT_DIR = "report"
PDF_NAME = "training_report.pdf"
ANALYSIS_NAME = "analysis.md"


@dataclass
class ReportResult:
    """What ``generate_report`` wrote.

    Args:
        pdf_path: ``<run>/report/training_report.pdf``.
        figures: the PNG figures embedded in the PDF, in page order.
        analysis_source: ``"Claude <model>"`` or ``"offline analysis"``.
        fallback_reason: why Claude was not used (one line), ``None`` when it was.
        analysis_path: ``<run>/report/analysis.md``.
    """

    pdf_path: Path
    figures: list[Path]
    analysis_source: str
    fallback_reason: str | None
    analysis_path: Path


def analysis_markdown(run_name: str, analysis: Analysis) -> str:
    """The analysis as Markdown: a title, who wrote it, and the three sections."""
    lines = [f"# Training analysis: {clean_text(run_name, newlines=False)}", ""]
    lines.append(f"Analysis written by: {analysis.source}")
    if analysis.fallback_reason:
        lines.append(f"Claude not used: {analysis.fallback_reason}")
    for name in SECTIONS:
        lines += ["", f"## {name}", "", clean_text(analysis.sections.get(name, "")).strip()]
    return "\n".join(lines) + "\n"


def generate_report(
    run_dir: str | os.PathLike,
    *,
    llm: bool = ReportOptions.llm,
    llm_model: str | None = ReportOptions.model,
    timeout: float = ReportOptions.timeout,
    max_retries: int = ReportOptions.max_retries,
) -> ReportResult:
    """Write ``report/training_report.pdf``, its PNG figures and ``report/analysis.md``.

    Also records the report in the model card (``report`` of model_info.json) when the run has
    a readable one. Every file is written atomically.

    Args:
        run_dir: the run folder.
        llm: let Claude write the analysis when ``ANTHROPIC_API_KEY`` is set.
        llm_model: Claude model (default: ``$DAMAGE_LIGHTNING_LLM_MODEL`` or a current Sonnet).
        timeout: overall seconds allowed for the Claude call, retries included.
        max_retries: retries of the Claude call on rate limits, server and connection errors.

    Raises:
        DataValidationError: ``run_dir`` is not a run folder.
    """
    from damage_lightning.report import figures as figs
    from damage_lightning.report.pdf import render_pdf

    run_dir = Path(run_dir)
    record = RunRecord.load(run_dir)
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = analyse(record, llm=llm, model=llm_model, timeout=timeout, max_retries=max_retries)
    figures = figs.make_figures(record, out_dir)
    for name in figs.FIGURE_NAMES:
        stale = out_dir / name
        if stale.exists() and stale not in {f.path for f in figures}:
            stale.unlink()
    pdf_path = atomic_write_bytes(out_dir / PDF_NAME, render_pdf(record, analysis, figures))
    analysis_path = atomic_write_text(
        out_dir / ANALYSIS_NAME, analysis_markdown(record.run_name, analysis)
    )
    if record.card is not None:
        # A card that could not be read is left as it is (the report names it as a gap).
        record.card.report = ReportEntry(
            path=f"{REPORT_DIR}/{PDF_NAME}",
            analysis_source=analysis.source,
            fallback_reason=analysis.fallback_reason,
            figures=[f"{REPORT_DIR}/{f.path.name}" for f in figures],
        )
        record.card.write(run_dir / MODEL_CARD_FILE)
    return ReportResult(
        pdf_path=pdf_path,
        figures=[f.path for f in figures],
        analysis_source=analysis.source,
        fallback_reason=analysis.fallback_reason,
        analysis_path=analysis_path,
    )

"""Build a run's training report: read the run folder, write the analysis, figures and PDF.

``generate_report(run_dir)`` is what the artifact callback, the ``report`` subcommand and users
call. It reads only the run folder's files (no torch), so a report can be rebuilt at any time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from damage_lightning.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from damage_lightning.errors import DataValidationError, Problem
from damage_lightning.report.analysis import SECTIONS, Analysis, analyse, clean_text

REPORT_DIR = "report"
PDF_NAME = "training_report.pdf"
ANALYSIS_NAME = "analysis.md"
LOG_TAIL_LINES = 60
# Only the end of a huge log is read; the report shows its last lines anyway.
LOG_READ_BYTES = 2 << 20


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


def _read_json(path: Path, missing: list[str]) -> dict[str, Any]:
    if not path.is_file():
        missing.append(f"{path.name}: not found")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        missing.append(f"{path.name}: could not be read ({clean_text(exc, max_len=120)})")
        return {}
    if not isinstance(obj, dict):
        missing.append(f"{path.name}: not a JSON object")
        return {}
    return obj


def _read_config(path: Path, missing: list[str]) -> dict[str, Any]:
    if not path.is_file():
        missing.append(f"{path.name}: not found")
        return {}
    import yaml

    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = clean_text(str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        missing.append(f"{path.name}: could not be read ({clean_text(reason, max_len=120)})")
        return {}
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        missing.append(f"{path.name}: not a YAML mapping")
        return {}
    return obj


def read_log_tail(path: Path, n_lines: int = LOG_TAIL_LINES) -> tuple[list[str], int | None]:
    """The last ``n_lines`` lines of a log as a terminal would show them.

    Progress bars rewrite their line with carriage returns; only the last state of such a line
    is kept. Returns the lines and the number of lines read (``None`` when the file is missing).
    """
    if not path.is_file():
        return [], None
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size > LOG_READ_BYTES:
            fh.seek(size - LOG_READ_BYTES)
        raw = fh.read()
    text = raw.decode("utf-8", errors="replace")
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            parts = [p for p in line.split("\r") if p.strip()]
            line = parts[-1] if parts else ""
        lines.append(line)
    if lines and lines[-1] == "":
        lines.pop()
    if size > LOG_READ_BYTES and lines:
        lines.pop(0)  # the first line was cut by the seek
    return lines[-n_lines:], len(lines)


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read everything the report needs from a run folder.

    Missing or unreadable optional files are listed under ``"missing"`` (the report says so)
    instead of failing.

    Args:
        run_dir: the run folder (``<save_dir>/<run_name>``).

    Raises:
        DataValidationError: the folder does not exist or holds neither model_info.json nor
            training_history.json.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataValidationError(
            Problem(str(run_dir), "", "run folder not found (give the folder of a training run)")
        )
    missing: list[str] = []
    model_info = _read_json(run_dir / "model_info.json", missing)
    history = _read_json(run_dir / "training_history.json", missing)
    if not model_info and not history:
        raise DataValidationError(
            [
                Problem(str(run_dir), "", f"not a training run folder: {m}")
                for m in missing
                if m.startswith(("model_info.json", "training_history.json"))
            ]
        )
    splits = _read_json(run_dir / "splits.json", missing)
    config = _read_config(run_dir / "config.yaml", missing)
    log_lines, log_total = read_log_tail(run_dir / "training_log.txt")
    if log_total is None:
        missing.append("training_log.txt: not found")
    run_name = model_info.get("run_name") or config.get("run_name") or run_dir.name
    return {
        "run_dir": str(run_dir),
        "run_name": clean_text(run_name, newlines=False),
        "model_info": model_info,
        "history": history,
        "splits": splits,
        "config": config,
        "log_lines": log_lines,
        "log_total_lines": log_total,
        "missing": missing,
    }


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
    llm: bool = True,
    llm_model: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
) -> ReportResult:
    """Write ``report/training_report.pdf``, its PNG figures and ``report/analysis.md``.

    Also records the report in model_info.json (key ``"report"``). Every file is written
    atomically.

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
    from damage_lightning.report import pdf

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    out_dir = run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = analyse(run, llm=llm, model=llm_model, timeout=timeout, max_retries=max_retries)
    figures = figs.make_figures(run, out_dir)
    for name in figs.FIGURE_NAMES:
        stale = out_dir / name
        if stale.exists() and stale not in {f.path for f in figures}:
            stale.unlink()
    pdf_path = atomic_write_bytes(out_dir / PDF_NAME, pdf.render_pdf(run, analysis, figures))
    analysis_path = atomic_write_text(
        out_dir / ANALYSIS_NAME, analysis_markdown(run["run_name"], analysis)
    )
    info_path = run_dir / "model_info.json"
    if info_path.is_file():
        current = _read_json(info_path, [])
        if current:
            current["report"] = {
                "path": f"{REPORT_DIR}/{PDF_NAME}",
                "analysis_source": analysis.source,
                "fallback_reason": analysis.fallback_reason,
                "figures": [f"{REPORT_DIR}/{f.path.name}" for f in figures],
            }
            atomic_write_json(info_path, current)
    return ReportResult(
        pdf_path=pdf_path,
        figures=[f.path for f in figures],
        analysis_source=analysis.source,
        fallback_reason=analysis.fallback_reason,
        analysis_path=analysis_path,
    )

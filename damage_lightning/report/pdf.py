"""Lay out the training report PDF with reportlab from the run data, the analysis and the figures.

Every string that comes from a file, a config or the model is cleaned and escaped (:func:`esc`)
before it enters reportlab's Paragraph markup; table cells are cut to a bounded length so no
single cell can outgrow a page.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import re
import textwrap
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import cm, inch
from reportlab.platypus import (
    CondPageBreak,
    Image,
    KeepTogether,
    LongTable,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
    XPreformatted,
)

from damage_lightning.artifacts import sha256_file
from damage_lightning.report.analysis import (
    SECTIONS,
    WEAK_RECALL,
    Analysis,
    as_number,
    class_names,
    clean_text,
    format_number,
    format_percent,
    history_epochs,
    per_class_metrics,
)
from damage_lightning.report.figures import FigureFile

PAGE_W, PAGE_H = A4
MARGIN_X = 2.0 * cm
MARGIN_Y = 2.2 * cm
FRAME_W = PAGE_W - 2 * MARGIN_X
CELL_MAX = 160
NAME_MAX = 80
MAX_TOKEN = 200
HISTORY_ROWS = 25
LOG_WRAP = 96
LOG_MAX_WRAPS = 4
MAX_WARNINGS = 20

HEADINGS = (
    "1 Analysis",
    "1.1 Executive summary",
    "1.2 Training dynamics",
    "1.3 Recommendations",
    "2 Model and dataset",
    "3 Data splits and leakage check",
    "4 Hyperparameters",
    "5 Training curves",
    "6 Test results",
    "7 Training history",
    "8 Training log",
    "9 Reproducibility",
)

ACCENT = colors.HexColor("#1F4E79")
HEADER_BG = colors.HexColor("#DCE6F0")
ZEBRA = colors.HexColor("#F5F7FA")
GRID = colors.HexColor("#B7C3D0")
WARN_BG = colors.HexColor("#FBE3E3")
BEST_BG = colors.HexColor("#E2F0D9")
LOG_BG = colors.HexColor("#F2F2F2")

_FONTS: dict[str, str] = {}


def fonts() -> dict[str, str]:
    """Register DejaVu (shipped with matplotlib, wide Unicode coverage) once; else Helvetica."""
    if _FONTS:
        return _FONTS
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        files = {
            "DejaVuSans": "DejaVuSans.ttf",
            "DejaVuSans-Bold": "DejaVuSans-Bold.ttf",
            "DejaVuSans-Oblique": "DejaVuSans-Oblique.ttf",
            "DejaVuSans-BoldOblique": "DejaVuSans-BoldOblique.ttf",
            "DejaVuSansMono": "DejaVuSansMono.ttf",
        }
        for name, file in files.items():
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, str(ttf / file)))
        pdfmetrics.registerFontFamily(
            "DejaVuSans",
            normal="DejaVuSans",
            bold="DejaVuSans-Bold",
            italic="DejaVuSans-Oblique",
            boldItalic="DejaVuSans-BoldOblique",
        )
        _FONTS.update(
            regular="DejaVuSans",
            bold="DejaVuSans-Bold",
            italic="DejaVuSans-Oblique",
            mono="DejaVuSansMono",
        )
    except (ImportError, OSError, ValueError):
        # Without the TTF files the core fonts still render Latin text.
        _FONTS.update(
            regular="Helvetica", bold="Helvetica-Bold", italic="Helvetica-Oblique", mono="Courier"
        )
    return _FONTS


def esc(value: Any, max_len: int | None = None) -> str:
    """Text safe for Paragraph markup: cleaned (:func:`clean_text`), cut, then XML-escaped."""
    return escape(clean_text(value, max_len=max_len))


def _inline(text: str) -> str:
    # Escape first; the only markup we add back is bold for **...** pairs inside one line.
    out = esc(text)
    return re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"<b>\1</b>", out)


class Styles:
    """The paragraph styles of the report (fonts registered by :func:`fonts`)."""

    def __init__(self) -> None:
        f = fonts()
        self.fonts = f
        base = {"fontName": f["regular"], "fontSize": 9.5, "leading": 13.0, "splitLongWords": 1}
        self.body = ParagraphStyle("body", **base, spaceAfter=5)
        self.small = ParagraphStyle("small", **{**base, "fontSize": 8.5, "leading": 11})
        self.note = ParagraphStyle(
            "note",
            **{**base, "fontName": f["italic"], "fontSize": 8.5, "leading": 11},
            textColor=colors.HexColor("#444444"),
            spaceAfter=6,
        )
        self.caption = ParagraphStyle(
            "caption",
            **{**base, "fontName": f["italic"], "fontSize": 8.5, "leading": 11},
            textColor=colors.HexColor("#333333"),
            spaceBefore=3,
            spaceAfter=10,
        )
        self.bullet = ParagraphStyle("bullet", **base, leftIndent=14, bulletIndent=4, spaceAfter=3)
        self.h1 = ParagraphStyle(
            "h1",
            **{**base, "fontName": f["bold"], "fontSize": 15, "leading": 19},
            textColor=ACCENT,
            spaceBefore=6,
            spaceAfter=8,
            keepWithNext=1,
        )
        self.h2 = ParagraphStyle(
            "h2",
            **{**base, "fontName": f["bold"], "fontSize": 11.5, "leading": 15},
            textColor=ACCENT,
            spaceBefore=8,
            spaceAfter=4,
            keepWithNext=1,
        )
        self.cell = ParagraphStyle("cell", **{**base, "fontSize": 8.5, "leading": 10.5})
        self.cell_bold = ParagraphStyle("cell_bold", parent=self.cell, fontName=f["bold"])
        self.cell_num = ParagraphStyle("cell_num", parent=self.cell, alignment=TA_RIGHT)
        self.cell_num_bold = ParagraphStyle(
            "cell_num_bold", parent=self.cell_bold, alignment=TA_RIGHT
        )
        self.cell_mono = ParagraphStyle(
            "cell_mono", parent=self.cell, fontName=f["mono"], fontSize=8
        )
        self.title = ParagraphStyle(
            "title",
            **{**base, "fontName": f["bold"], "fontSize": 26, "leading": 32},
            textColor=ACCENT,
            alignment=TA_LEFT,
            spaceAfter=6,
        )
        self.subtitle = ParagraphStyle(
            "subtitle",
            **{**base, "fontSize": 14, "leading": 18},
            textColor=colors.HexColor("#333333"),
            spaceAfter=18,
        )
        self.metric_value = ParagraphStyle(
            "metric_value",
            **{**base, "fontName": f["bold"], "fontSize": 20, "leading": 24},
            alignment=TA_CENTER,
            textColor=ACCENT,
        )
        self.metric_label = ParagraphStyle(
            "metric_label",
            **{**base, "fontSize": 8.5, "leading": 11},
            alignment=TA_CENTER,
        )


# ----------------------------------------------------------------------------------------------
# Small building blocks.


def _value_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return format_number(value, 6)
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return "[" + ", ".join(_value_text(v) for v in value) + "]"
        return clean_text(repr(value), newlines=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return clean_text(value, newlines=False)


def flatten(obj: Any, prefix: str = "", *, skip_none: bool = False) -> list[tuple[str, str]]:
    """Config values as ``(dotted.key, text)`` rows; ``class_path``/``init_args`` are folded."""
    rows: list[tuple[str, str]] = []
    if isinstance(obj, dict) and "class_path" in obj and set(obj) <= {"class_path", "init_args"}:
        rows.append((prefix or "class", _value_text(obj["class_path"])))
        rows += flatten(obj.get("init_args") or {}, prefix, skip_none=skip_none)
        return rows
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                rows += flatten(value, name, skip_none=skip_none)
            elif value is None and skip_none:
                continue
            else:
                rows.append((name, _value_text(value)))
        return rows
    if obj is not None or not skip_none:
        rows.append((prefix or "value", _value_text(obj)))
    return rows


def _p(text: Any, style: ParagraphStyle, max_len: int = CELL_MAX) -> Paragraph:
    return Paragraph(esc(text, max_len=max_len), style)


def _table(
    header: list[str] | None,
    rows: list[list[Any]],
    widths: list[float],
    st: Styles,
    *,
    numeric_cols: set[int] | frozenset[int] = frozenset(),
    row_backgrounds: dict[int, Any] | None = None,
    bold_rows: set[int] | None = None,
) -> LongTable:
    """A table of Paragraph cells that splits across pages and repeats its header row.

    Cell text is cut to ``CELL_MAX`` characters, so no row can be taller than a page.
    """
    bold_rows = bold_rows or set()
    data = []
    if header:
        data.append(
            [
                Paragraph(
                    f"<b>{esc(h, 40)}</b>",
                    st.cell_num if c in numeric_cols else st.cell,
                )
                for c, h in enumerate(header)
            ]
        )
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            numeric = c in numeric_cols
            if r in bold_rows:
                style = st.cell_num_bold if numeric else st.cell_bold
            else:
                style = st.cell_num if numeric else st.cell
            cells.append(value if isinstance(value, Paragraph) else _p(value, style))
        data.append(cells)
    scale = FRAME_W / sum(widths) if sum(widths) > FRAME_W else 1.0
    table = LongTable(data, colWidths=[w * scale for w in widths], repeatRows=1 if header else 0)
    offset = 1 if header else 0
    cmds: list[tuple] = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, GRID),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 4),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
    ]
    if header:
        cmds += [
            ("BACKGROUND", (0, 0), (-1, 0), HEADER_BG),
            ("LINEBELOW", (0, 0), (-1, 0), 0.8, ACCENT),
        ]
    for r in range(1, len(rows), 2):
        cmds.append(("BACKGROUND", (0, r + offset), (-1, r + offset), ZEBRA))
    for r, color in (row_backgrounds or {}).items():
        cmds.append(("BACKGROUND", (0, r + offset), (-1, r + offset), color))
    table.setStyle(TableStyle(cmds))
    return table


def _kv(rows: list[tuple[str, Any]], st: Styles, key_w: float = 0.34) -> LongTable | Paragraph:
    if not rows:
        return Paragraph("(none)", st.note)
    return _table(
        None,
        [[Paragraph(f"<b>{esc(k, 80)}</b>", st.cell), v] for k, v in rows],
        [FRAME_W * key_w, FRAME_W * (1 - key_w)],
        st,
    )


def text_flowables(text: str, st: Styles) -> list[Any]:
    """Paragraphs and bullet lists from analysis text (blank line = new paragraph, '- ' = bullet).

    Unbroken runs longer than ``MAX_TOKEN`` characters are cut with an ellipsis: they carry no
    meaning in prose and would fill pages.
    """
    out: list[Any] = []
    text = re.sub(rf"\S{{{MAX_TOKEN + 1},}}", lambda m: m[0][:MAX_TOKEN] + "…", clean_text(text))
    for block in re.split(r"\n\s*\n", text.strip()):
        pending: list[str] = []

        def flush(pending: list[str] = pending) -> None:
            if pending:
                out.append(Paragraph(_inline(" ".join(pending)), st.body))
                pending.clear()

        for line in block.split("\n"):
            s = line.strip()
            if not s:
                continue
            m = re.match(r"^([-*•]|\d{1,2}[.)])\s+(.*)$", s)
            if m:
                flush()
                bullet = "•" if m[1] in "-*•" else m[1]
                out.append(Paragraph(_inline(m[2]), st.bullet, bulletText=bullet))
            elif s.startswith("#"):
                flush()
                out.append(Paragraph(f"<b>{esc(s.lstrip('#').strip())}</b>", st.body))
            else:
                pending.append(s)
        flush()
    return out or [Paragraph("(empty)", st.note)]


def sample_indices(n: int, target: int = HISTORY_ROWS, keep: tuple[int, ...] = ()) -> list[int]:
    """Row indices for a history table of about ``target`` rows.

    Every k-th epoch with k chosen so the table stays near ``target`` rows; the first and last
    rows and the indices in ``keep`` (e.g. the best epoch) are always included.
    """
    if n <= 0:
        return []
    k = 1 if n <= target else math.ceil(n / (target - 1))
    chosen = set(range(0, n, k)) | {0, n - 1} | {i for i in keep if 0 <= i < n}
    return sorted(chosen)


def wrap_log_lines(lines: list[str], width: int = LOG_WRAP) -> list[str]:
    """Log lines cleaned and wrapped to ``width`` columns; a very long line is cut with '…'."""
    out: list[str] = []
    for raw in lines:
        line = clean_text(raw, max_len=width * LOG_MAX_WRAPS + 1, newlines=False).rstrip()
        if not line:
            out.append("")
            continue
        parts = textwrap.wrap(
            line,
            width=width,
            subsequent_indent="  ",
            break_long_words=True,
            replace_whitespace=False,
            drop_whitespace=True,
        ) or [""]
        if len(parts) > LOG_MAX_WRAPS:
            parts = parts[:LOG_MAX_WRAPS]
            parts[-1] = parts[-1][: width - 1] + "…"
        out += parts
    return out


# ----------------------------------------------------------------------------------------------
# Sections.


def _info(run: dict) -> dict:
    info = run.get("model_info")
    return info if isinstance(info, dict) else {}


def _sub(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def source_line(analysis: Analysis) -> str:
    """One line naming who wrote the analysis and, on fallback, why Claude was not used."""
    if analysis.fallback_reason:
        return (
            f"Analysis by: {analysis.source} (computed from the run's numbers). "
            f"Claude not used: {analysis.fallback_reason}"
        )
    return f"Analysis by: {analysis.source}."


def _title_page(run: dict, analysis: Analysis, st: Styles) -> list[Any]:
    info = _info(run)
    facts = analysis.facts
    model = _sub(info, "model") or {}
    data = _sub(info, "data") or {}
    story: list[Any] = [Spacer(1, 1.2 * cm), Paragraph("Training report", st.title)]
    story.append(Paragraph(esc(run["run_name"], 120), st.subtitle))

    params = as_number(model.get("parameters")) if isinstance(model, dict) else None
    model_text = (model.get("name") if isinstance(model, dict) else None) or "not recorded"
    if params is not None:
        model_text = f"{model_text} ({format_number(int(params))} parameters)"
    data_dir = data.get("data_dir") if isinstance(data, dict) else None
    n_rec = as_number(data.get("n_recordings")) if isinstance(data, dict) else None
    classes = class_names(info)
    dataset = Path(str(data_dir)).name if data_dir else "not recorded"
    if n_rec is not None:
        dataset += f", {int(n_rec):,} recordings"
    if classes:
        dataset += f", {len(classes)} classes"
    created = clean_text(info.get("created") or "not recorded", newlines=False)
    created = created.replace("T", " ")[:19] + (" UTC" if created.endswith(("+00:00", "Z")) else "")
    duration = as_number(info.get("duration_s"))
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
    if duration is not None:
        rows.append(("Duration", f"{duration / 60:.1f} min ({duration:.0f} s)"))
    story += [_kv(rows, st, 0.22), Spacer(1, 0.7 * cm)]

    test = facts.get("test")
    if test:
        cells = [
            (format_percent(test.get("accuracy")), "test accuracy"),
            (format_number(test.get("f1_macro")), "test macro F1"),
            (format_number(test.get("loss")), "test loss"),
        ]
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
        story.append(table)
    else:
        story.append(
            Paragraph(
                "No test metrics: model_info.json has no test_metrics (the run was not tested).",
                st.body,
            )
        )
    story += [Spacer(1, 0.6 * cm), Paragraph("At a glance", st.h2)]
    story += [Paragraph(esc(b), st.bullet, bulletText="•") for b in _glance(facts)]
    story += [Spacer(1, 0.3 * cm), Paragraph(esc(source_line(analysis)), st.note)]
    missing = run.get("missing") or []
    if missing:
        story.append(
            Paragraph(
                "<b>Not available in the run folder:</b> "
                + "; ".join(esc(m, 200) for m in missing),
                st.note,
            )
        )
    story.append(PageBreak())
    return story


def _glance(facts: dict) -> list[str]:
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


def _analysis(analysis: Analysis, st: Styles) -> list[Any]:
    story: list[Any] = [
        Paragraph(HEADINGS[0], st.h1),
        Paragraph(esc(source_line(analysis)), st.note),
    ]
    for i, name in enumerate(SECTIONS):
        story.append(Paragraph(HEADINGS[1 + i], st.h2))
        story += text_flowables(analysis.sections.get(name, ""), st)
    return story


def _model_and_data(run: dict, st: Styles) -> list[Any]:
    info = _info(run)
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[4], st.h1)]
    model = _sub(info, "model")
    story.append(Paragraph("Architecture", st.h2))
    if isinstance(model, dict) and model:
        rows = [("class", _value_text(model.get("class_path") or model.get("name")))]
        for key in ("parameters", "trainable_parameters"):
            if as_number(model.get(key)) is not None:
                rows.append((key.replace("_", " "), f"{int(model[key]):,}"))
        story.append(_kv(rows, st))
        hparams = model.get("hyperparameters")
        if isinstance(hparams, dict) and hparams:
            story.append(Paragraph("Hyperparameters saved with the model", st.h2))
            # Lightning adds private keys (_class_path, _instantiator) that say nothing new.
            story.append(
                _kv(flatten({k: v for k, v in hparams.items() if not str(k).startswith("_")}), st)
            )
    else:
        story.append(Paragraph("model_info.json has no model section.", st.note))

    story.append(Paragraph("Input", st.h2))
    inp = _sub(info, "input")
    if isinstance(inp, dict) and inp:
        rows = []
        channels = inp.get("channels")
        if isinstance(channels, list):
            rows.append((f"channels ({len(channels)})", ", ".join(clean_text(c) for c in channels)))
        sr = as_number(inp.get("sample_rate"))
        if sr is not None:
            rows.append(("sample rate", f"{format_number(sr, 6)} Hz"))
        win = as_number(inp.get("window_length"))
        if win is not None:
            rows.append(
                ("window length", f"{int(win):,} samples" + (f" ({win / sr:.3g} s)" if sr else ""))
            )
        hop = as_number(inp.get("hop"))
        if hop is not None:
            rows.append(("hop", f"{int(hop):,} samples"))
        rows += flatten(inp.get("frontend") or {}, "front end")
        rows += flatten(
            {
                k: v
                for k, v in inp.items()
                if k not in ("channels", "sample_rate", "window_length", "hop", "frontend")
            }
        )
        story.append(_kv(rows, st))
    else:
        story.append(Paragraph("model_info.json has no input specification.", st.note))

    classes = class_names(info)
    story.append(Paragraph(f"Classes ({len(classes)})", st.h2))
    story.append(Paragraph(", ".join(esc(c, NAME_MAX) for c in classes) or "not recorded", st.body))

    data = _sub(info, "data")
    story.append(Paragraph("Recordings and windows per class and split", st.h2))
    per_class = _sub(data, "per_class")
    if isinstance(per_class, dict) and per_class:
        splits = ("train", "val", "test")
        header = ["class"] + [f"{s} {what}" for s in splits for what in ("rec.", "windows")]
        rows = []
        totals = [0.0] * 6
        for name, by_split in per_class.items():
            row: list[Any] = [clean_text(name, max_len=NAME_MAX)]
            for i, (s, what) in enumerate(
                (s, w) for s in splits for w in ("recordings", "windows")
            ):
                v = as_number(_sub(by_split, s, what))
                totals[i] += v or 0
                row.append("–" if v is None else f"{int(v):,}")
            rows.append(row)
        rows.append(["total"] + [f"{int(t):,}" for t in totals])
        story.append(
            _table(
                header,
                rows,
                [130] + [58.6] * 6,
                st,
                numeric_cols=set(range(1, 7)),
                bold_rows={len(rows) - 1},
            )
        )
        if isinstance(data, dict) and data.get("data_dir"):
            story.append(Paragraph(f"Data folder: {esc(data['data_dir'], 200)}", st.note))
    else:
        story.append(Paragraph("model_info.json has no per-class data summary.", st.note))
    warnings_ = _sub(data, "warnings")
    if isinstance(warnings_, list) and warnings_:
        story.append(Paragraph(f"Data warnings ({len(warnings_)})", st.h2))
        for w in warnings_[:MAX_WARNINGS]:
            story.append(Paragraph(esc(w, 300), st.bullet, bulletText="•"))
        if len(warnings_) > MAX_WARNINGS:
            story.append(Paragraph(f"... and {len(warnings_) - MAX_WARNINGS} more.", st.note))
    return story


def check_segments(splits_json: dict) -> dict[str, Any] | None:
    """Re-check splits.json: overlapping ranges of different splits and the smallest gap."""
    recs = splits_json.get("recordings") if isinstance(splits_json, dict) else None
    if not isinstance(recs, list):
        return None
    overlaps = 0
    shared = 0
    min_gap: float | None = None
    for rec in recs:
        segs = [
            (str(s.get("split")), as_number(s.get("start")), as_number(s.get("stop")))
            for s in (rec.get("segments") or [] if isinstance(rec, dict) else [])
            if isinstance(s, dict)
        ]
        segs = [(sp, a, b) for sp, a, b in segs if a is not None and b is not None]
        if len({sp for sp, _, _ in segs}) > 1:
            shared += 1
        for i, (sa, a0, a1) in enumerate(segs):
            for sb, b0, b1 in segs[i + 1 :]:
                if sa == sb:
                    continue
                if a0 < b1 and b0 < a1:
                    overlaps += 1
                else:
                    gap = b0 - a1 if b0 >= a1 else a0 - b1
                    min_gap = gap if min_gap is None else min(min_gap, gap)
    return {
        "recordings": len(recs),
        "block_split": shared,
        "overlaps": overlaps,
        "min_gap": min_gap,
    }


def _splits(run: dict, st: Styles) -> list[Any]:
    info = _info(run)
    sj = run.get("splits") if isinstance(run.get("splits"), dict) else {}
    si = _sub(info, "splits") if isinstance(_sub(info, "splits"), dict) else {}
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[5], st.h1)]
    if not si and not sj:
        return [
            *story,
            Paragraph("Neither model_info.json nor splits.json describes the split.", st.note),
        ]
    rows = [("strategy", clean_text(si.get("strategy") or sj.get("strategy") or "not recorded"))]
    gap = si.get("gap_samples", sj.get("gap_samples"))
    if gap is not None:
        rows.append(("gap between splits", f"{_value_text(gap)} samples"))
    for key in ("seed", "window", "hop"):
        if key in sj:
            rows.append((key, _value_text(sj[key])))
    if isinstance(sj.get("fractions"), dict):
        rows.append(
            ("fractions", ", ".join(f"{k} {_value_text(v)}" for k, v in sj["fractions"].items()))
        )
    story.append(_kv(rows, st, 0.3))
    summary = si.get("summary")
    if isinstance(summary, dict) and summary:
        story.append(Paragraph("Per split", st.h2))
        keys = []
        for by in summary.values():
            for k in by if isinstance(by, dict) else []:
                if k not in keys:
                    keys.append(k)
        rows_t = [
            [clean_text(split, max_len=30)]
            + [_value_text(_sub(by, k)) if _sub(by, k) is not None else "–" for k in keys]
            for split, by in summary.items()
        ]
        width = (FRAME_W - 90) / max(len(keys), 1)
        story.append(
            _table(
                ["split", *keys],
                rows_t,
                [90] + [width] * len(keys),
                st,
                numeric_cols=set(range(1, len(keys) + 1)),
            )
        )
    story.append(Paragraph("Leakage check", st.h2))
    leak = si.get("leakage_check")
    if isinstance(leak, dict) and leak:
        n = leak.get("overlapping_ranges")
        if leak.get("passed"):
            text = (
                "<b>Passed</b>: no recording or sample range is in two splits "
                f"({esc(_value_text(n))} overlapping ranges)."
            )
        else:
            text = (
                f"<font color='#B00020'><b>FAILED</b></font>: {esc(_value_text(n))} "
                "overlapping ranges between splits; the validation and test metrics are "
                "optimistic."
            )
        story.append(Paragraph(text, st.body))
        extra = {k: v for k, v in leak.items() if k not in ("passed", "overlapping_ranges")}
        if extra:
            story.append(_kv(flatten(extra), st, 0.3))
    else:
        story.append(Paragraph("model_info.json records no leakage check.", st.note))
    seg = check_segments(sj)
    if seg is not None:
        text = (
            f"Re-checked from splits.json: {seg['recordings']:,} recordings, "
            f"{seg['block_split']:,} of them cut into blocks in more than one split, "
            f"{seg['overlaps']} overlapping sample ranges between splits"
        )
        if seg["min_gap"] is not None:
            text += (
                f", smallest gap between blocks of different splits {int(seg['min_gap']):,} samples"
            )
        story.append(Paragraph(esc(text + "."), st.body))
    else:
        story.append(Paragraph("splits.json is not available; no re-check.", st.note))
    return story


def _hyperparameters(run: dict, st: Styles) -> list[Any]:
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    info = _info(run)
    story: list[Any] = [CondPageBreak(6 * cm), Paragraph(HEADINGS[6], st.h1)]
    if not config:
        story.append(
            Paragraph(
                "config.yaml is not available; the model's hyperparameters from "
                "model_info.json are shown instead.",
                st.note,
            )
        )
        story.append(_kv(flatten(_sub(info, "model", "hyperparameters") or {}), st))
        return story
    seed = config.get("seed_everything")
    story.append(
        Paragraph(
            f"From config.yaml (the resolved configuration); seed_everything = "
            f"{esc(_value_text(seed))}.",
            st.note,
        )
    )
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    parts = [
        ("Model", config.get("model"), False),
        ("Data", config.get("data"), False),
        ("Optimiser", config.get("optimizer"), False),
        ("Learning-rate scheduler", config.get("lr_scheduler"), False),
        (
            "Trainer",
            {k: v for k, v in trainer.items() if k not in ("callbacks", "logger", "plugins")},
            True,
        ),
    ]
    for title, section, skip_none in parts:
        story.append(Paragraph(title, st.h2))
        if section in (None, {}, []):
            chosen_by_model = title in ("Optimiser", "Learning-rate scheduler")
            story.append(
                Paragraph(
                    "Not set in config.yaml ("
                    + ("the model chooses it" if chosen_by_model else "defaults apply")
                    + ").",
                    st.note,
                )
            )
            continue
        rows = flatten(section, skip_none=skip_none)
        story.append(_kv(rows, st))
        if skip_none:
            omitted = sum(1 for v in section.values() if v is None)
            if omitted:
                story.append(
                    Paragraph(
                        f"{omitted} trainer options left unset (null) are not listed.", st.note
                    )
                )
    story.append(Paragraph("Callbacks", st.h2))
    callbacks = trainer.get("callbacks")
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    if isinstance(callbacks, list) and callbacks:
        rows = []
        for cb in callbacks:
            if isinstance(cb, dict):
                name = str(cb.get("class_path", "callback")).rsplit(".", 1)[-1]
                args = cb.get("init_args") or {}
                settings = (
                    ", ".join(f"{k}={_value_text(v)}" for k, v in args.items())
                    if isinstance(args, dict)
                    else _value_text(args)
                )
            else:
                name, settings = str(cb).rsplit(".", 1)[-1], ""
            rows.append([clean_text(name, max_len=60), settings or "defaults"])
        story.append(_table(["callback", "settings"], rows, [150, FRAME_W - 150], st))
    else:
        story.append(Paragraph("No callbacks in config.yaml.", st.note))
    others = {
        k: v
        for k, v in config.items()
        if k not in ("model", "data", "optimizer", "lr_scheduler", "trainer", "seed_everything")
    }
    if others:
        story.append(Paragraph("Other settings", st.h2))
        story.append(_kv(flatten(others, skip_none=True), st))
    return story


def _figure(fig: FigureFile, st: Styles) -> list[Any]:
    img = Image(str(fig.path), width=fig.width_in * inch, height=fig.height_in * inch)
    return [KeepTogether([Spacer(1, 6), img, Paragraph(esc(fig.caption), st.caption)])]


def _fixed(value: Any) -> str:
    v = as_number(value)
    return "n/a" if v is None else f"{v:.3f}"


def _curves(figures: list[FigureFile], st: Styles) -> list[Any]:
    curves = [f for f in figures if f.kind == "curves"]
    # A figure fills a page; a note alone does not deserve one.
    story: list[Any] = [
        PageBreak() if curves else CondPageBreak(4 * cm),
        Paragraph(HEADINGS[7], st.h1),
    ]
    if not curves:
        return [
            *story,
            Paragraph("training_history.json has no per-epoch values: no curves.", st.note),
        ]
    for fig in curves:
        story += _figure(fig, st)
    return story


def _test_results(
    run: dict, analysis: Analysis, figures: list[FigureFile], st: Styles
) -> list[Any]:
    info = _info(run)
    cms = [f for f in figures if f.kind.startswith("confusion")]
    story: list[Any] = [
        PageBreak() if cms else CondPageBreak(6 * cm),
        Paragraph(HEADINGS[8], st.h1),
    ]
    test = _sub(info, "test_metrics")
    if not isinstance(test, dict) or not test:
        return [
            *story,
            Paragraph(
                "No test metrics in model_info.json: the run was not tested, "
                "so there is no confusion matrix or per-class table.",
                st.note,
            ),
        ]
    labels = {"accuracy": "accuracy", "f1_macro": "macro F1", "loss": "loss"}
    rows = [
        (
            labels.get(k, k.replace("_", " ")),
            format_percent(v) if k == "accuracy" else format_number(v),
        )
        for k, v in test.items()
        if as_number(v) is not None
    ]
    story.append(_kv(rows, st, 0.3))
    if not cms:
        story.append(Paragraph("No usable confusion matrix in model_info.json.", st.note))
    for fig in cms:
        story += _figure(fig, st)
    story.append(CondPageBreak(5 * cm))
    story.append(Paragraph("Per-class precision, recall and F1", st.h2))
    per_class = per_class_metrics(info)
    if per_class:
        rows_t = []
        weak = {}
        for i, (name, m) in enumerate(per_class.items()):
            support = as_number(m.get("support"))
            rows_t.append(
                [
                    clean_text(name, max_len=NAME_MAX),
                    _fixed(m.get("precision")),
                    _fixed(m.get("recall")),
                    _fixed(m.get("f1")),
                    "–" if support is None else f"{int(support):,}",
                ]
            )
            recall = as_number(m.get("recall"))
            if recall is not None and recall < WEAK_RECALL:
                weak[i] = WARN_BG
        vals = {
            k: [as_number(m.get(k)) for m in per_class.values()]
            for k in ("precision", "recall", "f1")
        }
        macro = [
            sum(v for v in vals[k] if v is not None) / max(1, sum(v is not None for v in vals[k]))
            for k in ("precision", "recall", "f1")
        ]
        rows_t.append(["macro average", *(_fixed(v) for v in macro), ""])
        story.append(
            _table(
                ["class", "precision", "recall", "F1", "support"],
                rows_t,
                [FRAME_W - 4 * 75, 75, 75, 75, 75],
                st,
                numeric_cols={1, 2, 3, 4},
                row_backgrounds=weak,
                bold_rows={len(rows_t) - 1},
            )
        )
        if weak:
            story.append(Paragraph(f"Shaded rows: recall below {WEAK_RECALL}.", st.note))
    else:
        story.append(Paragraph("No per-class metrics in model_info.json.", st.note))
    return story


_HISTORY_COLS = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("train_acc", "train acc"),
    ("val_acc", "val acc"),
    ("val_f1", "val F1"),
    ("lr", "LR"),
    ("epoch_time_s", "time (s)"),
)


def _history(run: dict, analysis: Analysis, st: Styles) -> list[Any]:
    history = run.get("history") if isinstance(run.get("history"), dict) else {}
    epochs = history_epochs(history)
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[9], st.h1)]
    if not epochs:
        return [*story, Paragraph("training_history.json has no epochs.", st.note)]
    cols = [
        (k, lbl) for k, lbl in _HISTORY_COLS if any(as_number(e.get(k)) is not None for e in epochs)
    ]
    best = analysis.facts.get("best_epoch")
    reductions = {r["epoch"] for r in analysis.facts.get("lr_reductions") or []}
    stop = analysis.facts.get("last_epoch") if analysis.facts.get("stopped_early") else None
    keep = [
        i for i, e in enumerate(epochs) if int(e["epoch"]) == best or int(e["epoch"]) in reductions
    ]
    idx = sample_indices(len(epochs), keep=tuple(keep))
    rows, bg = [], {}
    for r, i in enumerate(idx):
        e = epochs[i]
        epoch = int(e["epoch"])
        notes = []
        if epoch == best:
            notes.append("best")
            bg[r] = BEST_BG
        if epoch in reductions:
            notes.append("LR reduced")
        if epoch == stop:
            notes.append("early stop")
        row = [str(epoch)]
        for k, _ in cols:
            v = as_number(e.get(k))
            if v is None:
                row.append("–")
            elif k == "epoch_time_s":
                row.append(f"{v:.1f}")
            elif k == "lr":
                row.append(format_number(v, 3))
            else:
                row.append(f"{v:.4f}")
        rows.append([*row, ", ".join(notes)])
    step = 1 if len(epochs) <= HISTORY_ROWS else math.ceil(len(epochs) / (HISTORY_ROWS - 1))
    shown = (
        "all epochs shown"
        if step == 1
        else (
            f"every {step} epochs shown, plus the first, last, best and learning-rate-reduction "
            "epochs"
        )
    )
    story.append(
        Paragraph(
            f"{len(epochs)} epochs; {shown}. Highlighted: the best epoch by validation loss.",
            st.note,
        )
    )
    widths = [38] + [52] * len(cols) + [FRAME_W - 38 - 52 * len(cols)]
    story.append(
        _table(
            ["epoch", *(lbl for _, lbl in cols), "note"],
            rows,
            widths,
            st,
            numeric_cols=set(range(len(cols) + 1)),
            row_backgrounds=bg,
        )
    )
    return story


@functools.lru_cache(maxsize=8)
def _coverage(font_name: str) -> frozenset[int] | None:
    from reportlab.pdfbase import pdfmetrics

    face = getattr(pdfmetrics.getFont(font_name), "face", None)
    cmap = getattr(face, "charToGlyph", None)
    return frozenset(cmap) if isinstance(cmap, dict) else None


def _mono_markup(line: str, st: Styles) -> str:
    """Escaped markup for one log line; characters the mono font lacks use the text font."""
    mono = _coverage(st.fonts["mono"])
    if mono is None:
        return escape(line)
    out = []
    for covered, chars in itertools.groupby(line, key=lambda ch: ord(ch) in mono or ch == " "):
        text = escape("".join(chars))
        out.append(text if covered else f'<font name="{st.fonts["regular"]}">{text}</font>')
    return "".join(out)


def _log(run: dict, st: Styles) -> list[Any]:
    lines = run.get("log_lines") or []
    total = run.get("log_total_lines")
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[10], st.h1)]
    if total is None:
        return [*story, Paragraph("training_log.txt is not available.", st.note)]
    if not lines:
        return [*story, Paragraph("training_log.txt is empty.", st.note)]
    story.append(
        Paragraph(
            f"The last {len(lines)} of {total:,} lines of training_log.txt "
            "(progress-bar updates collapsed; long lines wrapped).",
            st.note,
        )
    )
    wrapped = wrap_log_lines(lines)
    log_style = ParagraphStyle("log", fontName=st.fonts["mono"], fontSize=8, leading=9.5)
    table = LongTable(
        [[XPreformatted(_mono_markup(line, st), log_style)] for line in wrapped],
        colWidths=[FRAME_W],
    )
    table.setStyle(
        TableStyle(
            [
                ("TOPPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5),
                ("LEFTPADDING", (0, 0), (-1, -1), 5),
                ("BACKGROUND", (0, 0), (-1, -1), LOG_BG),
            ]
        )
    )
    story.append(table)
    return story


def _reproducibility(run: dict, st: Styles) -> list[Any]:
    info = _info(run)
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    run_dir = Path(run.get("run_dir") or ".")
    story: list[Any] = [CondPageBreak(8 * cm), Paragraph(HEADINGS[11], st.h1)]
    seed = info.get("seed", config.get("seed_everything"))
    rows: list[tuple[str, Any]] = [
        ("seed", _value_text(seed) if seed is not None else "not recorded")
    ]
    if (run_dir / "config.yaml").is_file():
        rows.append(("re-run", "python -m damage_lightning fit --config config.yaml"))
        rows.append(
            (
                "config.yaml sha256",
                Paragraph(esc(sha256_file(run_dir / "config.yaml")), st.cell_mono),
            )
        )
    if (run_dir / "splits.json").is_file():
        rows.append(
            (
                "splits.json sha256",
                Paragraph(esc(sha256_file(run_dir / "splits.json")), st.cell_mono),
            )
        )
    if info.get("best_checkpoint"):
        rows.append(("best checkpoint", _value_text(info["best_checkpoint"])))
    story.append(_kv(rows, st, 0.3))
    story.append(Paragraph("Versions", st.h2))
    versions = info.get("versions")
    story.append(
        _kv(flatten(versions), st, 0.3)
        if isinstance(versions, dict) and versions
        else Paragraph("model_info.json records no versions.", st.note)
    )
    story.append(Paragraph("Exports", st.h2))
    exports = info.get("exports")
    if not isinstance(exports, dict) or not exports:
        story.append(
            Paragraph("No exports recorded in model_info.json (the run was not exported).", st.note)
        )
        return story
    for fmt, exp in exports.items():
        if not isinstance(exp, dict):
            continue
        rows = []
        if exp.get("path"):
            size = as_number(exp.get("size_bytes"))
            rows.append(
                (
                    "file",
                    _value_text(exp["path"])
                    + (f" ({size / 1e6:.2f} MB)" if size is not None else ""),
                )
            )
        if exp.get("sha256"):
            rows.append(("sha256", Paragraph(esc(exp["sha256"], 80), st.cell_mono)))
        ver = exp.get("verification")
        if isinstance(ver, dict):
            passed = ver.get("passed")
            text = "passed" if passed else "FAILED" if passed is False else "not recorded"
            if as_number(ver.get("max_abs_diff")) is not None:
                text += f", max |difference| {format_number(ver['max_abs_diff'], 3)}"
            if isinstance(ver.get("batch_sizes"), list):
                text += " at batch sizes " + ", ".join(_value_text(b) for b in ver["batch_sizes"])
            if ver.get("runtime"):
                text += f" ({_value_text(ver['runtime'])})"
            rows.append(("verification", text))
        if as_number(exp.get("export_time_s")) is not None:
            rows.append(("export time", f"{exp['export_time_s']:.1f} s"))
        rest = {
            k: v
            for k, v in exp.items()
            if k not in ("path", "size_bytes", "sha256", "verification", "export_time_s")
        }
        rows += flatten(rest)
        story.append(Paragraph(esc(str(fmt), 40), st.h2))
        story.append(_kv(rows, st, 0.3))
    return story


# ----------------------------------------------------------------------------------------------


def render_pdf(run: dict[str, Any], analysis: Analysis, figures: list[FigureFile]) -> bytes:
    """Lay out the whole report and return the PDF bytes (the caller writes them atomically).

    Args:
        run: the run folder as loaded by ``build.load_run``.
        analysis: the written analysis (Claude or offline).
        figures: the PNG figures from ``figures.make_figures``.
    """
    st = Styles()
    run_name = clean_text(run.get("run_name") or "run", max_len=90, newlines=False)

    def decorate(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(st.fonts["regular"], 8)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(MARGIN_X, PAGE_H - 1.3 * cm, f"Training report · {run_name}")
        canvas.drawRightString(PAGE_W - MARGIN_X, 1.2 * cm, f"page {doc.page}")
        canvas.setStrokeColor(GRID)
        canvas.line(MARGIN_X, PAGE_H - 1.45 * cm, PAGE_W - MARGIN_X, PAGE_H - 1.45 * cm)
        canvas.restoreState()

    parts = [
        ("Training report", lambda: _title_page(run, analysis, st)),
        (HEADINGS[0], lambda: _analysis(analysis, st)),
        (HEADINGS[4], lambda: _model_and_data(run, st)),
        (HEADINGS[5], lambda: _splits(run, st)),
        (HEADINGS[6], lambda: _hyperparameters(run, st)),
        (HEADINGS[7], lambda: _curves(figures, st)),
        (HEADINGS[8], lambda: _test_results(run, analysis, figures, st)),
        (HEADINGS[9], lambda: _history(run, analysis, st)),
        (HEADINGS[10], lambda: _log(run, st)),
        (HEADINGS[11], lambda: _reproducibility(run, st)),
    ]
    story: list[Any] = []
    for heading, build in parts:
        try:
            story += build()
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # A value of an unexpected type in one file costs one section, not the report.
            story += [
                Paragraph(esc(heading), st.h1),
                Paragraph(
                    "This section could not be drawn from the run's files: "
                    + esc(f"{type(exc).__name__}: {exc}", 300),
                    st.note,
                ),
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

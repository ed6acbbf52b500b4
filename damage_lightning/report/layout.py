"""The report's page layout: fonts, paragraph styles, escaping, tables and other flowables.

Every string that comes from a file, a config or the model is cleaned and escaped (:func:`esc`)
before it enters reportlab's Paragraph markup; table cells are cut to a bounded length so no
single cell can outgrow a page.
"""

from __future__ import annotations

import functools
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
    Image,
    KeepTogether,
    LongTable,
    Paragraph,
    Spacer,
    TableStyle,
    XPreformatted,
)

from damage_lightning.report.figures import FigureFile
from damage_lightning.report.text import clean_text, format_number

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


def inline_markup(text: str) -> str:
    """Escaped paragraph text in which ``**bold**`` (within one line) is drawn bold."""
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


def value_text(value: Any) -> str:
    """A config or JSON value as one line of text (``null``, ``true``, ``[1, 2]``, ``{k: v}``)."""
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
            return "[" + ", ".join(value_text(v) for v in value) + "]"
        return clean_text(repr(value), newlines=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return clean_text(value, newlines=False)


def flatten(obj: Any, prefix: str = "", *, skip_none: bool = False) -> list[tuple[str, str]]:
    """Config values as ``(dotted.key, text)`` rows; ``class_path``/``init_args`` are folded."""
    rows: list[tuple[str, str]] = []
    if isinstance(obj, dict) and "class_path" in obj and set(obj) <= {"class_path", "init_args"}:
        rows.append((prefix or "class", value_text(obj["class_path"])))
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
                rows.append((name, value_text(value)))
        return rows
    if obj is not None or not skip_none:
        rows.append((prefix or "value", value_text(obj)))
    return rows


def cell(text: Any, style: ParagraphStyle, max_len: int = CELL_MAX) -> Paragraph:
    """A table cell: ``text`` cleaned, cut to ``max_len`` characters and escaped."""
    return Paragraph(esc(text, max_len=max_len), style)


def table(
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
            cells.append(value if isinstance(value, Paragraph) else cell(value, style))
        data.append(cells)
    scale = FRAME_W / sum(widths) if sum(widths) > FRAME_W else 1.0
    out = LongTable(data, colWidths=[w * scale for w in widths], repeatRows=1 if header else 0)
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
    out.setStyle(TableStyle(cmds))
    return out


def kv_table(rows: list[tuple[str, Any]], st: Styles, key_w: float = 0.34) -> LongTable | Paragraph:
    """A two-column table of bold keys and values (``key_w``: the key column's share of width)."""
    if not rows:
        return Paragraph("(none)", st.note)
    return table(
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
                out.append(Paragraph(inline_markup(" ".join(pending)), st.body))
                pending.clear()

        for line in block.split("\n"):
            s = line.strip()
            if not s:
                continue
            m = re.match(r"^([-*•]|\d{1,2}[.)])\s+(.*)$", s)
            if m:
                flush()
                bullet = "•" if m[1] in "-*•" else m[1]
                out.append(Paragraph(inline_markup(m[2]), st.bullet, bulletText=bullet))
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


def figure_flowables(fig: FigureFile, st: Styles) -> list[Any]:
    """A figure at its print size with its caption, kept on one page."""
    img = Image(str(fig.path), width=fig.width_in * inch, height=fig.height_in * inch)
    return [KeepTogether([Spacer(1, 6), img, Paragraph(esc(fig.caption), st.caption)])]


@functools.lru_cache(maxsize=8)
def _coverage(font_name: str) -> frozenset[int] | None:
    from reportlab.pdfbase import pdfmetrics

    face = getattr(pdfmetrics.getFont(font_name), "face", None)
    cmap = getattr(face, "charToGlyph", None)
    return frozenset(cmap) if isinstance(cmap, dict) else None


def mono_markup(line: str, st: Styles) -> str:
    """Escaped markup for one log line; characters the mono font lacks use the text font."""
    mono = _coverage(st.fonts["mono"])
    if mono is None:
        return escape(line)
    out = []
    for covered, chars in itertools.groupby(line, key=lambda ch: ord(ch) in mono or ch == " "):
        text = escape("".join(chars))
        out.append(text if covered else f'<font name="{st.fonts["regular"]}">{text}</font>')
    return "".join(out)


def log_table(lines: list[str], st: Styles) -> LongTable:
    """Log lines (wrapped by :func:`wrap_log_lines`) in the mono font on a grey background."""
    log_style = ParagraphStyle("log", fontName=st.fonts["mono"], fontSize=8, leading=9.5)
    out = LongTable(
        [[XPreformatted(mono_markup(line, st), log_style)] for line in wrap_log_lines(lines)],
        colWidths=[FRAME_W],
    )
    out.setStyle(
        TableStyle(
            [
                ("TOPPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5),
                ("LEFTPADDING", (0, 0), (-1, -1), 5),
                ("BACKGROUND", (0, 0), (-1, -1), LOG_BG),
            ]
        )
    )
    return out

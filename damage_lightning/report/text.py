"""Text rules shared by the whole report: the analysis section names, cleaning, number formats."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

SECTIONS = ("Executive summary", "Training dynamics", "Recommendations")

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# Direction overrides and isolates reorder the text around them; the PDF does not need them.
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_text(value: Any, *, max_len: int | None = None, newlines: bool = True) -> str:
    """Return ``value`` as text that is safe to draw: no control characters, bounded length.

    ANSI escape sequences, C0/C1 control characters, surrogates, private-use and unassigned code
    points and bidi overrides are removed; tabs become spaces. Markup is *not* escaped here (that
    is the PDF's job, see ``layout.esc``).

    Args:
        value: anything; ``None`` becomes ``""``.
        max_len: when given, longer text is cut and ends with an ellipsis.
        newlines: keep line breaks (``False`` turns them into spaces).
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if max_len is not None and len(text) > 4 * max_len + 64:
        # Keep the work bounded for huge inputs; the cut below still adds the ellipsis.
        text = text[: 4 * max_len + 64]
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\n" if newlines else " ")
        elif ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    text = "".join(out)
    if max_len is not None and len(text) > max_len:
        text = text[: max(max_len - 1, 0)] + "…"
    return text


def as_number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (booleans, text, NaN and inf are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_percent(value: Any) -> str:
    """Format a fraction as the report shows it, e.g. ``0.97333`` -> ``"97.33%"``."""
    v = as_number(value)
    return "n/a" if v is None else f"{100.0 * v:.2f}%"


def format_number(value: Any, digits: int = 4) -> str:
    """Format a metric with ``digits`` significant digits (``"n/a"`` when missing)."""
    v = as_number(value)
    if v is None:
        return "n/a"
    if v == int(v) and abs(v) >= 1 and isinstance(value, int):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"

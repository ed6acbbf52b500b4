"""CSV recordings: header sniffing, fast pyarrow parsing, and errors that name the row and column.

Accepts a UTF-8 BOM, ``,`` ``;`` or tab delimiters (sniffed from the header line), CRLF line
ends, gzip content (detected by its magic bytes, whatever the extension) and unicode names. The
slow diagnosis runs only when the typed read fails, to name the first bad cell.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from damage_lightning.io.readers.base import (
    RawRecording,
    Reader,
    ReaderOptions,
    check_finite,
    fail,
    is_time_name,
    open_error,
    rate_from_times,
    requested_channels,
    seconds_since_start,
)

_SNIFF_BYTES = 1 << 16
_BLOCK_SIZE = 1 << 20
_DELIMITERS = (",", ";", "\t")
_NUMBER_RE = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"
_NUMBER = re.compile(_NUMBER_RE, re.IGNORECASE)
# Searching (rather than bytes.strip(), which copies) finds content in multi-GB buffers for free.
_NON_SPACE = re.compile(rb"\S")
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?\d+,\d+\s*$")
# pyarrow's default null spellings plus the empty cell: all of them mean "no value" here.
_NULL_TOKENS = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "n/a",
    "nan",
    "null",
)


def sniff_delimiter(line: str) -> str:
    """The delimiter of a header line: the most frequent of , ; and tab outside quotes."""
    counts = {d: 0 for d in _DELIMITERS}
    in_quotes = False
    for ch in line:
        if ch == '"':
            in_quotes = not in_quotes
        elif not in_quotes and ch in counts:
            counts[ch] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _read_bytes(path: Path, display: str, limit: int | None = None) -> bytes:
    """Read (and gunzip) a file, or its first ``limit`` bytes; BOM stripped."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read() if limit is None else fh.read(limit)
            if raw[:2] == b"\x1f\x8b":
                fh.seek(0)
                try:
                    with gzip.GzipFile(fileobj=fh) as gz:
                        raw = gz.read() if limit is None else gz.read(limit)
                except (OSError, EOFError, zlib.error) as exc:
                    raise fail(display, f"gzip content is corrupt or truncated ({exc})") from None
    except OSError as exc:
        raise open_error(exc, display) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw


def _looks_numeric(text: str) -> bool:
    return bool(_NUMBER.match(text))


def _parse_header(raw: bytes, display: str) -> tuple[list[str], str]:
    """Check that ``raw`` is CSV text and return ``(column names, delimiter)``."""
    if _NON_SPACE.search(raw) is None:
        raise fail(display, "file is empty")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise fail(display, "file is UTF-16 encoded; save it as UTF-8 CSV")
    if b"\x00" in raw[:_SNIFF_BYTES]:
        raise fail(display, "not a text CSV file (binary content)")
    end = raw.find(b"\n")
    line_b = (raw if end < 0 else raw[:end]).rstrip(b"\r")
    try:
        line = line_b.decode("utf-8")
    except UnicodeDecodeError:
        # Spreadsheet exports on Windows write the header in cp1252 / latin-1.
        line = line_b.decode("latin-1")
    if any(ord(c) < 32 and c != "\t" for c in line):
        raise fail(display, "not a text CSV file (control characters in the first line)")
    if not line.strip():
        raise fail(display, "the first line is empty; expected a header row naming the channels")
    delimiter = sniff_delimiter(line)
    names = [n.strip() for n in next(csv.reader([line], delimiter=delimiter))]
    if all(_looks_numeric(n) for n in names if n):
        raise fail(
            display,
            "the first line looks like data, not a header: add a header row naming the channels",
            "row 1",
        )
    counts = Counter(n for n in names if n)
    dups = [n for n, k in counts.items() if k > 1]
    if dups:
        where = "; ".join(
            f"'{d}' in columns " + ", ".join(str(i + 1) for i, n in enumerate(names) if n == d)
            for d in dups
        )
        raise fail(display, f"duplicate column names: {where}", "row 1")
    return names, delimiter


def _file_row(raw: bytes, index: int) -> int:
    """Row number in the file (1-based, header = row 1) of data row ``index`` (0-based)."""
    if b"\n\n" not in raw and b"\n\r\n" not in raw:
        return index + 2
    # The parser skips blank lines; count them back in.
    count = -1
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if line in (b"", b"\r"):
            continue
        count += 1
        if count == index + 1:
            return lineno
    return index + 2


def _find_ragged(raw: bytes, delimiter: str, n_fields: int) -> tuple[int, int] | None:
    text = raw.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if reader.line_num == 1 or not row:
                continue
            if len(row) != n_fields:
                return reader.line_num, len(row)
    except csv.Error:
        return reader.line_num, -1
    return None


def _arrow_read(raw: bytes, names: list[str], delimiter: str, include: list[str], types: dict):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return pacsv.read_csv(
        pa.py_buffer(raw),
        read_options=pacsv.ReadOptions(
            column_names=names, skip_rows=1, use_threads=True, block_size=_BLOCK_SIZE
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=include, check_utf8=False
        ),
    )


def _classify_text_column(col: Any) -> tuple[int, int | None]:
    """For a text column: (number of numeric-looking cells, first index that is not numeric)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric = pc.match_substring_regex(col, _NUMBER_RE, ignore_case=True)
    numeric = pc.fill_null(numeric, False)
    n_numeric = pc.sum(numeric).as_py() or 0
    bad = pc.invert(numeric)
    first = pc.index(bad, pa.scalar(True)).as_py()
    return n_numeric, (None if first is None or first < 0 else first)


def _diagnose(
    raw: bytes,
    display: str,
    names: list[str],
    arrow_names: list[str],
    delimiter: str,
    include: list[str],
    requested: bool,
    time_name: str | None,
) -> tuple[Any, list[str]]:
    """Slow path after the typed read failed: find the first bad row/column, or drop text columns.

    Returns the table read with type inference and the sensor columns that are numeric.
    """
    import pyarrow as pa

    try:
        table = _arrow_read(raw, arrow_names, delimiter, include, {})
    except pa.ArrowInvalid as exc:
        ragged = _find_ragged(raw, delimiter, len(names))
        if ragged is None:
            raise fail(display, f"cannot parse the CSV ({exc})") from None
        row, found = ragged
        reason = (
            f"expected {len(names)} fields like the header, found {found}"
            if found >= 0
            else "malformed quoting"
        )
        raise fail(display, reason, f"row {row}") from None
    keep: list[str] = []
    first_bad: tuple[int, str, str] | None = None
    for name in include:
        if name == time_name:
            continue
        col = table.column(name)
        typ = col.type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ):
            keep.append(name)
            continue
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            n_numeric, first = _classify_text_column(col)
            if n_numeric == 0 and len(col) and _DECIMAL_COMMA.match(str(col[0].as_py() or "")):
                # Numbers written with a decimal comma: a sensor column, not a text column.
                n_numeric, first = 1, 0
            if n_numeric > 0 and first is not None:
                value = col[first].as_py()
                if first_bad is None or first < first_bad[0]:
                    first_bad = (first, name, value)
                continue
            if n_numeric > 0:
                # Every cell looks numeric but pyarrow's parser disagreed: convert in Python.
                try:
                    values = [float(v) for v in col.to_pylist()]
                except (TypeError, ValueError):
                    first_bad = first_bad or (0, name, col[0].as_py())
                    continue
                table = table.set_column(
                    table.schema.get_field_index(name), name, pa.array(values, pa.float32())
                )
                keep.append(name)
                continue
        if requested:
            sample = col[0].as_py() if len(col) else ""
            raise fail(
                display,
                f"channel is not numeric (first value {str(sample)!r})",
                f"column '{name}'",
            )
    if first_bad is not None:
        index, name, value = first_bad
        text = "" if value is None else str(value)
        where = f"row {_file_row(raw, index)}, column '{name}'"
        if text.strip() in _NULL_TOKENS:
            raise fail(display, "empty or NaN value", where)
        reason = f"non-numeric value {text!r}"
        if text.strip() == name:
            reason += " (the header line repeated inside the file?)"
        elif _DECIMAL_COMMA.match(text):
            reason += " (decimal comma? use '.' as the decimal separator)"
        raise fail(display, reason, where)
    return table, keep


def _time_seconds(col: Any, raw: bytes, display: str, name: str) -> np.ndarray:
    import pyarrow as pa

    typ = col.type
    if col.null_count:
        # Rare error path: finding the row may load pyarrow.compute.
        import pyarrow.compute as pc

        first = pc.index(pc.is_null(col), pa.scalar(True)).as_py()
        raise fail(display, "empty time value", f"row {_file_row(raw, first)}, column '{name}'")
    if pa.types.is_timestamp(typ) or pa.types.is_integer(typ) or pa.types.is_floating(typ):
        if pa.types.is_timestamp(typ):
            # Epoch nanoseconds exceed float64's integer precision: subtract the start first.
            ticks = np.empty(len(col), dtype=np.int64)
            _column_into(col, ticks)
            return seconds_since_start(ticks, typ.unit)
        t = np.empty(len(col), dtype=np.float64)
        _column_into(col, t)
        return t
    raise fail(display, "time column is not numeric (expected seconds)", f"column '{name}'")


def _column_into(col: Any, out: np.ndarray) -> None:
    """Copy a numeric pyarrow ChunkedArray into ``out`` (nulls become NaN).

    Reads the Arrow buffers directly: pyarrow's own ``to_numpy``/``cast`` import pandas, which
    costs a third of a second on the first file.
    """
    import pyarrow as pa

    offset = 0
    for chunk in col.chunks:
        k = len(chunk)
        typ = chunk.type
        seg = out[offset : offset + k]
        offset += k
        if pa.types.is_null(typ):
            seg[:] = np.nan
            continue
        if pa.types.is_floating(typ):
            kind = "f"
        elif pa.types.is_signed_integer(typ) or pa.types.is_timestamp(typ):
            kind = "i"
        elif pa.types.is_unsigned_integer(typ):
            kind = "u"
        else:
            raise TypeError(f"not a numeric column: {typ}")
        src = np.dtype(f"<{kind}{typ.bit_width // 8}")
        validity, values = chunk.buffers()[:2]
        seg[:] = np.frombuffer(values, dtype=src, count=k, offset=chunk.offset * src.itemsize)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            seg[bits[chunk.offset : chunk.offset + k] == 0] = np.nan


class CsvReader(Reader):
    """CSV text (plain or gzip): a header row; every numeric column is a channel, except time.

    A time column (``TIME_COLUMN_NAMES``) gives the sample rate; a column without a single number
    (a comment, a status text) is not a channel and is dropped. Parsing is done by pyarrow with
    threads.
    """

    name: ClassVar[str] = "csv"
    suffixes: ClassVar[tuple[str, ...]] = (".csv", ".csv.gz")
    version: ClassVar[int] = 1

    def channel_names(self, path: Path, display: str, options: ReaderOptions) -> list[str]:
        """Channel names from the header line alone (cheap).

        The time column and unnamed columns are left out. Whether a column is numeric is not
        known from the header, so a text column is still listed; :meth:`read` drops it.
        """
        raw = _read_bytes(Path(path), display, limit=_SNIFF_BYTES)
        names, _ = _parse_header(raw, display)
        return [n for n in names if n and not is_time_name(n)]

    def read(
        self,
        path: Path,
        display: str,
        options: ReaderOptions,
        channels: list[str] | None = None,
    ) -> RawRecording:
        """Parse one CSV file into float32 ``(channels, samples)``.

        Args:
            path: the CSV file.
            display: the file name used in error messages.
            options: unused (CSV has no format options).
            channels: channel names to return, in this order; ``None`` for all numeric columns.

        Raises:
            DataValidationError: naming the file, the row and/or column, and the reason.
        """
        import pyarrow as pa

        raw = _read_bytes(Path(path), display)
        names, delimiter = _parse_header(raw, display)
        end = raw.find(b"\n")
        if end < 0 or _NON_SPACE.search(raw, end + 1) is None:
            raise fail(display, "the file has a header but no data rows")
        # Unnamed columns (e.g. from a trailing delimiter) get placeholder names for the parser.
        arrow_names = [n or f"<unnamed column {i + 1}>" for i, n in enumerate(names)]
        time_names = [n for n in names if n and is_time_name(n)]
        time_name = time_names[0] if time_names else None
        available = [n for n in names if n and not is_time_name(n)]
        if channels is not None:
            channels = requested_channels(available, channels, display)
            selected = channels
            unnamed: list[str] = []
        else:
            selected = list(available)
            unnamed = [a for a, n in zip(arrow_names, names, strict=True) if not n]
        include = selected + unnamed + ([time_name] if time_name else [])
        types = {name: pa.float32() for name in selected}
        try:
            table = _arrow_read(raw, arrow_names, delimiter, include, types)
        except pa.ArrowInvalid:
            table, selected = _diagnose(
                raw,
                display,
                names,
                arrow_names,
                delimiter,
                include,
                channels is not None,
                time_name,
            )
            selected = [n for n in selected if n not in unnamed]
        for name in unnamed:
            col = table.column(name)
            if col.null_count != len(col):
                # A trailing delimiter makes an empty unnamed column; one with values needs a name.
                where = f"column {arrow_names.index(name) + 1}"
                raise fail(display, "column has values but no name in the header", where)
        if not selected:
            only = f" besides the time column '{time_name}'" if time_name else ""
            raise fail(
                display, f"no numeric column{only}: every channel must be a column of numbers"
            )
        data = np.empty((len(selected), table.num_rows), dtype=np.float32)
        for row, name in enumerate(selected):
            _column_into(table.column(name), data[row])
        check_finite(
            data, selected, display, lambda i, name: f"row {_file_row(raw, i)}, column '{name}'"
        )
        rate = None
        if time_name is not None:
            t = _time_seconds(table.column(time_name), raw, display, time_name)
            rate = rate_from_times(t, display, time_name, lambda i: f"row {_file_row(raw, i)}")
        return RawRecording(data, list(selected), rate)
